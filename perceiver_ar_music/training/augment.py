"""Token-level data augmentation: transposition, time stretch and velocities of performance-event ids.

Both work directly on id sequences (any crop of a piece, with or without BOS/EOS), keep the order
of all non-time-shift tokens, and are deterministic given a ``numpy.random.Generator``.

- Transposition by ``k`` semitones moves every NoteOn/NoteOff id by ``k``. The random ``k`` is
  drawn uniformly from the shifts in ``-max_transpose..max_transpose`` that keep every note of the
  sequence inside the vocabulary's pitch range, so no note is ever dropped or wrapped (a window
  already near the top of the keyboard is only transposed down, and so on; 0 is always allowed).
- Time stretch by a factor ``f`` multiplies the absolute time of every token (measured from the
  start of the sequence), rounds it to the grid, and re-differences: each time is off by at most
  half a step (5 ms) with no drift. Gaps are re-split into maximal shifts (100, 100, ..., rest),
  so the sequence length changes.
- Velocity variation (off unless ``velocity_windows > 0``) moves every Velocity token of a share
  of the windows by one random shift per window plus normal noise per note (MIDI units, clipped
  to 1..127, then the nearest bin): same length, every other id kept. It is for corpora that
  carry no dynamics (score-derived MIDI plays every note at one velocity), so that a primer with
  dynamics, as a user's own MIDI has, is not out of distribution. The windows left alone keep the
  corpus' own velocities, so a model still predicts them when its context shows them.
- Performance-like timing and dynamics (off unless ``perform_windows > 0``) make a share of
  score-derived windows look played (``Performance``, ``perform``): a tempo that drifts within a
  phrase (a smooth, monotone time warp), onset jitter per note (its NoteOff moves with it, so
  durations keep), pedal-like lengthening (notes held on to the next pedal release, never into
  the next note of their pitch) and a dynamic arc over the phrase on the velocities. Every note
  is kept, each NoteOn keeps its Velocity right after it, and BOS/EOS stay first/last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_ar_music.data.events import as_id_array, encode_timed_events, nearest_velocity_ids, tables
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, EventVocab


@dataclass(frozen=True)
class Performance:
    """The drawn performance of one window (amounts in grid steps and MIDI units): see `perform`."""

    seed: int  # per-note draws (onset jitter, pedal releases)
    onset_jitter: float = 0.0  # std of each note's timing, steps (cut at 3 std)
    tempo_drift: float = 0.0  # largest relative tempo change: the tempo is 1 + drift * sin(...)
    phrase: float = 600.0  # steps per tempo / dynamics cycle
    tempo_phase: float = 0.0
    velocity_arc: float = 0.0  # MIDI units: the velocities follow arc * sin(...) over the phrase
    velocity_phase: float = 0.0
    pedal_hold: float = 0.0  # at most this many steps added to a note by the pedal (0: no pedal)
    pedal_every: tuple[float, float] = (50.0, 200.0)  # steps between pedal releases, drawn uniformly


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation of each training window."""

    max_transpose: int = 3  # semitones, both ways
    min_stretch: float = 0.95
    max_stretch: float = 1.05
    stretch_windows: float = 1.0  # share of windows that are stretched; the rest keep their time
    velocity_windows: float = 0.0  # share of windows whose velocities are varied (0: never)
    max_velocity_shift: int = 24  # MIDI velocity units, both ways: one shift per varied window
    velocity_noise: float = 12.0  # MIDI velocity units: std of each note's own change
    perform_windows: float = 0.0  # share of windows made to look played (`Performance`; 0: never)
    onset_jitter: float = 0.02  # seconds: std of a played note's timing
    tempo_drift: float = 0.08  # a played window's tempo moves up to this fraction within a phrase
    velocity_arc: float = 16.0  # MIDI units: the dynamic arc over a played phrase, both ways
    pedal_hold: float = 1.0  # seconds a played note may be held longer by the pedal-like lengthening

    def __post_init__(self) -> None:
        if self.max_transpose < 0:
            raise ValueError(f"max_transpose must be >= 0, got {self.max_transpose}")
        if not 0 < self.min_stretch <= self.max_stretch:
            raise ValueError(f"need 0 < min_stretch <= max_stretch, got {self.min_stretch}, {self.max_stretch}")
        if not 0 <= self.stretch_windows <= 1:
            raise ValueError(f"need stretch_windows in [0, 1], got {self.stretch_windows}")
        if not (0 <= self.velocity_windows <= 1 and 0 <= self.max_velocity_shift <= 127 and 0 <= self.velocity_noise <= 127):
            raise ValueError("need velocity_windows in [0, 1], max_velocity_shift and velocity_noise in [0, 127]")
        if not (0 <= self.perform_windows <= 1 and 0 <= self.onset_jitter <= 1 and 0 <= self.tempo_drift < 1
                and 0 <= self.velocity_arc <= 127 and 0 <= self.pedal_hold <= 10):
            raise ValueError("need perform_windows in [0, 1], onset_jitter in [0, 1] s, tempo_drift in [0, 1), "
                             "velocity_arc in [0, 127] and pedal_hold in [0, 10] s")

    def sample_stretch(self, rng: np.random.Generator) -> float:
        """A stretch factor drawn uniformly from [min_stretch, max_stretch], or (outside a
        `stretch_windows` share of the calls) 1.0. Draws the same as before when every window is
        stretched, so runs without the option are unchanged."""
        if self.stretch_windows < 1 and rng.random() >= self.stretch_windows:
            return 1.0
        return float(rng.uniform(self.min_stretch, self.max_stretch))

    def sample_transpose(self, ids: np.ndarray, vocab: EventVocab, rng: np.random.Generator) -> int:
        """A transposition drawn uniformly from the allowed shifts for `ids` (see the module doc)."""
        low, high = transpose_bounds(ids, vocab, self.max_transpose)
        return int(rng.integers(low, high + 1))


    def sample_performance(self, vocab: EventVocab, rng: np.random.Generator) -> Performance | None:
        """A drawn `Performance` in a `perform_windows` share of the calls, else None. Draws
        nothing from `rng` when `perform_windows` is 0, so other draws are unchanged."""
        if self.perform_windows == 0 or rng.random() >= self.perform_windows:
            return None
        steps = 1.0 / vocab.seconds_per_step
        return Performance(
            seed=int(rng.integers(2**63)),
            onset_jitter=self.onset_jitter * steps,
            tempo_drift=float(rng.uniform(0, self.tempo_drift)),
            phrase=float(rng.uniform(4.0, 12.0)) * steps,
            tempo_phase=float(rng.uniform(0, 2 * np.pi)),
            velocity_arc=float(rng.uniform(0, self.velocity_arc)),
            velocity_phase=float(rng.uniform(0, 2 * np.pi)),
            pedal_hold=self.pedal_hold * steps if rng.random() < 0.5 else 0.0,  # half the played windows pedal
            pedal_every=(0.5 * steps, 2.0 * steps),
        )

    def vary_velocities(self, ids: np.ndarray, vocab: EventVocab, rng: np.random.Generator) -> np.ndarray:
        """`ids`, or (in a `velocity_windows` share of the calls) `ids` with varied velocities.
        Draws nothing from `rng` when `velocity_windows` is 0, so other draws are unchanged."""
        if self.velocity_windows == 0 or rng.random() >= self.velocity_windows:
            return ids
        shift = int(rng.integers(-self.max_velocity_shift, self.max_velocity_shift + 1))
        return jitter_velocities(ids, shift, self.velocity_noise, vocab, rng)


def jitter_velocities(
    ids: np.ndarray, shift: float, noise: float, vocab: EventVocab, rng: np.random.Generator
) -> np.ndarray:
    """`ids` with every Velocity token moved by `shift` plus normal noise of std `noise` per token
    (MIDI units, clipped to 1..127, then the nearest bin); every other id and the length kept."""
    table = tables(vocab)
    array = np.asarray(ids)
    ids64 = as_id_array(array)
    is_velocity = table.kinds_of(ids64) == VELOCITY
    values = table.velocity[ids64[is_velocity]] + shift + rng.normal(0.0, noise, int(is_velocity.sum()))
    out = ids64.copy()
    out[is_velocity] = nearest_velocity_ids(np.clip(np.rint(values), 1, 127).astype(np.int64), table)
    return out.astype(_result_dtype(array), copy=False)


def tempo_warp(steps: np.ndarray, drift: float, phrase: float, phase: float) -> np.ndarray:
    """Times (steps) played at the tempo ``1 + drift * sin(2 pi t / phrase + phase)``: the
    integral of that rate, so monotone for drift < 1, the identity for drift 0."""
    steps = np.asarray(steps, dtype=np.float64)
    if drift == 0:
        return steps
    omega = 2 * np.pi / phrase
    return steps + drift / omega * (np.cos(phase) - np.cos(omega * steps + phase))


def perform(ids: np.ndarray, performance: Performance, vocab: EventVocab) -> np.ndarray:
    """`ids` played as `performance` draws it (module doc); every non-shift id kept except the
    velocities' values, each NoteOn's Velocity still right after it, no note of a pitch moved into
    the next note of that pitch."""
    p = performance
    table = tables(vocab)
    array = np.asarray(ids)
    ids64 = as_id_array(array).reshape(-1)
    kind = table.kinds_of(ids64)
    is_shift = kind == TIME_SHIFT
    clock = np.cumsum(np.where(is_shift, table.shift_steps[np.where(is_shift, ids64, 0)], 0))
    end = int(np.floor(tempo_warp(np.array([clock[-1] if len(clock) else 0]), p.tempo_drift, p.phrase, p.tempo_phase)[0] + 0.5))
    events = np.flatnonzero(~is_shift)
    event_ids, event_kind, original = ids64[events].copy(), kind[events], clock[events]
    rng = np.random.default_rng(p.seed)
    jitter = np.clip(rng.normal(0.0, 1.0, len(events)), -3, 3) * p.onset_jitter
    played = tempo_warp(original, p.tempo_drift, p.phrase, p.tempo_phase)
    times = np.clip(np.floor(played + np.where(event_kind == NOTE_ON, jitter, 0.0) + 0.5), 0, end).astype(np.int64)
    releases = _pedal_releases(end, p, rng)
    is_note = (event_kind == NOTE_ON) | (event_kind == NOTE_OFF)
    pitch = np.where(is_note, table.pitch[np.where(is_note, event_ids, 0)], -1)
    for note_pitch in np.unique(pitch[is_note]):  # each pitch's ons and offs, in their order
        order = np.flatnonzero(pitch == note_pitch)
        previous, opened = 0, None
        for position, index in enumerate(order):
            if event_kind[index] == NOTE_ON:
                times[index] = max(times[index], previous)  # after the pitch's last release
                opened = index
            else:
                moved = played[index] + (jitter[opened] if opened is not None else 0.0)  # the note's own shift
                held = np.floor(_held_until(moved, releases, p.pedal_hold) + 0.5)
                cap = times[order[position + 1]] if position + 1 < len(order) else end  # not into the next note
                sounded = opened is not None and original[index] > original[opened]
                times[index] = min(max(min(held, cap), previous + sounded), end)  # a sounding note keeps a step
                opened = None
            previous = times[index]
    after_on = np.zeros(len(events), dtype=bool)
    after_on[1:] = (event_kind[:-1] == NOTE_ON) & (event_kind[1:] == VELOCITY)
    times[after_on] = times[np.flatnonzero(after_on) - 1]  # a Velocity stays with its NoteOn
    if p.velocity_arc:
        arc = p.velocity_arc * np.sin(2 * np.pi * original[after_on] / p.phrase + p.velocity_phase)
        values = np.clip(np.rint(table.velocity[event_ids[after_on]] + arc), 1, 127).astype(np.int64)
        event_ids[after_on] = nearest_velocity_ids(values, table)
    order = np.lexsort((np.arange(len(events)), times))  # by time, ties in the original order
    out = encode_timed_events(event_ids[order], times[order], end, vocab)
    return out.astype(_result_dtype(array), copy=False)


def _pedal_releases(end: int, p: Performance, rng: np.random.Generator) -> np.ndarray:
    """The pedal's release times (steps) over a window that ends at `end`; none without pedal."""
    if p.pedal_hold <= 0:
        return np.empty(0)
    low, high = p.pedal_every
    gaps = rng.uniform(low, high, int(end / low) + 2)
    return rng.uniform(0, high) + np.cumsum(gaps)


def _held_until(release: float, releases: np.ndarray, hold: float) -> float:
    """A note released at `release` held on to the next pedal release, at most `hold` later."""
    if hold <= 0 or not len(releases):
        return release
    after = releases[np.searchsorted(releases, release)] if release <= releases[-1] else release
    return min(after, release + hold)


def _note_mask(ids: np.ndarray, vocab: EventVocab) -> np.ndarray:
    kind = tables(vocab).kinds_of(ids)
    return (kind == NOTE_ON) | (kind == NOTE_OFF)


def transpose_bounds(ids: np.ndarray, vocab: EventVocab, max_semitones: int) -> tuple[int, int]:
    """The range (low, high) of shifts within +-max_semitones that keep every note in range."""
    table = tables(vocab)
    ids = as_id_array(ids)
    pitches = table.pitch[ids[_note_mask(ids, vocab)]]
    if len(pitches) == 0:
        return -max_semitones, max_semitones
    low = max(-max_semitones, table.min_pitch - int(pitches.min()))
    high = min(max_semitones, table.max_pitch - int(pitches.max()))
    return low, high


def transpose(ids: np.ndarray, semitones: int, vocab: EventVocab) -> np.ndarray:
    """`ids` with every note moved by `semitones`; raises ValueError if a note leaves the range."""
    table = tables(vocab)
    array = np.asarray(ids)
    ids64 = as_id_array(array)
    is_note = _note_mask(ids64, vocab)
    moved = table.pitch[ids64[is_note]] + semitones
    if len(moved) and (moved.min() < table.min_pitch or moved.max() > table.max_pitch):
        raise ValueError(f"transposing by {semitones} moves notes outside {table.min_pitch}..{table.max_pitch}")
    out = ids64.copy()
    is_on = table.kind[ids64[is_note]] == NOTE_ON
    out[is_note] = np.where(is_on, table.note_on[moved], table.note_off[moved])
    return out.astype(_result_dtype(array), copy=False)


def time_stretch(ids: np.ndarray, factor: float, vocab: EventVocab) -> np.ndarray:
    """`ids` played `factor` times slower (factor > 1) or faster, on the same 10 ms grid."""
    if not factor > 0:
        raise ValueError(f"stretch factor must be > 0, got {factor}")
    array = np.asarray(ids)
    if factor == 1.0:
        return array.astype(_result_dtype(array), copy=True).reshape(-1)
    table = tables(vocab)
    ids64 = as_id_array(array)
    is_shift = table.kinds_of(ids64) == TIME_SHIFT
    steps = np.where(is_shift, table.shift_steps[np.where(is_shift, ids64, 0)], 0)
    clock = np.cumsum(steps)
    end = int(clock[-1]) if len(clock) else 0
    events = ~is_shift
    stretched = np.floor(clock[events] * factor + 0.5).astype(np.int64)
    stretched_end = int(np.floor(end * factor + 0.5))
    out = encode_timed_events(ids64[events], stretched, stretched_end, vocab)
    return out.astype(_result_dtype(array), copy=False)


def _result_dtype(array: np.ndarray) -> np.dtype:
    return array.dtype if np.issubdtype(array.dtype, np.integer) else np.dtype(np.int64)
