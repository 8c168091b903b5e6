"""Incremental decoding for Perceiver AR: a cached decoder with resets, and its slow reference.

Both decoders share one interface: `prefill(tokens)` takes a (b, P) prompt and returns the logits
(b, V) for the next token; `step(tokens)` appends one token per sequence and returns the next
logits. All sequences of a batch have the same length.

The cached decoder (`CachedDecoder`):
- keeps the cross-attention keys/values of the last `max_seq_len` (M) tokens in a ring buffer,
  rotated with their absolute positions, so a token's keys are projected once and relative
  positions stay exact however far decoding goes past the context;
- keeps per-layer latent keys/values for up to N latents and decodes one token per step;
- when the latent cache is full, RESETS: rebuilds the latent stack with N' latents (default N/2)
  from the cached cross-attention keys/values (no re-projection of the context), then goes on.

What it computes (tested against `ReferenceDecoder` and plain forwards):
- while the whole sequence fits in N, identical to a full forward of the sequence;
- right after a (re)build with k latents, identical to `model(window, num_latents=k)` where the
  window is the last M tokens; between resets the newest latent cross-attends to its own last M
  tokens while older latents keep their activations (the reset approximation of the paper).
"""

from __future__ import annotations

import torch
from torch.nn.attention.bias import causal_lower_right

from perceiver_ar_music.model import PerceiverAR, merge_heads


class ReferenceDecoder:
    """The slow exact path: one full forward over the last `max_seq_len` tokens per step."""

    def __init__(self, model: PerceiverAR) -> None:
        self.model = model
        self.tokens: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens = tokens
        return self._next_logits()

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.tokens is not None, "call prefill first"
        self.tokens = torch.cat((self.tokens, tokens.view(-1, 1)), dim=1)
        return self._next_logits()

    def _next_logits(self) -> torch.Tensor:
        window = self.tokens[:, -self.model.config.max_seq_len :]
        return self.model(window)[:, -1]


class CachedDecoder:
    """Cached Perceiver AR decoding with latent-cache resets and a sliding context window."""

    def __init__(self, model: PerceiverAR, reset_latents: int | None = None) -> None:
        cfg = model.config
        if model.training:
            raise ValueError("decode with the model in eval mode (model.eval())")
        self.model = model
        self.reset_latents = reset_latents or max(1, cfg.num_latents // 2)
        if not 1 <= self.reset_latents <= cfg.num_latents:
            raise ValueError(f"reset_latents must be in 1..num_latents={cfg.num_latents}")
        self.length = 0  # tokens seen so far
        self.num_cached = 0  # latents in the latent caches
        self.num_resets = 0

    # -- public interface --------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Start from a (b, P) prompt; returns the logits (b, V) for token P."""
        cfg = self.model.config
        b, prompt_len = tokens.shape
        if prompt_len < 1:
            raise ValueError("the prompt needs at least one token (e.g. BOS)")
        # Caches are allocated at the first write, in the dtype the projections produce (bf16
        # under CUDA autocast, else the parameters' dtype).
        self.cross_k = self.cross_v = None
        self.latent_k: list[torch.Tensor] = []
        self.latent_v: list[torch.Tensor] = []
        self.cross_ids = tokens.new_zeros((b, cfg.max_seq_len))
        m, n = cfg.max_seq_len, cfg.num_latents
        window = tokens[:, -m:]
        self.length = prompt_len - window.shape[1]
        self._write_context(window)
        return self._rebuild(prompt_len if prompt_len <= n else self.reset_latents)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence (shape (b,)); returns the logits (b, V) for the next."""
        tokens = tokens.view(-1, 1)
        position = self.length
        self._write_context(tokens)
        if self.num_cached == self.model.config.num_latents:
            self.num_resets += 1
            return self._rebuild(self.reset_latents)
        return self._decode_one(tokens, position)

    # -- internals ---------------------------------------------------------------------------------

    def _write_context(self, tokens: torch.Tensor) -> None:
        """Project and store the cross-attention keys/values of new tokens in the ring buffer."""
        model = self.model
        m = model.config.max_seq_len
        positions = torch.arange(self.length, self.length + tokens.shape[1], device=tokens.device)
        h = model.token_emb(tokens)
        cos, sin = model.rotary.cos_sin(positions, h.dtype)
        k, v = model.cross_attn.keys_values(h, model.rotary, cos, sin)
        if self.cross_k is None:
            shape = (tokens.shape[0], model.config.heads, m, model.config.dim_head)
            self.cross_k, self.cross_v = k.new_zeros(shape), v.new_zeros(shape)
        slots = positions % m
        self.cross_k.index_copy_(2, slots, k)
        self.cross_v.index_copy_(2, slots, v)
        self.cross_ids.index_copy_(1, slots, tokens)
        self.length += tokens.shape[1]

    def _window(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and ids of the current context window in chronological order."""
        m = self.model.config.max_seq_len
        if self.length <= m:
            return self.cross_k[:, :, : self.length], self.cross_v[:, :, : self.length], self.cross_ids[:, : self.length]
        shift = -(self.length % m)  # the oldest slot moves to the front
        return (
            self.cross_k.roll(shift, dims=2),
            self.cross_v.roll(shift, dims=2),
            self.cross_ids.roll(shift, dims=1),
        )

    def _rebuild(self, num_latents: int) -> torch.Tensor:
        """Recompute the latent stack for the last `num_latents` positions from the cached context."""
        model = self.model
        k_ctx, v_ctx, ids = self._window()
        window_len = ids.shape[1]
        n = min(num_latents, window_len)
        positions = torch.arange(self.length - n, self.length, device=ids.device)
        h = model.token_emb(ids[:, -n:])
        cos, sin = model.rotary.cos_sin(positions, h.dtype)
        q = model.cross_attn.queries(h, model.rotary, cos, sin)
        if n < window_len:
            out = torch.nn.functional.scaled_dot_product_attention(q, k_ctx, v_ctx, attn_mask=causal_lower_right(n, window_len))
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k_ctx, v_ctx, is_causal=True)
        x = h + model.cross_attn.to_out(merge_heads(out))
        x = x + model.cross_ff(x)
        if not self.latent_k:
            shape = (ids.shape[0], model.config.heads, model.config.num_latents, model.config.dim_head)
            self.latent_k = [k_ctx.new_zeros(shape) for _ in model.layers]
            self.latent_v = [v_ctx.new_zeros(shape) for _ in model.layers]
        for layer, cache_k, cache_v in zip(model.layers, self.latent_k, self.latent_v):
            q, k, v = layer.attn.qkv(x, model.rotary, cos, sin)
            cache_k[:, :, :n] = k
            cache_v[:, :, :n] = v
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + layer.attn.to_out(merge_heads(out))
            x = x + layer.ff(x)
        self.num_cached = n
        return model.to_logits(model.norm_out(x[:, -1]))

    def _decode_one(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """One new latent: cross-attend to the whole window, then the cached latent stack."""
        model = self.model
        window = min(self.length, model.config.max_seq_len)
        pos = torch.tensor([position], device=tokens.device)
        h = model.token_emb(tokens)
        cos, sin = model.rotary.cos_sin(pos, h.dtype)
        q = model.cross_attn.queries(h, model.rotary, cos, sin)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, self.cross_k[:, :, :window], self.cross_v[:, :, :window]
        )
        x = h + model.cross_attn.to_out(merge_heads(out))
        x = x + model.cross_ff(x)
        index = self.num_cached
        for layer, cache_k, cache_v in zip(model.layers, self.latent_k, self.latent_v):
            q, k, v = layer.attn.qkv(x, model.rotary, cos, sin)
            cache_k[:, :, index : index + 1] = k
            cache_v[:, :, index : index + 1] = v
            out = torch.nn.functional.scaled_dot_product_attention(
                q, cache_k[:, :, : index + 1], cache_v[:, :, : index + 1]
            )
            x = x + layer.attn.to_out(merge_heads(out))
            x = x + layer.ff(x)
        self.num_cached += 1
        return model.to_logits(model.norm_out(x[:, -1]))
