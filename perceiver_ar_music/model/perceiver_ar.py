"""Perceiver AR in PyTorch: one causal cross-attention from N latents onto M inputs, then a
causal self-attention stack over the latents.

Semantics (Hawthorne et al. 2022):
- The latents are the last N positions of the input; each latent query is a linear projection of
  the embedding at its own position (no learned latent array).
- The latent at absolute position p cross-attends to inputs 0..p (a bottom-right-aligned causal
  mask), with a residual connection from its own embedding, then an MLP.
- `depth` pre-LayerNorm causal self-attention blocks over the latents, a final norm and a
  zero-initialised output head. Logits come out for the latent positions only.
- Positions: rotary embedding on a fraction of each head's channels, with absolute positions, so
  attention depends on relative distances only. No learned absolute embedding.
- Prefix dropout (training only) removes a random fraction of the prefix positions (never the
  latents) from the cross-attention keys, which also saves their compute.

Only torch and einops are needed to import this module.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from perceiver_ar_music.model.cache import KVCache
from perceiver_ar_music.model.kernels import Kernels, Linear, attention, causal_keep_mask


INT_FIELDS = ("num_tokens", "dim", "depth", "heads", "dim_head", "max_seq_len", "num_latents", "ff_mult")
FLOAT_FIELDS = ("cross_attn_dropout", "dropout", "rotary_fraction")
MAX_PARAMETERS = 20_000_000_000  # 80 GB of float32 weights: more than any machine here holds


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class PerceiverARConfig:
    """Hyperparameters of a Perceiver AR; saved as `config.json` beside the weights."""

    num_tokens: int = 391
    dim: int = 512
    depth: int = 8
    heads: int = 8
    dim_head: int = 64
    max_seq_len: int = 2048
    num_latents: int = 1024
    cross_attn_dropout: float = 0.0
    ff_mult: int = 4
    dropout: float = 0.0
    rotary_fraction: float = 0.5
    rotary_max_wavelength: float | None = None  # None: the context length, max_seq_len

    def __post_init__(self) -> None:
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be a whole number, got {_shown(value)}")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {_shown(value)}")
        wavelength = self.rotary_max_wavelength
        if wavelength is not None and (isinstance(wavelength, bool) or not isinstance(wavelength, numbers.Real)
                                       or not math.isfinite(wavelength) or wavelength <= 0):
            raise ValueError(f"rotary_max_wavelength must be a positive number or null, got {_shown(wavelength)}")
        checks = [
            (self.num_tokens > 0, "num_tokens must be positive"),
            (self.ff_mult > 0, "ff_mult must be positive"),
            (self.dim > 0 and self.depth >= 0 and self.heads > 0 and self.dim_head > 0, "dim, heads and dim_head must be positive, depth >= 0"),
            (1 <= self.num_latents <= self.max_seq_len, "num_latents must be in 1..max_seq_len"),
            (0.0 <= self.cross_attn_dropout < 1.0, "cross_attn_dropout must be in [0, 1)"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.rotary_fraction <= 1.0, "rotary_fraction must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.min_parameters() > MAX_PARAMETERS:
            raise ValueError(f"the model would have at least {self.min_parameters():,} parameters "
                             f"(the limit is {MAX_PARAMETERS:,})")

    def min_parameters(self) -> int:
        """A lower bound of the parameter count (the linear layers and embeddings; within 1% of the
        count), computed without building anything, so a size can be checked before allocating."""
        inner = self.heads * self.dim_head
        per_layer = 4 * self.dim * inner + 2 * self.ff_mult * self.dim * self.dim
        return (self.depth + 1) * per_layer + 2 * self.num_tokens * self.dim

    @property
    def rotary_dim(self) -> int:
        """Channels of each head that rotate (an even number)."""
        return int(self.dim_head * self.rotary_fraction) // 2 * 2

    @property
    def cross_attn_seq_len(self) -> int:
        """Length of the prefix that is only cross-attended (the seed port's name)."""
        return self.max_seq_len - self.num_latents

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PerceiverARConfig":
        """Build from a dict; unknown keys are an error, `cross_attn_seq_len` is accepted."""
        data = dict(data)
        if "cross_attn_seq_len" in data:
            prefix = data.pop("cross_attn_seq_len")
            data.setdefault("num_latents", data.get("max_seq_len", cls.max_seq_len) - prefix)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding


class Rotary(nn.Module):
    """Partial rotary embedding: rotates the first `rotary_dim` channels of each head."""

    def __init__(self, rotary_dim: int, max_wavelength: float) -> None:
        super().__init__()
        self.rotary_dim = rotary_dim
        self.max_wavelength = max_wavelength
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float64, device=device) / max(self.rotary_dim, 1)
        return self.max_wavelength ** -exponents

    def _apply(self, fn: Any, recurse: bool = True) -> "Rotary":
        """Follow the module to its device but stay float64 through `.to(dtype)` / `.half()`."""
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq(self.inv_freq.device)
        return self

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation tables for integer `positions` (any shape), computed in float64.

        Float64 keeps the angles exact at large absolute positions, so relative positions stay
        exact when decoding far past the context. Shapes: positions.shape + (rotary_dim // 2,).
        """
        angles = positions.to(torch.float64).unsqueeze(-1) * self.inv_freq.to(positions.device)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first channels of x (..., L, dim_head) by tables (..., L, r) broadcast over heads
    (r = rotary_dim // 2, so the tables' width says how many channels rotate)."""
    half = cos.shape[-1]
    if half == 0:
        return x
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast x may be bf16, the tables fp32
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


# ----------------------------------------------------------------------------------------------
# Layers: each owns its math, one forward for training, prefill and one-token decoding


Rotation = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) tables from Rotary.cos_sin


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


class FeedForward(nn.Module):
    """Pre-norm MLP with a squared-ReLU hidden layer."""

    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = Linear(dim, dim * mult, bias=False)
        self.down = Linear(dim * mult, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.relu(self.up(self.norm(x))).square()))


class MultiHead(nn.Module):
    """What both attentions share: the head count, attention dropout and the one attention call."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.dropout
        self.flash_when_compiled = True  # set per model by PerceiverAR.set_kernels

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`attention` of heads q onto k, v (dropout in training), heads merged: (b, n, inner)."""
        dropout = self.attn_dropout if self.training else 0.0
        return merge_heads(attention(q, k, v, mask, dropout, self.flash_when_compiled))


class CrossAttention(MultiHead):
    """Latent queries attend to input keys/values (bottom-right causal unless a mask is given).

    The keys/values come in as arguments: projected from the whole input in training and at a
    prefill (`keys_values`), or the cached decoder's ring buffer when decoding.
    """

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__(cfg)
        inner = cfg.heads * cfg.dim_head
        self.norm_q = nn.LayerNorm(cfg.dim)
        self.norm_kv = nn.LayerNorm(cfg.dim)
        self.to_q = Linear(cfg.dim, inner, bias=False)
        self.to_kv = Linear(cfg.dim, 2 * inner, bias=False)
        self.to_out = Linear(inner, cfg.dim, bias=False)

    def keys_values(self, h: torch.Tensor, rot: Rotation) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (b, h, n, d) of input embeddings h (b, n, dim)."""
        k, v = self.to_kv(self.norm_kv(h)).chunk(2, dim=-1)
        return rotate(split_heads(k, self.heads), *rot), split_heads(v, self.heads)

    def queries(self, h: torch.Tensor, rot: Rotation) -> torch.Tensor:
        """Rotated queries (b, h, n, d) projected from the latents' own embeddings."""
        return rotate(split_heads(self.to_q(self.norm_q(h)), self.heads), *rot)

    def forward(
        self, h: torch.Tensor, rot: Rotation, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention output (b, n, dim) of latent embeddings h (b, n, dim) onto keys/values k, v."""
        return self.to_out(self.attend(self.queries(h, rot), k, v, mask))


class SelfAttention(MultiHead):
    """Pre-norm causal self-attention over the latents, with an optional key/value cache.

    Without a cache, keys/values are the input's own. With a `cache`, the new keys/values are
    written at latent `slots` (n,) and the queries attend to `cache.view(filled)`: the first
    `filled` slots, or (None, the fixed-shape step) every slot under `mask`.
    """

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__(cfg)
        inner = cfg.heads * cfg.dim_head
        self.norm = nn.LayerNorm(cfg.dim)
        self.to_qkv = Linear(cfg.dim, 3 * inner, bias=False)
        self.to_out = Linear(inner, cfg.dim, bias=False)

    def forward(
        self, x: torch.Tensor, rot: Rotation, mask: torch.Tensor | None = None,
        cache: KVCache | None = None, slots: torch.Tensor | None = None, filled: int | None = None,
    ) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        q, k = rotate(q, *rot), rotate(k, *rot)
        if cache is not None:
            cache.write(slots, k, v)
            k, v = cache.view(filled)
        return self.to_out(self.attend(q, k, v, mask))


class LatentBlock(nn.Module):
    """One self-attention + MLP block of the latent stack (arguments as in `SelfAttention`)."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, rot: Rotation, mask: torch.Tensor | None = None,
        cache: KVCache | None = None, slots: torch.Tensor | None = None, filled: int | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(x, rot, mask, cache, slots, filled))
        return x + self.ff(x)


# ----------------------------------------------------------------------------------------------
# The model


class PerceiverAR(nn.Module):
    """Perceiver AR language model over event tokens.

    Construct from a `PerceiverARConfig` or from keyword arguments (the seed port's names work:
    `num_tokens, dim, depth, heads, dim_head, max_seq_len, cross_attn_seq_len | num_latents,
    cross_attn_dropout, ff_mult, dropout`). `kernels` picks speed paths (see `Kernels`).

    `forward` and the cached decoder share one chain, `decode_latents` (cross stage, latent stack,
    head); the stages are usable alone too: `embed`, `rotation`, `cross_attn.keys_values`,
    `cross_stage`, `latent_stack`, `head`.
    """

    def __init__(self, config: PerceiverARConfig | None = None, kernels: Kernels | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = PerceiverARConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("pass either a config or keyword arguments, not both")
        self.config = cfg = config
        self.token_emb = nn.Embedding(cfg.num_tokens, cfg.dim)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.rotary = Rotary(cfg.rotary_dim, cfg.rotary_max_wavelength or cfg.max_seq_len)
        self.cross_attn = CrossAttention(cfg)
        self.cross_ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.dropout)
        self.cross_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(LatentBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.to_logits = Linear(cfg.dim, cfg.num_tokens, bias=False)
        self._init_weights()
        self.set_kernels(kernels or Kernels())

    def set_kernels(self, kernels: Kernels) -> None:
        """Choose the speed paths of every layer (takes effect at the next call or compilation)."""
        self.kernels = kernels
        for module in self.modules():
            if isinstance(module, Linear):
                module.row_reduction = kernels.row_linear_as_reduction
            elif isinstance(module, MultiHead):
                module.flash_when_compiled = kernels.flash_when_compiled

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        # Residual outputs scaled down with depth; the output head starts at zero (uniform logits).
        scale = 0.02 / math.sqrt(2 * (self.config.depth + 1))
        for linear in [self.cross_attn.to_out, self.cross_ff.down] + [
            m for layer in self.layers for m in (layer.attn.to_out, layer.ff.down)
        ]:
            nn.init.normal_(linear.weight, std=scale)
        nn.init.zeros_(self.to_logits.weight)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        num_latents: int | None = None,
    ) -> torch.Tensor:
        """Logits (b, n, num_tokens) for the last n = min(num_latents, L) positions.

        tokens: (b, L) ids with 1 <= L <= max_seq_len. padding_mask: optional (b, L) bool, True for
        real tokens; padding goes on the LEFT (the latents, which are scored, sit at the end).
        num_latents overrides the configured N (used by the cached decoder's resets and tests).
        """
        h, rot, context, context_mask, positions = self._latent_inputs(tokens, padding_mask, num_latents)
        latent_mask = None
        if padding_mask is not None:
            latent_mask = causal_keep_mask(positions, positions, padding_mask[:, -len(positions) :])
        return self.decode_latents(h, rot, context, context_mask=context_mask, latent_mask=latent_mask)

    def decode_latents(
        self, h: torch.Tensor, rot: Rotation, context: tuple[torch.Tensor, torch.Tensor], *,
        context_mask: torch.Tensor | None = None, latent_mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None, slots: torch.Tensor | None = None, filled: int | None = None,
        last: bool = False,
    ) -> torch.Tensor:
        """The one chain from latent embeddings to logits: `forward` and every decoder path use it.

        Latent embeddings h (b, n, dim) at rotation `rot` cross-attend to the `context` keys and
        values (bottom-right causal unless `context_mask`), then go through the latent stack
        (causal unless `latent_mask`) and the head. With `cache` (one KVCache per layer) the
        latents' keys/values are written at `slots` and attention reads `filled` slots (see
        `SelfAttention`). Returns logits (b, n, V), or with `last` the last latent's (b, V).
        """
        x = self.cross_stage(h, rot, *context, context_mask)
        x = self.latent_stack(x, rot, latent_mask, cache, slots, filled)
        return self.head(x[:, -1] if last else x)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, Rotation]:
        """Embeddings (b, n, dim) of ids (b, n) and the rotation tables of their `positions` (n,)."""
        h = self.emb_dropout(self.token_emb(ids))
        return h, self.rotation(positions, h.dtype)

    def rotation(self, positions: torch.Tensor, dtype: torch.dtype) -> Rotation:
        """Rotary (cos, sin) tables for absolute `positions` (see Rotary.cos_sin)."""
        return self.rotary.cos_sin(positions, dtype)

    def cross_attend(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        num_latents: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens -> latent states (b, n, dim) after the cross-attention stage, and their positions (n,)."""
        h, rot, context, context_mask, positions = self._latent_inputs(tokens, padding_mask, num_latents)
        return self.cross_stage(h, rot, *context, context_mask), positions

    def _latent_inputs(
        self, tokens: torch.Tensor, padding_mask: torch.Tensor | None, num_latents: int | None
    ) -> tuple[torch.Tensor, Rotation, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """What `decode_latents` takes for a whole input: the latents' embeddings and rotation, the
        cross-attention keys/values (in training less a random part of the prefix) and their mask,
        and the latents' positions (n,)."""
        length = tokens.shape[1]
        cfg = self.config
        if not 1 <= length <= cfg.max_seq_len:
            raise ValueError(f"input length {length} is outside 1..max_seq_len={cfg.max_seq_len}")
        n = min(num_latents or cfg.num_latents, length)
        positions = torch.arange(length, device=tokens.device)
        h, rot = self.embed(tokens, positions)

        # Keys/values: the whole input, or (training) the latents plus a random subset of the prefix.
        kv_h, kv_pos, kv_real, kv_rot = h, positions, padding_mask, rot
        prefix = length - n
        if self.training and cfg.cross_attn_dropout > 0 and prefix > 0:
            kv_h, kv_pos, kv_real = self._drop_prefix(h, prefix, padding_mask)
            cos_k, sin_k = self.rotation(kv_pos, h.dtype)
            kv_rot = (cos_k[:, None], sin_k[:, None])  # per-example key positions: broadcast over heads
        context = self.cross_attn.keys_values(kv_h, kv_rot)
        q_pos = positions[prefix:]
        mask = None if kv_real is None else causal_keep_mask(q_pos, kv_pos, kv_real)
        return h[:, prefix:], (rot[0][prefix:], rot[1][prefix:]), context, mask, q_pos

    def cross_stage(
        self, h: torch.Tensor, rot: Rotation, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent embeddings h (b, n, dim) at rotation `rot` -> latent states: cross-attention onto
        k, v (bottom-right causal unless `mask`), with a residual from h, then the MLP."""
        x = h + self.cross_dropout(self.cross_attn(h, rot, k, v, mask))
        return x + self.cross_ff(x)

    def latent_stack(
        self, x: torch.Tensor, rot: Rotation, mask: torch.Tensor | None = None,
        cache: list[KVCache] | None = None, slots: torch.Tensor | None = None, filled: int | None = None,
    ) -> torch.Tensor:
        """The causal self-attention stack over latent states x (b, n, dim) -> final states.

        `cache` (one KVCache per layer), `slots` and `filled` as in `SelfAttention`."""
        for i, layer in enumerate(self.layers):
            x = layer(x, rot, mask, None if cache is None else cache[i], slots, filled)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The output head: final norm and logits."""
        return self.to_logits(self.norm_out(x))

    def _drop_prefix(
        self, h: torch.Tensor, prefix: int, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keep a random, order-preserving subset of each example's prefix plus all latents."""
        b, length, _ = h.shape
        keep = prefix - int(prefix * self.config.cross_attn_dropout)
        scores = torch.rand(b, prefix, device=h.device)
        kept = scores.topk(keep, dim=1).indices.sort(dim=1).values
        latent_pos = torch.arange(prefix, length, device=h.device).expand(b, -1)
        kv_pos = torch.cat((kept, latent_pos), dim=1)
        kv_h = h.gather(1, kv_pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        kv_real = None if padding_mask is None else padding_mask.gather(1, kv_pos)
        return kv_h, kv_pos, kv_real


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    z_loss: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to optimise, mean NLL in nats/token) of logits (b, n, V) against targets (b, n).

    target_mask (b, n) bool marks the targets that count (False for padding). The optional z-loss
    adds z_loss * mean(logsumexp(logits)^2), which keeps the softmax normaliser near 1.
    """
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll = log_z - target_logit
    if target_mask is None:
        nats = nll.mean()
        z_term = log_z.square().mean()
    else:
        weight = target_mask.to(nll.dtype)
        count = weight.sum().clamp_min(1.0)
        nats = (nll * weight).sum() / count
        z_term = (log_z.square() * weight).sum() / count
    loss = nats + z_loss * z_term if z_loss else nats
    return loss, nats.detach()
