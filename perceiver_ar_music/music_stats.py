"""Summary statistics of a note list, to compare generated music with the training data.

Notes are the (N, 4) float arrays of ``events.ids_to_notes``: pitch, start, end, velocity, in
seconds. The span of the music runs from its first onset to its last release. A note sounds on
[start, end): one ending exactly when another starts does not overlap it, and a zero-length
note counts as a note but never sounds. Standard deviations are population ones (ddof=0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MusicStats:
    """Statistics of one note list (all zero for an empty one)."""

    duration_s: float  # first onset to last release
    note_count: int
    notes_per_second: float  # note_count / duration_s
    pitch_min: int
    pitch_max: int
    pitch_mean: float
    pitch_std: float
    note_length_mean_s: float
    velocity_mean: float
    velocity_std: float
    mean_polyphony: float  # notes sounding, time-weighted over the time when any sounds
    max_polyphony: int
    silence_fraction: float  # of duration_s with no note sounding

    def as_dict(self) -> dict[str, float | int]:
        """Plain JSON-ready values."""
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(label, formatted value) pairs for pages and model cards."""
        return [
            ("duration", f"{self.duration_s:.1f} s"),
            ("notes", f"{self.note_count}"),
            ("density", f"{self.notes_per_second:.2f} notes/s"),
            ("pitch range", f"{self.pitch_min}–{self.pitch_max}"),
            ("pitch mean ± sd", f"{self.pitch_mean:.1f} ± {self.pitch_std:.1f}"),
            ("mean note length", f"{self.note_length_mean_s:.2f} s"),
            ("velocity mean ± sd", f"{self.velocity_mean:.1f} ± {self.velocity_std:.1f}"),
            ("polyphony mean / max", f"{self.mean_polyphony:.2f} / {self.max_polyphony}"),
            ("silence", f"{100 * self.silence_fraction:.1f} %"),
        ]


def music_stats(notes: np.ndarray) -> MusicStats:
    """The statistics of `notes` (see the module docstring)."""
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(notes).all() or (notes[:, 2] < notes[:, 1]).any():
        raise ValueError("notes must be finite with end >= start")
    if not len(notes):
        return MusicStats(0.0, 0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    pitch, start, end, velocity = notes.T
    duration = float(end.max() - start.min())
    sounding, weighted, max_polyphony = polyphony(start, end)
    return MusicStats(
        duration_s=duration,
        note_count=len(notes),
        notes_per_second=len(notes) / duration if duration > 0 else 0.0,
        pitch_min=int(pitch.min()),
        pitch_max=int(pitch.max()),
        pitch_mean=float(pitch.mean()),
        pitch_std=float(pitch.std()),
        note_length_mean_s=float((end - start).mean()),
        velocity_mean=float(velocity.mean()),
        velocity_std=float(velocity.std()),
        mean_polyphony=weighted / sounding if sounding > 0 else 0.0,
        max_polyphony=max_polyphony,
        silence_fraction=1.0 - sounding / duration if duration > 0 else 1.0,
    )


def polyphony(start: np.ndarray, end: np.ndarray) -> tuple[float, float, int]:
    """Sweep over note boundaries: (seconds when any note sounds, integral of the number of
    sounding notes over time, the largest number sounding together for a positive time)."""
    times = np.concatenate([start, end])
    change = np.concatenate([np.ones(len(start)), -np.ones(len(end))])
    order = np.argsort(times, kind="stable")
    times, count = times[order], np.cumsum(change[order])
    gaps = np.diff(times)  # count[i] notes sound during (times[i], times[i + 1])
    active = gaps > 0  # the counts between events of one instant are partial: skipped
    sounding = float(gaps[active & (count[:-1] > 0)].sum())
    weighted = float((gaps[active] * count[:-1][active]).sum())
    max_polyphony = int(count[:-1][active].max()) if active.any() else 0
    return sounding, weighted, max_polyphony
