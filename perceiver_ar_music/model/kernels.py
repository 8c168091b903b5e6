"""The speed side of the model: kernel choices, the one attention call and its masks.

Nothing here changes a result beyond rounding. `Kernels` picks per model whether, under
torch.compile, a one-row linear layer runs as a multiply-reduce and whether bottom-right causal
attention calls the flash kernel directly; `attention` is the model's one SDPA call;
`lower_right_causal` and `causal_keep_mask` build the masks it takes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right


@dataclass(frozen=True)
class Kernels:
    """Kernel choices that change no result beyond rounding (not saved with the weights).

    row_linear_as_reduction: under torch.compile, a linear layer applied to one row (batch-1
    decoding) runs as a multiply-reduce over the weight rows, which reads the weight once at
    memory speed (GEMM kernels are tuned for matrices). Eager calls always use F.linear.
    flash_when_compiled: under torch.compile on a GPU that takes it, bottom-right causal attention
    with more keys than queries calls the flash kernel directly (see `attention`).
    """

    row_linear_as_reduction: bool = True
    flash_when_compiled: bool = True


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) with the compiled single-row path of `Kernels`."""

    row_reduction = True  # set per model by PerceiverAR.set_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.row_reduction and torch.compiler.is_compiling() and x.numel() == x.shape[-1] and self.bias is None:
            # fp32 products and sum, as a GEMM accumulates; the compiler fuses the casts.
            return (x.unsqueeze(-2).float() * self.weight.float()).sum(-1).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
    dropout: float = 0.0, flash_when_compiled: bool = True,
) -> torch.Tensor:
    """Attention of q (b, h, n, d) onto k, v (b, h, m, d) through SDPA.

    With a boolean keep-`mask` that mask decides; without one the mask is bottom-right causal
    (query i sees keys 0..m - n + i; with m == n the ordinary causal mask; one query sees every
    key). Compiled on a GPU with the flash kernel (Ampere or newer, bf16/fp16) and
    `flash_when_compiled`, m > n calls that kernel directly: its causal mask is bottom-right
    aligned, and unlike CausalBias it traces without a graph break.
    """
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    n, m = q.shape[-2], k.shape[-2]
    if n == m:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    if flash_when_compiled and torch.compiler.is_compiling() and _flash_lower_right_ok(q):
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout, True)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=lower_right_causal(n, m, q.device), dropout_p=dropout)


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
