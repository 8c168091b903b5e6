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

import functools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from perceiver_ar_music.atomic import write_json_atomic


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
        checks = [
            (self.num_tokens > 0, "num_tokens must be positive"),
            (self.dim > 0 and self.depth >= 0 and self.heads > 0 and self.dim_head > 0, "dim, heads and dim_head must be positive, depth >= 0"),
            (1 <= self.num_latents <= self.max_seq_len, "num_latents must be in 1..max_seq_len"),
            (0.0 <= self.cross_attn_dropout < 1.0, "cross_attn_dropout must be in [0, 1)"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.rotary_fraction <= 1.0, "rotary_fraction must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

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

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PerceiverARConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


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

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x (..., L, dim_head) by tables (..., L, rotary_dim // 2) broadcast over heads."""
        if self.rotary_dim == 0:
            return x
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast x may be bf16, the tables fp32
        half = self.rotary_dim // 2
        x1, x2, rest = x[..., :half], x[..., half : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


# ----------------------------------------------------------------------------------------------
# Blocks

# Compiled for one row (batch-1 decoding), a linear layer is a multiply-reduce over each weight
# row, which reads the weight once at memory speed; GEMM kernels are tuned for matrices.
ROW_LINEAR_AS_REDUCTION = True


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) with the single-row fast path above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if ROW_LINEAR_AS_REDUCTION and torch.compiler.is_compiling() and x.numel() == x.shape[-1] and self.bias is None:
            # fp32 products and sum, as a GEMM accumulates; the compiler fuses the casts.
            return (x.unsqueeze(-2).float() * self.weight.float()).sum(-1).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


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


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return rearrange(x, "b n (h d) -> b h n d", h=heads)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    """Latent queries attend to every input position up to their own."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads = cfg.heads
        self.norm_q = nn.LayerNorm(cfg.dim)
        self.norm_kv = nn.LayerNorm(cfg.dim)
        self.to_q = Linear(cfg.dim, inner, bias=False)
        self.to_kv = Linear(cfg.dim, 2 * inner, bias=False)
        self.to_out = Linear(inner, cfg.dim, bias=False)

    def keys_values(self, h: torch.Tensor, rot: Rotary, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (b, h, n, d) of input embeddings h (b, n, dim)."""
        k, v = self.to_kv(self.norm_kv(h)).chunk(2, dim=-1)
        return rot.rotate(split_heads(k, self.heads), cos, sin), split_heads(v, self.heads)

    def queries(self, h: torch.Tensor, rot: Rotary, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotated queries (b, h, n, d) projected from the latents' own embeddings."""
        return rot.rotate(split_heads(self.to_q(self.norm_q(h)), self.heads), cos, sin)


class SelfAttention(nn.Module):
    """Pre-norm causal self-attention over the latents."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads = cfg.heads
        self.norm = nn.LayerNorm(cfg.dim)
        self.to_qkv = Linear(cfg.dim, 3 * inner, bias=False)
        self.to_out = Linear(inner, cfg.dim, bias=False)

    def qkv(self, x: torch.Tensor, rot: Rotary, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (split_heads(t, self.heads) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        return rot.rotate(q, cos, sin), rot.rotate(k, cos, sin), v


class LatentBlock(nn.Module):
    """One self-attention + MLP block of the latent stack."""

    def __init__(self, cfg: PerceiverARConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.ff = FeedForward(cfg.dim, cfg.ff_mult, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)


def lower_right_causal(num_queries: int, num_keys: int, device: torch.device) -> Any:
    """The bottom-right-aligned causal mask: query i sees keys 0..num_keys - num_queries + i.

    On CUDA in eager mode this is torch's CausalBias, which keeps the fused flash kernel. Under
    torch.compile (building a CausalBias breaks the graph) and on CPU (where CausalBias would
    materialise the mask on every call) it is an explicit boolean mask, cached on CPU.
    """
    if torch.compiler.is_compiling():
        return _explicit_lower_right(num_queries, num_keys, device)
    if device.type == "cpu":
        return _cached_cpu_lower_right(num_queries, num_keys)
    return causal_lower_right(num_queries, num_keys)


COMPILE_WITH_FLASH = True  # compiled bottom-right attention calls the flash kernel where it can


def lower_right_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Attention of q (b, h, n, d) onto k, v (b, h, m, d), m >= n, under the bottom-right causal mask.

    With m == n that is the ordinary causal mask. Compiled on a GPU with the flash kernel (Ampere
    or newer, bf16/fp16), this calls that kernel directly: its causal mask is bottom-right aligned
    (CausalBias dispatches to the same call), and unlike CausalBias it traces without a graph
    break, so compiled training keeps flash attention instead of a kernel that reads a mask.
    """
    if q.shape[-2] == k.shape[-2]:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    if torch.compiler.is_compiling() and COMPILE_WITH_FLASH and _flash_lower_right_ok(q):
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout, True)[0]
    mask = lower_right_causal(q.shape[-2], k.shape[-2], q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def _flash_lower_right_ok(q: torch.Tensor) -> bool:
    """Whether the flash kernel takes q: a CUDA GPU of compute capability 8.0+, half precision,
    head size a multiple of 8 up to 256. (Dynamo folds get_device_properties to a constant.)"""
    return (
        q.is_cuda
        and q.dtype in (torch.bfloat16, torch.float16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and torch.cuda.get_device_properties(q.device).major >= 8
    )


def _explicit_lower_right(num_queries: int, num_keys: int, device: torch.device) -> torch.Tensor:
    keep = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device)
    return keep.tril(num_keys - num_queries)


@functools.lru_cache(maxsize=8)
def _cached_cpu_lower_right(num_queries: int, num_keys: int) -> torch.Tensor:
    return _explicit_lower_right(num_queries, num_keys, torch.device("cpu"))


def causal_keep_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, k_real: torch.Tensor | None) -> torch.Tensor:
    """Boolean keep-mask (b, 1, nq, nk) from absolute positions and a key padding mask.

    A query sees keys at positions <= its own that are real tokens; it always sees itself, so a
    padded query (whose output is never used) still has one key and no NaN appears.
    """
    q_pos = q_pos if q_pos.dim() == 2 else q_pos.unsqueeze(0)
    k_pos = k_pos if k_pos.dim() == 2 else k_pos.unsqueeze(0)
    causal = k_pos[:, None, :] <= q_pos[:, :, None]
    if k_real is not None:
        causal = causal & (k_real[:, None, :] | (k_pos[:, None, :] == q_pos[:, :, None]))
    return causal[:, None]


# ----------------------------------------------------------------------------------------------
# The model


class PerceiverAR(nn.Module):
    """Perceiver AR language model over event tokens.

    Construct from a `PerceiverARConfig` or from keyword arguments (the seed port's names work:
    `num_tokens, dim, depth, heads, dim_head, max_seq_len, cross_attn_seq_len | num_latents,
    cross_attn_dropout, ff_mult, dropout`).
    """

    def __init__(self, config: PerceiverARConfig | None = None, **kwargs: Any) -> None:
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

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.Embedding):
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
        latents, positions = self.cross_attend(tokens, padding_mask, num_latents)
        latent_real = None if padding_mask is None else padding_mask[:, -latents.shape[1] :]
        return self.latent_stack(latents, positions, latent_real)

    def cross_attend(
        self,
        tokens: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        num_latents: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-attention stage: latent states (b, n, dim) and their positions (n,)."""
        b, length = tokens.shape
        cfg = self.config
        if not 1 <= length <= cfg.max_seq_len:
            raise ValueError(f"input length {length} is outside 1..max_seq_len={cfg.max_seq_len}")
        n = min(num_latents or cfg.num_latents, length)
        h = self.emb_dropout(self.token_emb(tokens))
        positions = torch.arange(length, device=tokens.device)

        # Keys/values: the whole input, or (training) the latents plus a random subset of the prefix.
        kv_h, kv_pos, kv_real = h, positions, padding_mask
        prefix = length - n
        if self.training and cfg.cross_attn_dropout > 0 and prefix > 0:
            kv_h, kv_pos, kv_real = self._drop_prefix(h, prefix, padding_mask)

        q_pos = positions[prefix:]
        cos_k, sin_k = self.rotary.cos_sin(kv_pos, h.dtype)
        cos_q, sin_q = self.rotary.cos_sin(q_pos, h.dtype)
        if kv_pos.dim() == 2:  # per-example key positions: broadcast the tables over heads
            cos_k, sin_k = cos_k[:, None], sin_k[:, None]
        k, v = self.cross_attn.keys_values(kv_h, self.rotary, cos_k, sin_k)
        latents = h[:, prefix:]
        q = self.cross_attn.queries(latents, self.rotary, cos_q, sin_q)
        if kv_real is not None:
            out = self._sdpa(q, k, v, causal_keep_mask(q_pos, kv_pos, kv_real), False, self._attn_dropout())
        else:
            out = lower_right_causal_attention(q, k, v, self._attn_dropout())
        x = latents + self.cross_dropout(self.cross_attn.to_out(merge_heads(out)))
        return x + self.cross_ff(x), q_pos

    def latent_stack(
        self, x: torch.Tensor, positions: torch.Tensor, latent_real: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The causal self-attention stack over latent states x (b, n, dim) at `positions` -> logits."""
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        mask = None if latent_real is None else causal_keep_mask(positions, positions, latent_real)
        for layer in self.layers:
            q, k, v = layer.attn.qkv(x, self.rotary, cos, sin)
            out = self._sdpa(q, k, v, mask, mask is None, self._attn_dropout())
            x = x + layer.dropout(layer.attn.to_out(merge_heads(out)))
            x = x + layer.ff(x)
        return self.to_logits(self.norm_out(x))

    def _attn_dropout(self) -> float:
        return self.config.dropout if self.training else 0.0

    @staticmethod
    def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, is_causal: bool, dropout: float) -> torch.Tensor:
        if is_causal and mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)

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
