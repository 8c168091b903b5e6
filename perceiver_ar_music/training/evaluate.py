"""Negative log-likelihood of held-out music under a model, per token, per note and per second.

Targets are each piece's ids and its EOS (the BOS is given), ``num_tokens + 1`` per piece.
Two scoring methods:

- strided (default): the ``EvalWindows`` tiling with ``score_len = num_latents``: every target is
  scored once, by a window of ``max_seq_len`` tokens in which it has at least
  ``max_seq_len - num_latents`` tokens of context (or the whole piece before it, near the start).
  One forward per ``num_latents`` targets.
- exact: every target is scored by its own window, the ``max_seq_len`` tokens before it (fewer at
  the start of a piece), so each prediction sees the longest context the model allows. One forward
  per target (batched): slow, for small models or a few pieces.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from perceiver_ar_music.runtime.devices import autocast
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, lm_loss
from perceiver_ar_music.training.loss import window_loss
from perceiver_ar_music.data.vocab import EventVocab
from perceiver_ar_music.training.windows import EvalWindows, framed_slice

METHODS = ("strided", "exact")


@torch.no_grad()
def score_windows(
    model: torch.nn.Module,
    dataset: EvalWindows,
    indices: Sequence[int],
    batch_size: int,
    device: torch.device,
    pad_id: int,
    precision: str = "auto",
    min_tokens: int | None = None,
) -> tuple[float, int]:
    """(total nats, targets scored) of the given windows of an ``EvalWindows`` dataset, the
    forwards under `devices.autocast(device, precision)` (the NLL itself in fp32); `min_tokens`
    as in `loss.window_loss` (shared left padding cut off).

    `model` may be wrapped (DDP, compiled); the caller puts it in eval mode.
    """
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(i)] for i in indices[start : start + batch_size]]
        batch = {key: torch.stack([item[key] for item in items]) for key in ("tokens", "target_mask")}
        _, nats, scored = window_loss(model, batch, pad_id, device, precision, min_tokens=min_tokens)
        total += nats.double() * scored
        count += scored
    return float(total), count


def strided_nll(model: PerceiverAR, pieces: Sequence[np.ndarray], vocab: EventVocab, batch_size: int,
                device: torch.device, precision: str = "auto") -> tuple[float, int]:
    """(total nats, targets) of `pieces` by the strided approximation (module doc)."""
    cfg = model.config
    windows = EvalWindows(pieces, vocab, seq_len=cfg.max_seq_len, score_len=cfg.num_latents)
    return score_windows(model, windows, range(len(windows)), batch_size, device, vocab.pad_id, precision,
                         min_tokens=cfg.num_latents + 1)


def _exact_windows(pieces: Sequence[np.ndarray], vocab: EventVocab, seq_len: int) -> Iterator[tuple[np.ndarray, int]]:
    """For every target of every piece: (the up to `seq_len` framed tokens before it, the target)."""
    for piece in pieces:
        framed_length = len(piece) + 2
        for position in range(1, framed_length):
            begin = max(0, position - seq_len)
            window = framed_slice(piece, begin, position + 1, vocab.bos_id, vocab.eos_id)
            yield window[:-1], int(window[-1])


@torch.no_grad()
def exact_nll(model: PerceiverAR, pieces: Sequence[np.ndarray], vocab: EventVocab, batch_size: int,
              device: torch.device, precision: str = "auto") -> tuple[float, int]:
    """(total nats, targets) of `pieces`, each target predicted from its own full window (module doc)."""
    seq_len = model.config.max_seq_len
    total, count = 0.0, 0
    batch: list[tuple[np.ndarray, int]] = []

    def flush() -> None:
        nonlocal total, count
        inputs = np.full((len(batch), seq_len), vocab.pad_id, dtype=np.int64)
        real = np.zeros((len(batch), seq_len), dtype=bool)
        for row, (context, _) in enumerate(batch):
            inputs[row, seq_len - len(context) :] = context
            real[row, seq_len - len(context) :] = True
        padding_mask = None if real.all() else torch.from_numpy(real).to(device)
        with autocast(device, precision):
            logits = model(torch.from_numpy(inputs).to(device), padding_mask)
        targets = torch.tensor([target for _, target in batch], device=device)
        _, nats = lm_loss(logits[:, -1:], targets[:, None])
        total += float(nats.double()) * len(batch)
        count += len(batch)
        batch.clear()

    for window in _exact_windows(pieces, vocab, seq_len):
        batch.append(window)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return total, count


@dataclass
class Evaluation:
    """NLL totals and rates of one evaluation."""

    method: str
    method_note: str
    split: str
    pieces: int
    targets: int
    notes: int
    seconds: float
    total_nats: float
    nats_per_token: float
    bits_per_token: float
    nats_per_note: float | None
    bits_per_note: float | None
    nats_per_second: float | None
    bits_per_second: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def method_note(method: str, max_seq_len: int, num_latents: int) -> str:
    """One line saying how the targets were scored."""
    if method == "exact":
        return (f"exact: every target scored by its own window of the {max_seq_len} tokens before it "
                f"(fewer at the start of a piece)")
    return (f"strided approximation: each target scored once, with at least {max_seq_len - num_latents} "
            f"tokens of context (max_seq_len {max_seq_len} - num_latents {num_latents}) or the whole "
            f"piece before it; --exact scores each target with its full {max_seq_len}-token window")


def evaluate_pieces(
    model: PerceiverAR,
    pieces: Sequence[np.ndarray],
    entries: Sequence[dict[str, Any]],
    vocab: EventVocab,
    *,
    split: str,
    method: str = "strided",
    batch_size: int = 8,
    device: torch.device = torch.device("cpu"),
    precision: str = "auto",
) -> Evaluation:
    """Score `pieces` (with their manifest `entries`, for notes and seconds) by `method`, the
    forwards in `precision` (`devices.autocast_dtype`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    model.eval()
    scorer = exact_nll if method == "exact" else strided_nll
    total, targets = scorer(model, pieces, vocab, batch_size, device, precision)
    notes = int(sum(entry["num_notes"] for entry in entries))
    seconds = float(sum(entry["seconds"] for entry in entries))
    per_note = total / notes if notes else None
    per_second = total / seconds if seconds > 0 else None
    return Evaluation(
        method=method,
        method_note=method_note(method, model.config.max_seq_len, model.config.num_latents),
        split=split,
        pieces=len(pieces),
        targets=targets,
        notes=notes,
        seconds=seconds,
        total_nats=total,
        nats_per_token=total / targets,
        bits_per_token=total / targets / math.log(2),
        nats_per_note=per_note,
        bits_per_note=None if per_note is None else per_note / math.log(2),
        nats_per_second=per_second,
        bits_per_second=None if per_second is None else per_second / math.log(2),
    )


def format_evaluation(result: Evaluation) -> str:
    """A short human-readable report."""

    def rate(nats: float | None, bits: float | None, unit: str) -> str:
        return f"{'n/a':>10} nats/{unit}" if nats is None else f"{nats:10.4f} nats/{unit}  {bits:10.4f} bits/{unit}"

    return "\n".join([
        f"split {result.split}: {result.pieces} pieces, {result.targets:,} targets (ids + EOS), "
        f"{result.notes:,} notes, {result.seconds / 3600:.2f} hours",
        f"method: {result.method_note}",
        rate(result.nats_per_token, result.bits_per_token, "token"),
        rate(result.nats_per_note, result.bits_per_note, "note"),
        rate(result.nats_per_second, result.bits_per_second, "second"),
    ])
