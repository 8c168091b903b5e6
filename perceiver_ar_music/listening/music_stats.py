"""Statistics of note lists, to compare generated music with its primer and the training data.

Notes are the (N, 4) float arrays of ``events.ids_to_notes``: pitch, start, end, velocity, in
seconds. The span of the music runs from its first onset to its last release. A note sounds on
[start, end): one ending exactly when another starts does not overlap it, and a zero-length
note counts as a note but never sounds. Standard deviations are population ones (ddof=0);
percentiles interpolate linearly between order statistics (numpy's default).

Three levels, one set of figures (``MusicStats``):

- ``music_stats(notes)``: a whole note list.
- ``windowed_stats(notes, window_s, start_s)``: consecutive windows of ``window_s`` seconds from
  ``start_s``. A note belongs to the window of its onset (counts, density, lengths, pitches,
  velocities); polyphony and silence are measured over the window's time span from every note
  sounding in it, also one struck in an earlier window. A window's ``duration_s`` is its span: the
  last one ends at the music's last release, so it may be shorter than ``window_s``.
- ``sample_report(notes, primer_notes, boundary_s)``: a generated sample, its primer and its
  continuation side by side (the primer over its own time, up to the boundary, though a note of it
  the continuation releases keeps its full length) and the continuation in windows from the boundary, optionally
  compared with reference figures (``reference_figures``: medians over the pieces of a data set).

How far a sample is from the reference (``compare``): per figure the ratio value / reference
median, and the figures that fall outside the reference's band, which is the 10th to 90th
percentile of that figure over the reference pieces (what one piece in five falls outside).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

import numpy as np

LONG_NOTE_S = 4.0  # notes held longer than this count as long (the drones)
TIME_TOLERANCE_S = 1e-6  # lengths are grid steps x 0.01 s in floating point: 400 steps may read 4.000000000000001
DEFAULT_WINDOW_S = 30.0
RESTRIKE_GAP_S = 0.25  # a note struck this soon after the same pitch's last release re-strikes it
BAND_PERCENTILES = (10.0, 90.0)  # the reference band of ``compare``
STATS_FORMAT = "perceiver-ar-music/stats"

# The figures compared with a reference and tracked over windows: (key, short label, format).
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("notes_per_second", "notes/s", "{:.2f}"),
    ("mean_polyphony", "poly mean", "{:.2f}"),
    ("max_polyphony", "poly max", "{:.0f}"),
    ("note_length_p50_s", "len p50 s", "{:.2f}"),
    ("note_length_p90_s", "len p90 s", "{:.2f}"),
    ("note_length_p99_s", "len p99 s", "{:.2f}"),
    ("long_note_fraction", f">{LONG_NOTE_S:g} s %", "pct"),
    ("pitch_mean", "pitch mean", "{:.1f}"),
    ("pitch_range", "pitch range", "{:.0f}"),
    ("pitch_std", "pitch sd", "{:.1f}"),
    ("velocity_mean", "vel mean", "{:.0f}"),
    ("velocity_std", "vel sd", "{:.1f}"),
    ("silence_fraction", "silence %", "pct"),
    ("restrike_fraction", "re-struck %", "pct"),
)
FIGURE_KEYS = tuple(key for key, _, _ in FIGURES)
FIGURE_LABELS = {key: label for key, label, _ in FIGURES}
# What each short label means, in words (the legend of every table of figures).
FIGURE_MEANINGS: dict[str, str] = {
    "notes_per_second": "notes struck per second",
    "mean_polyphony": "notes sounding together, on average over the time any sounds (the voices)",
    "max_polyphony": "the most notes sounding together",
    "note_length_p50_s": "the median note length, in seconds",
    "note_length_p90_s": "90% of the notes are at most this long (seconds)",
    "note_length_p99_s": "99% of the notes are at most this long (seconds)",
    "long_note_fraction": f"the share of notes held longer than {LONG_NOTE_S:g} s",
    "pitch_mean": "the mean pitch as a MIDI number (60 is middle C)",
    "pitch_range": "lowest to highest note, in semitones",
    "pitch_std": "how far pitches spread around their mean (standard deviation, semitones)",
    "velocity_mean": "the mean loudness, MIDI velocity 1-127",
    "velocity_std": "how much the loudness varies (standard deviation of the velocity)",
    "silence_fraction": "the share of the time with no note sounding",
    "restrike_fraction": f"the share of notes struck within {RESTRIKE_GAP_S:g} s of the same pitch's last release "
                         "(repeated notes: a texture of one pitch struck over and over is high)",
}


POLYPHONY_KEYS = ("mean_polyphony", "max_polyphony", "silence_fraction")  # defined without onsets too


def formatted_figures(values: Mapping[str, object]) -> list[str]:
    """FIGURES of a stats dict as the tables show them; '-' for figures of the notes struck when
    there are none (a window where notes only ring on)."""
    no_notes = values.get("note_count") == 0
    return [
        format_figure(key, None if no_notes and key not in POLYPHONY_KEYS else values.get(key))  # type: ignore[arg-type]
        for key in FIGURE_KEYS
    ]


def format_figure(key: str, value: float | None) -> str:
    """One figure as the tables show it ('-' for a missing value)."""
    if value is None:
        return "-"
    fmt = {k: f for k, _, f in FIGURES}.get(key, "{:.3g}")
    return f"{100 * value:.1f}" if fmt == "pct" else fmt.format(value)


@dataclass(frozen=True)
class MusicStats:
    """Statistics of one note list (all zero for an empty one)."""

    duration_s: float  # first onset to last release (a window's span for a window)
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
    pitch_range: int = 0  # pitch_max - pitch_min
    note_length_p50_s: float = 0.0
    note_length_p90_s: float = 0.0
    note_length_p99_s: float = 0.0
    note_length_max_s: float = 0.0
    long_note_fraction: float = 0.0  # share of notes longer than LONG_NOTE_S
    restrike_fraction: float = 0.0  # share of notes struck within RESTRIKE_GAP_S of their pitch's last release

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
            (
                "note length p50 / p90 / p99",
                f"{self.note_length_p50_s:.2f} / {self.note_length_p90_s:.2f} / {self.note_length_p99_s:.2f} s",
            ),
            (f"notes over {LONG_NOTE_S:g} s", f"{100 * self.long_note_fraction:.1f} %"),
            ("velocity mean ± sd", f"{self.velocity_mean:.1f} ± {self.velocity_std:.1f}"),
            ("polyphony mean / max", f"{self.mean_polyphony:.2f} / {self.max_polyphony}"),
            ("silence", f"{100 * self.silence_fraction:.1f} %"),
            ("re-struck notes", f"{100 * self.restrike_fraction:.1f} %"),
        ]


def checked_notes(notes: np.ndarray) -> np.ndarray:
    """`notes` as a float64 (N, 4) array; ValueError unless finite with end >= start."""
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(notes).all() or (notes[:, 2] < notes[:, 1]).any():
        raise ValueError("notes must be finite with end >= start")
    return notes


def music_stats(notes: np.ndarray) -> MusicStats:
    """The statistics of `notes` over their own span (see the module docstring)."""
    notes = checked_notes(notes)
    if not len(notes):
        return MusicStats(0.0, 0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0)
    return _span_stats(notes, float(notes[:, 1].min()), float(notes[:, 2].max()), notes)


def _span_stats(notes: np.ndarray, span_start: float, span_end: float, sounding: np.ndarray) -> MusicStats:
    """Figures of `notes` over [span_start, span_end]; polyphony and silence from `sounding`
    (a superset of `notes`) clipped to that span."""
    duration = span_end - span_start
    start = np.clip(sounding[:, 1], span_start, span_end)
    end = np.clip(sounding[:, 2], span_start, span_end)
    sounding_s, weighted, max_polyphony = polyphony(start, end)
    shared = dict(
        duration_s=duration,
        mean_polyphony=weighted / sounding_s if sounding_s > 0 else 0.0,
        max_polyphony=max_polyphony,
        # (never below 0: a span sounding throughout may sum to a hair over its duration, shown as -0.0)
        silence_fraction=max(1.0 - sounding_s / duration, 0.0) if duration > 0 else 1.0,
    )
    if not len(notes):
        return MusicStats(note_count=0, notes_per_second=0.0, pitch_min=0, pitch_max=0, pitch_mean=0.0,
                          pitch_std=0.0, note_length_mean_s=0.0, velocity_mean=0.0, velocity_std=0.0, **shared)
    pitch, velocity = notes[:, 0], notes[:, 3]
    length = notes[:, 2] - notes[:, 1]
    p50, p90, p99 = (float(v) for v in np.percentile(length, [50, 90, 99]))
    return MusicStats(
        note_count=len(notes),
        notes_per_second=len(notes) / duration if duration > 0 else 0.0,
        pitch_min=int(pitch.min()),
        pitch_max=int(pitch.max()),
        pitch_mean=float(pitch.mean()),
        pitch_std=float(pitch.std()),
        note_length_mean_s=float(length.mean()),
        velocity_mean=float(velocity.mean()),
        velocity_std=float(velocity.std()),
        pitch_range=int(pitch.max() - pitch.min()),
        note_length_p50_s=p50,
        note_length_p90_s=p90,
        note_length_p99_s=p99,
        note_length_max_s=float(length.max()),
        long_note_fraction=float(np.count_nonzero(length > LONG_NOTE_S + TIME_TOLERANCE_S) / len(notes)),
        restrike_fraction=restrike_fraction(notes),
        **shared,
    )


def restrike_fraction(notes: np.ndarray) -> float:
    """The share of `notes` struck within RESTRIKE_GAP_S after a note of the same pitch among them
    was released (0 for none)."""
    if not len(notes):
        return 0.0
    order = np.lexsort((notes[:, 1], notes[:, 0]))  # by pitch, then onset
    pitch, start, end = notes[order, 0], notes[order, 1], notes[order, 2]
    again = (pitch[1:] == pitch[:-1]) & (start[1:] - end[:-1] < RESTRIKE_GAP_S - TIME_TOLERANCE_S)
    return float(np.count_nonzero(again) / len(notes))


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


# ----------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowStats:
    """One window: [start_s, end_s) of the music and its figures (``stats.duration_s`` is the span)."""

    index: int
    start_s: float
    end_s: float
    stats: MusicStats

    def label(self, dash: str = "-") -> str:
        """Its span for tables, to a tenth of a second ('10-40 s', '40-40.3 s')."""
        return f"{self.start_s:.1f}".removesuffix(".0") + dash + f"{self.end_s:.1f}".removesuffix(".0") + " s"

    def as_dict(self) -> dict[str, float | int]:
        return {"index": self.index, "start_s": self.start_s, "end_s": self.end_s, **self.stats.as_dict()}


def windowed_stats(notes: np.ndarray, window_s: float = DEFAULT_WINDOW_S, start_s: float | None = None) -> list[WindowStats]:
    """The notes cut into windows of `window_s` seconds from `start_s` (default: the first onset)
    up to the last release (see the module docstring); no windows for no notes."""
    if not window_s > 0 or not math.isfinite(window_s):
        raise ValueError(f"window_s must be a positive number of seconds, not {window_s}")
    notes = checked_notes(notes)
    if not len(notes):
        return []
    origin = float(notes[:, 1].min()) if start_s is None else float(start_s)
    music_end = max(float(notes[:, 2].max()), origin)
    count = max(1, math.ceil((music_end - origin) / window_s - 1e-9))
    windows = []
    for index in range(count):
        begin = origin + index * window_s
        stop = begin + window_s
        last = index == count - 1
        end = min(stop, music_end) if not last else music_end
        windows.append(WindowStats(index, begin, end, span_stats(notes, begin, end, open_end=last)))
    return windows


def span_stats(notes: np.ndarray, begin_s: float, end_s: float, *, open_end: bool = False) -> MusicStats:
    """The figures of the span [begin_s, end_s) of `notes` (checked, see `checked_notes`) as a
    window reads them: the notes struck in the span (with `open_end`, also every later one),
    polyphony and silence from every note sounding in it."""
    onset = notes[:, 1]
    struck = (onset >= begin_s) & ((onset < end_s) | open_end)
    return _span_stats(notes[struck], begin_s, end_s, notes)


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """The share of notes on each of the 12 pitch classes (C first); zeros for no notes."""
    counts = np.bincount(np.asarray(notes[:, 0], dtype=np.int64) % 12, minlength=12).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def median_or_none(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none): a figure over
    samples, some of which lack it (a sample too short for a drift window, a sample without a primer)."""
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


# ----------------------------------------------------------------------------- reference figures


@dataclass(frozen=True)
class ReferenceFigures:
    """Per figure, the median and the band (10th/90th percentile) over a data set's pieces."""

    pieces: int
    median: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    source: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def reference_figures(stats: Iterable[MusicStats], source: str = "") -> ReferenceFigures:
    """Medians and bands of FIGURES over pieces (pieces without notes are left out)."""
    rows = [s for s in stats if s.note_count > 0]
    if not rows:
        raise ValueError("no reference pieces with notes")
    table = np.array([[getattr(s, key) for key in FIGURE_KEYS] for s in rows], dtype=np.float64)
    low, median, high = np.percentile(table, [BAND_PERCENTILES[0], 50.0, BAND_PERCENTILES[1]], axis=0)
    as_map = lambda values: {key: float(v) for key, v in zip(FIGURE_KEYS, values)}  # noqa: E731
    return ReferenceFigures(len(rows), as_map(median), as_map(low), as_map(high), source)


@dataclass(frozen=True)
class Comparison:
    """How far one note list is from reference figures."""

    ratio: dict[str, float | None]  # value / reference median; None where the median is 0
    outside: list[str]  # figures outside the reference band [low, high]

    def as_dict(self) -> dict[str, object]:
        return {"ratio": dict(self.ratio), "outside": list(self.outside)}


def compare(stats: MusicStats, reference: ReferenceFigures) -> Comparison:
    """Ratios to the reference medians and the figures outside its band (module docstring)."""
    ratio: dict[str, float | None] = {}
    outside = []
    for key in FIGURE_KEYS:
        value, median = float(getattr(stats, key)), reference.median[key]
        ratio[key] = value / median if median != 0 else None
        if not reference.low[key] <= value <= reference.high[key]:
            outside.append(key)
    return Comparison(ratio, outside)


# ----------------------------------------------------------------------------- generated samples


def full_windows(windows: list[WindowStats], window_s: float) -> list[WindowStats]:
    """The windows that span enough music to compare: all but a last one shorter than half of
    `window_s` (the tail where the last notes ring out)."""
    return [w for i, w in enumerate(windows) if i < len(windows) - 1 or w.end_s - w.start_s >= window_s / 2]


def shown_windows(windows: list[WindowStats], window_s: float) -> list[WindowStats]:
    """The windows a page shows: `full_windows`, or all when the music is shorter than that
    (a lone short window is the whole continuation)."""
    return full_windows(windows, window_s) or windows


def drift(windows: list[WindowStats], window_s: float) -> dict[str, float | None]:
    """Per figure, the last window's value / the first window's (None where the first is 0 or
    there is only one window). The last window counts only if it spans at least half of
    `window_s`; otherwise the one before it is used."""
    full = full_windows(windows, window_s)
    if len(full) < 2:
        return {key: None for key in FIGURE_KEYS}
    first, last = full[0].stats, full[-1].stats
    return {
        key: float(getattr(last, key)) / float(getattr(first, key)) if getattr(first, key) else None
        for key in FIGURE_KEYS
    }


@dataclass(frozen=True)
class SampleReport:
    """A generated sample: primer and continuation side by side, the continuation in windows."""

    primer_notes: int
    boundary_s: float
    window_s: float
    primer: MusicStats | None  # None when the sample has no primer notes
    continuation: MusicStats | None  # None when nothing was generated
    windows: list[WindowStats]  # of the continuation, from boundary_s
    reference: ReferenceFigures | None = None
    vs_reference: dict[str, Comparison] = field(default_factory=dict)  # "primer", "continuation"
    memorization: Mapping[str, object] | None = None  # see memorization.MemorizationReport
    # per window, the figures (by MusicStats field) texture-keeping sampling held it to
    targets: list[dict[str, float]] = field(default_factory=list)
    target_source: str = ""

    @property
    def drift(self) -> dict[str, float | None]:
        """Last window / first window of the continuation, per figure (see ``drift``)."""
        return drift(self.windows, self.window_s)

    def vs_primer(self) -> dict[str, float | None]:
        """Per figure, the continuation's value / the primer's (None where not defined)."""
        if self.primer is None or self.continuation is None:
            return {key: None for key in FIGURE_KEYS}
        return {
            key: float(getattr(self.continuation, key)) / float(getattr(self.primer, key))
            if getattr(self.primer, key) else None
            for key in FIGURE_KEYS
        }

    def as_dict(self) -> dict[str, object]:
        """Everything as plain JSON-ready values."""
        return {
            "primer_notes": self.primer_notes,
            "boundary_s": self.boundary_s,
            "window_s": self.window_s,
            "primer": self.primer.as_dict() if self.primer else None,
            "continuation": self.continuation.as_dict() if self.continuation else None,
            "continuation_vs_primer": self.vs_primer(),
            "windows": [{**w.as_dict(), **({"target": self.targets[i]} if i < len(self.targets) else {})}
                        for i, w in enumerate(self.windows)],
            "texture_target": self.target_source or None,
            "drift": self.drift,
            "reference": self.reference.as_dict() if self.reference else None,
            "vs_reference": {part: c.as_dict() for part, c in self.vs_reference.items()},
            "memorization": dict(self.memorization) if self.memorization is not None else None,
        }


def _primer_stats(primer: np.ndarray, boundary_s: float) -> MusicStats:
    """The primer's figures over its own time, from its first onset to the boundary. A primer note
    still sounding there counts up to the boundary (the continuation releases it, differently in
    every take): so a primer's figures are the same in every take made from it."""
    start = float(primer[:, 1].min())
    if boundary_s <= start:
        return _span_stats(primer, start, float(primer[:, 2].max()), primer)
    primer = primer.copy()
    primer[:, 2] = np.maximum(np.minimum(primer[:, 2], boundary_s), primer[:, 1])
    return _span_stats(primer, start, float(boundary_s), primer)


def _continuation_stats(notes: np.ndarray, primer_notes: int, boundary_s: float) -> MusicStats:
    """The continuation's figures over its own time: from the boundary (the start of the new
    music, also when its first note comes later) to its last release, with polyphony from every
    note sounding then (a primer note ringing on counts)."""
    continuation = notes[primer_notes:]
    begin = float(boundary_s) if primer_notes else float(continuation[:, 1].min())
    return _span_stats(continuation, begin, max(float(continuation[:, 2].max()), begin), notes)


def sample_report(
    notes: np.ndarray,
    primer_notes: int,
    boundary_s: float,
    window_s: float = DEFAULT_WINDOW_S,
    reference: ReferenceFigures | None = None,
    memorization: Mapping[str, object] | None = None,
) -> SampleReport:
    """The report of one sample: `notes` in onset order, the first `primer_notes` of them the
    primer's, the continuation starting at `boundary_s` (``continuation.sample_notes`` gives all
    three). Windows of `window_s` seconds start at the boundary."""
    notes = checked_notes(notes)
    if not 0 <= primer_notes <= len(notes):
        raise ValueError(f"primer_notes must be in 0..{len(notes)}, not {primer_notes}")
    primer, continuation = notes[:primer_notes], notes[primer_notes:]
    primer_stats = _primer_stats(primer, boundary_s) if len(primer) else None
    continuation_stats = _continuation_stats(notes, primer_notes, boundary_s) if len(continuation) else None
    vs_reference = {}
    if reference is not None:
        for part, stats in (("primer", primer_stats), ("continuation", continuation_stats)):
            if stats is not None:
                vs_reference[part] = compare(stats, reference)
    return SampleReport(
        primer_notes=primer_notes,
        boundary_s=float(boundary_s),
        window_s=float(window_s),
        primer=primer_stats,
        continuation=continuation_stats,
        windows=windowed_stats(continuation, window_s, start_s=boundary_s),
        reference=reference,
        vs_reference=vs_reference,
        memorization=memorization,
    )


def write_stats_json(
    path: str | os.PathLike[str], reports: Mapping[str, SampleReport], extra: Mapping[str, object] | None = None
) -> None:
    """Write ``{"format", "version", "details": extra, "samples": {name: report}}`` atomically."""
    from perceiver_ar_music.runtime.atomic import write_json_atomic

    payload = {
        "format": STATS_FORMAT,
        "version": 1,
        "details": dict(extra or {}),
        "samples": {name: report.as_dict() for name, report in reports.items()},
    }
    write_json_atomic(path, payload)
