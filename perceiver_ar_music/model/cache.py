"""What cached decoding keeps between steps, with one write path.

- `KVCache`: keys and values (b, h, S, d) in S slots. `write` puts new keys/values at given slots
  (one `index_copy_`, whatever the caller: a prefill, a reset, an eager step, the fixed-shape
  step); `view` gives the first `filled` slots, or every slot for a caller that masks the
  empty ones (the fixed-shape step, whose shapes never change).
- `DecoderCache`: the context ring (the cross-attention keys/values and ids of the last M tokens,
  token at position p in slot p mod M) and one latent `KVCache` per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    """Keys and values (b, h, slots, d) of one attention."""

    k: torch.Tensor
    v: torch.Tensor

    @classmethod
    def zeros(cls, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device) -> "KVCache":
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Put keys/values (b, h, n, d) at `slots` (n,), a tensor on the cache's device."""
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)

    def view(self, filled: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `filled` slots, or (None) all of them, the caller masking the empty ones."""
        if filled is None:
            return self.k, self.v
        return self.k[:, :, :filled], self.v[:, :, :filled]


class DecoderCache:
    """The context ring and the latents' keys/values of a batch of `batch` sequences."""

    def __init__(
        self, batch: int, heads: int, dim_head: int, context: int, latents: int, depth: int,
        dtype: torch.dtype, id_dtype: torch.dtype, device: torch.device,
    ) -> None:
        self.context = KVCache.zeros((batch, heads, context, dim_head), dtype, device)
        self.ids = torch.zeros((batch, context), dtype=id_dtype, device=device)
        self.latents = [KVCache.zeros((batch, heads, latents, dim_head), dtype, device) for _ in range(depth)]

    @property
    def slots(self) -> int:
        """M: the ring's length."""
        return self.ids.shape[1]

    def store(self, tokens: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Write tokens (b, n) and their keys/values at `positions` (n,) into the ring (slot = position mod M)."""
        slots = positions % self.slots
        self.context.write(slots, k, v)
        self.ids.index_copy_(1, slots, tokens)

    def window(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys, values and ids of the last min(length, M) tokens, oldest first, after `length` tokens."""
        if length <= self.slots:
            return (*self.context.view(length), self.ids[:, :length])
        shift = -(length % self.slots)  # the oldest slot moves to the front
        return self.context.k.roll(shift, dims=2), self.context.v.roll(shift, dims=2), self.ids.roll(shift, dims=1)

    def tensors(self) -> list[torch.Tensor]:
        """Every cached tensor (its first dimension is the batch row)."""
        return [self.context.k, self.context.v, self.ids, *(t for c in self.latents for t in (c.k, c.v))]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i], copied in place (a captured graph keeps its pointers)."""
        for tensor in self.tensors():
            tensor.copy_(tensor.index_select(0, rows))
