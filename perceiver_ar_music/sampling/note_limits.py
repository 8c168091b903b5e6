"""The limits of the note guards, taken from the data a checkpoint was trained on.

`note_limits` reads the training pieces once (at the start of training) and gives the maximum
note duration D and polyphony P that `constraints.NoteRules` enforces while sampling; they are
stored in each checkpoint's meta.json (`note_limits`) and read back by `NoteLimits.from_meta`.
Pure numpy, so the CLI can show the fallbacks without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from perceiver_ar_music.data.vocab import EventVocab

# Limits for checkpoints trained before note limits were stored with them.
FALLBACK_MAX_NOTE_SECONDS = 8.0
FALLBACK_MAX_POLYPHONY = 16
# The percentiles of the training data that set the limits.
NOTE_SECONDS_PERCENTILE = 99.0
POLYPHONY_PERCENTILE = 99.9


@dataclass(frozen=True)
class NoteLimits:
    """The guards' default limits for a checkpoint."""

    max_note_seconds: float = FALLBACK_MAX_NOTE_SECONDS
    max_polyphony: int = FALLBACK_MAX_POLYPHONY

    @classmethod
    def from_meta(cls, meta: dict) -> "NoteLimits":
        """The limits stored in a checkpoint's meta (`note_limits`), else the fallbacks."""
        stored = meta.get("note_limits") or {}
        return cls(
            max_note_seconds=float(stored.get("max_note_seconds", FALLBACK_MAX_NOTE_SECONDS)),
            max_polyphony=int(stored.get("max_polyphony", FALLBACK_MAX_POLYPHONY)),
        )


def note_limits(pieces: Iterable[np.ndarray], vocab: EventVocab) -> dict[str, float | int]:
    """Guard limits and the figures behind them, from the id sequences of training pieces.

    max_note_seconds: the NOTE_SECONDS_PERCENTILE of note durations; max_polyphony: the
    POLYPHONY_PERCENTILE of the number of notes sounding just after each onset (the new note
    included, so a cap of P lets a chord reach P notes).
    """
    from perceiver_ar_music.data.events import END, START, ids_to_note_steps

    durations, counts = [], []
    for ids in pieces:
        notes = ids_to_note_steps(ids, vocab)
        if not len(notes):
            continue
        start, end = notes[:, START], notes[:, END]
        durations.append(end - start)
        starts_sorted, ends_sorted = np.sort(start), np.sort(end)
        # at onset s: notes started at or before s, minus those ended at or before s (zero-length
        # notes at s count as ended, the rest sound)
        counts.append(np.searchsorted(starts_sorted, start, "right") - np.searchsorted(ends_sorted, start, "right"))
    if not durations:
        raise ValueError("no notes in the training pieces")
    seconds = np.concatenate(durations) * vocab.seconds_per_step
    sounding = np.concatenate(counts)
    return {
        "max_note_seconds": round(float(np.percentile(seconds, NOTE_SECONDS_PERCENTILE)), 2),
        "max_polyphony": int(np.ceil(np.percentile(sounding, POLYPHONY_PERCENTILE))),
        "note_seconds_p50": round(float(np.percentile(seconds, 50)), 3),
        "note_seconds_p99": round(float(np.percentile(seconds, 99)), 3),
        "note_seconds_p99_9": round(float(np.percentile(seconds, 99.9)), 3),
        "polyphony_p50": float(np.percentile(sounding, 50)),
        "polyphony_p99_9": float(np.percentile(sounding, 99.9)),
        "notes": int(len(seconds)),
    }
