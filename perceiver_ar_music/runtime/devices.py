"""Where the model runs and in what precision: one device pick for every command, the autocast of
training and scoring (`--precision auto|bf16|fp32`: bf16 on CUDA and on CPUs with bf16 matrix
units, fp32 elsewhere), bf16 weights for sampling on CUDA, TF32 matmuls for training on CUDA."""

from __future__ import annotations

import contextlib

import torch

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.runtime.cli_types import PRECISIONS


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for `--device`: 'auto' is the GPU if any (``cuda:<local_rank>``: this process's
    under torchrun), else CPU; a device that is not there is a `UserError`."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device '{requested}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but MPS is not available")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices faster than fp32 ones: AMX tiles (Intel Sapphire
    Rapids and later, where the OS or VM exposes them). AVX512-BF16 alone is not enough: the
    bundled shape's training step, 2 threads, took 0.54-0.63x its fp32 time under bf16 autocast
    with AMX and 1.25x without it (docs/benchmarks.md, issue 25)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of training and scoring for `--precision` (None: plain fp32).

    'auto' is bf16 on CUDA and on a CPU with `cpu_has_fast_bf16`, fp32 elsewhere; 'bf16' forces
    bf16 autocast (any CPU can run it, slowly without bf16 units; on CUDA it needs Ampere or
    newer); 'fp32' turns autocast off. Weights, gradients and the optimizer stay fp32 either way.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError("--precision bf16 was asked for, but this GPU has no bf16 support")
        return torch.bfloat16
    if device.type == "cpu" and (precision == "bf16" or cpu_has_fast_bf16()):
        return torch.bfloat16
    if precision == "bf16":
        raise UserError(f"--precision bf16 is not supported on {device.type} (use fp32)")
    return None


def autocast(device: torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """The autocast context of training and scoring on `device` (see `autocast_dtype`)."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def describe_precision(device: torch.device, precision: str = "auto") -> str:
    """'bf16 autocast' or 'fp32': what `autocast(device, precision)` runs, for announcements."""
    return "fp32" if autocast_dtype(device, precision) is None else "bf16 autocast"


def inference_dtype(device: str | torch.device) -> torch.dtype:
    """The CLI's weight precision for sampling on `device`: bf16 on CUDA (bf16 weights, not
    autocast: autocast re-casts every weight at every decode step, measured 8x slower per token on
    an H200, 49.6 vs 6.0 ms/step for the 164M model), float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def allow_tf32(device: torch.device) -> None:
    """TF32 matmuls on CUDA for training (bf16 autocast does the rest); CPU stays full fp32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
