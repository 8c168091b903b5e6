"""Performance-event ids <-> notes, in pure numpy.

The token format is miditok MIDILike's, which the tokenizer produces:

- ``NoteOn_p`` starts a note and is followed by the ``Velocity_v`` token of that note
  (every note carries its own velocity token, right after its NoteOn);
- ``NoteOff_p`` ends the sounding note of pitch ``p``;
- ``TimeShift`` advances the clock by a whole number of grid steps (10 ms, at most 1 s each);
- at one instant the NoteOffs come first, then the (NoteOn, Velocity) pairs, both in note order.

``note_steps_and_open`` is THE note decoder, used by every command and by the tokenizer
(``ids_to_note_steps``, ``ids_to_notes`` and ``PerformanceTokenizer.decode_notes`` are views of
it). Its rule for any id sequence (it never raises):
a NoteOn takes the velocity of the Velocity token right after it, or else the last velocity
seen (``DEFAULT_VELOCITY`` before any); a NoteOn of a pitch already sounding ends the previous
note there; a NoteOff of a silent pitch is ignored; notes still sounding at the end are released
at the end time (the sum of all time shifts); PAD/BOS/EOS and ids outside the vocabulary are
ignored. Same-pitch notes therefore never overlap (the encoder's re-strike convention, so
encoding then decoding is the identity on encoded ids). Notes may have zero length (a NoteOff at
the instant of its NoteOn); the MIDI writers lengthen those (the tokenizer to one grid step).

Notes are float arrays of shape (N, 4) with columns ``PITCH, START, END, VELOCITY``
(times in seconds), in the order of their NoteOns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, SPECIAL, TIME_SHIFT, VELOCITY, EventVocab

PITCH, START, END, VELOCITY_COLUMN = range(4)
DEFAULT_VELOCITY = 64


@dataclass(frozen=True)
class VocabTables:
    """Numpy lookup tables of an EventVocab (built once per vocabulary, see ``tables``)."""

    kind: np.ndarray  # id -> kind code
    pitch: np.ndarray  # id -> pitch (-1 when not a note id)
    velocity: np.ndarray  # id -> MIDI velocity (-1 when not a velocity id)
    shift_steps: np.ndarray  # id -> grid steps (0 when not a time shift)
    note_on: np.ndarray  # pitch -> NoteOn id (-1 outside the vocabulary's pitch range)
    note_off: np.ndarray  # pitch -> NoteOff id
    shift: np.ndarray  # steps (1..max_shift) -> TimeShift id
    velocity_values: np.ndarray  # the velocity bins, ascending
    velocity_ids: np.ndarray  # the Velocity id of each bin
    midi_velocity_ids: np.ndarray  # MIDI velocity 0..127 -> Velocity id of the nearest bin
    min_pitch: int
    max_pitch: int
    max_shift: int

    @classmethod
    def from_vocab(cls, vocab: EventVocab) -> "VocabTables":
        max_shift = vocab.max_shift_steps
        if max_shift < 1 or sorted(vocab.shift_id) != list(range(1, max_shift + 1)):
            raise ValueError("the vocabulary needs TimeShift tokens for every step count 1..max")
        if not vocab.note_on_id or set(vocab.note_on_id) != set(vocab.note_off_id):
            raise ValueError("the vocabulary needs NoteOn and NoteOff tokens for the same pitches")
        note_on = np.full(128, -1, dtype=np.int64)
        note_off = np.full(128, -1, dtype=np.int64)
        for pitch, idx in vocab.note_on_id.items():
            note_on[pitch] = idx
            note_off[pitch] = vocab.note_off_id[pitch]
        shift = np.zeros(max_shift + 1, dtype=np.int64)
        for steps, idx in vocab.shift_id.items():
            shift[steps] = idx
        velocity = np.asarray(vocab.velocity, dtype=np.int64)
        velocity_ids = np.flatnonzero(np.asarray(vocab.kind) == VELOCITY)
        order = np.argsort(velocity[velocity_ids], kind="stable")
        values, velocity_ids = velocity[velocity_ids][order], velocity_ids[order]
        return cls(
            kind=np.asarray(vocab.kind, dtype=np.int8),
            pitch=np.asarray(vocab.pitch, dtype=np.int64),
            velocity=velocity,
            shift_steps=np.asarray(vocab.shift_steps, dtype=np.int64),
            note_on=note_on,
            note_off=note_off,
            shift=shift,
            velocity_values=values,
            velocity_ids=velocity_ids,
            midi_velocity_ids=_nearest_bins(np.arange(128), values, velocity_ids),
            min_pitch=min(vocab.note_on_id),
            max_pitch=max(vocab.note_on_id),
            max_shift=max_shift,
        )

    def kinds_of(self, ids: np.ndarray) -> np.ndarray:
        """Kind code of every id; ids outside the vocabulary count as SPECIAL."""
        inside = (ids >= 0) & (ids < len(self.kind))
        return np.where(inside, self.kind[np.where(inside, ids, 0)], SPECIAL)


_TABLES: dict[int, tuple[EventVocab, VocabTables]] = {}


def tables(vocab: EventVocab) -> VocabTables:
    """The cached numpy tables of `vocab` (the cache keeps the vocab alive, so ids stay unique)."""
    cached = _TABLES.get(id(vocab))
    if cached is None:
        cached = _TABLES[id(vocab)] = (vocab, VocabTables.from_vocab(vocab))
    return cached[1]


def as_id_array(ids: "np.ndarray | list[int] | tuple[int, ...]") -> np.ndarray:
    """Any 1-D integer sequence as an int64 array."""
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    return array.astype(np.int64, copy=False).reshape(-1)


def ids_to_note_steps(ids: "np.ndarray | list[int]", vocab: EventVocab) -> np.ndarray:
    """Like ``ids_to_notes`` but with times as int64 grid steps (columns pitch, start, end, velocity)."""
    return note_steps_and_open(ids, vocab)[0]


def note_steps_and_open(ids: "np.ndarray | list[int]", vocab: EventVocab) -> tuple[np.ndarray, np.ndarray]:
    """``ids_to_note_steps`` and, per note, whether it still sounds at the end of the sequence
    (no NoteOff or NoteOn of its pitch follows: it was released at the end time)."""
    table = tables(vocab)
    ids = as_id_array(ids)
    kind = table.kinds_of(ids)
    safe = np.where(kind == SPECIAL, 0, ids)
    clock = clock_steps(ids, vocab)  # the time of every non-shift token
    end_of_sequence = int(clock[-1]) if len(clock) else 0

    positions = np.flatnonzero((kind == NOTE_ON) | (kind == NOTE_OFF))
    by_pitch = positions[np.argsort(table.pitch[safe[positions]], kind="stable")]
    pitch_sorted = table.pitch[safe[by_pitch]]
    # A note lasts until the next NoteOn/NoteOff of its pitch, or to the end of the sequence.
    has_next = np.zeros(len(by_pitch), dtype=bool)
    has_next[:-1] = pitch_sorted[1:] == pitch_sorted[:-1]
    next_position = np.roll(by_pitch, -1)
    is_on = kind[by_pitch] == NOTE_ON
    on_positions = by_pitch[is_on]
    ends = np.where(has_next[is_on], clock[next_position[is_on]], end_of_sequence)

    order = np.argsort(on_positions, kind="stable")
    on_positions, ends = on_positions[order], ends[order]

    velocity_position = np.maximum.accumulate(np.where(kind == VELOCITY, np.arange(len(ids)), -1))
    following = np.minimum(on_positions + 1, len(ids) - 1)
    source = np.where(kind[following] == VELOCITY, following, velocity_position[on_positions])
    velocities = np.where(source >= 0, table.velocity[safe[np.maximum(source, 0)]], DEFAULT_VELOCITY)

    notes = np.empty((len(on_positions), 4), dtype=np.int64)
    notes[:, PITCH] = table.pitch[safe[on_positions]]
    notes[:, START] = clock[on_positions]
    notes[:, END] = ends
    notes[:, VELOCITY_COLUMN] = velocities
    return notes, ~has_next[is_on][order]


def clock_steps(ids: "np.ndarray | list[int]", vocab: EventVocab) -> np.ndarray:
    """THE music clock: grid steps of music after each id (the running sum of the time shifts;
    ids outside the vocabulary count as no time)."""
    table = tables(vocab)
    ids = as_id_array(ids)
    kind = table.kinds_of(ids)
    steps = np.where(kind == TIME_SHIFT, table.shift_steps[np.where(kind == SPECIAL, 0, ids)], 0)
    return np.cumsum(steps)


def music_clock(ids: "np.ndarray | list[int]", vocab: EventVocab) -> np.ndarray:
    """Seconds of music after each id (`clock_steps` on the wall-clock grid)."""
    return clock_steps(ids, vocab) * vocab.seconds_per_step


def ids_to_notes(ids: "np.ndarray | list[int]", vocab: EventVocab) -> np.ndarray:
    """The notes that an id sequence plays: float64 (N, 4) of pitch, start_s, end_s, velocity."""
    notes = ids_to_note_steps(ids, vocab).astype(np.float64)
    notes[:, [START, END]] *= vocab.seconds_per_step
    return notes


def encode_timed_events(
    event_ids: np.ndarray, event_steps: np.ndarray, end_step: int, vocab: EventVocab
) -> np.ndarray:
    """Interleave time shifts with events at non-decreasing grid steps, up to `end_step`.

    Events keep their order; each is preceded by the shifts from the previous event's time
    (or 0) to its own, and shifts from the last event to `end_step` close the sequence.
    """
    return _with_time_shifts(as_id_array(event_ids), as_id_array(event_steps), end_step, tables(vocab))


def _with_time_shifts(event_ids: np.ndarray, event_steps: np.ndarray, end_step: int, table: VocabTables) -> np.ndarray:
    """``encode_timed_events`` on int64 arrays. A gap is split as miditok does: maximal shifts,
    then the remainder (e.g. 250 steps -> 100, 100, 50)."""
    gaps = np.diff(event_steps, prepend=0)
    tail = end_step - (int(event_steps[-1]) if len(event_steps) else 0)
    if tail < 0 or np.any(gaps < 0):
        raise ValueError("event times must be non-decreasing, non-negative and at most end_step")
    full, remainder = np.divmod(gaps, table.max_shift)
    block_end = np.cumsum(full + (remainder > 0) + 1)  # one past each event
    tail_full, tail_remainder = divmod(tail, table.max_shift)
    size = (int(block_end[-1]) if len(block_end) else 0) + tail_full + (tail_remainder > 0)
    ids = np.full(size, table.shift[table.max_shift], dtype=np.int64)
    ids[block_end - 1] = event_ids
    partial = remainder > 0
    ids[block_end[partial] - 2] = table.shift[remainder[partial]]
    if tail_remainder:
        ids[-1] = table.shift[tail_remainder]
    return ids


def nearest_velocity_ids(velocities: np.ndarray, table: VocabTables) -> np.ndarray:
    """The Velocity id of the closest bin to each velocity (a tie goes to the louder bin, as in
    miditok): the one velocity lookup. Integer velocities are a table lookup (beyond 0..127 the
    nearest bin is the end bin either way)."""
    velocities = np.asarray(velocities)
    if np.issubdtype(velocities.dtype, np.integer):
        return table.midi_velocity_ids[np.clip(velocities, 0, 127)]
    return _nearest_bins(velocities, table.velocity_values, table.velocity_ids)


def _nearest_bins(velocities: np.ndarray, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    upper = np.clip(np.searchsorted(values, velocities, side="left"), 0, len(values) - 1)
    lower = np.maximum(upper - 1, 0)
    take_lower = np.abs(velocities - values[lower]) < np.abs(velocities - values[upper])
    return ids[np.where(take_lower, lower, upper)]


def _validated_notes(notes: np.ndarray, table: VocabTables) -> np.ndarray:
    notes = np.asarray(notes, dtype=np.float64)
    if notes.size == 0:
        return np.zeros((0, 4))
    if notes.ndim != 2 or notes.shape[1] != 4:
        raise ValueError(f"notes must have shape (N, 4) (pitch, start, end, velocity), got {notes.shape}")
    if not np.all(np.isfinite(notes)):
        raise ValueError("notes contain NaN or infinite values")
    pitch = notes[:, PITCH]
    if np.any(pitch != np.round(pitch)) or pitch.min() < table.min_pitch or pitch.max() > table.max_pitch:
        raise ValueError(f"note pitches must be whole numbers in {table.min_pitch}..{table.max_pitch}")
    if notes[:, START].min() < 0 or np.any(notes[:, END] < notes[:, START]):
        raise ValueError("notes need 0 <= start <= end")
    return notes


def encode_grid_notes(
    start: np.ndarray, end: np.ndarray, pitch: np.ndarray, velocity: np.ndarray, table: VocabTables
) -> np.ndarray:
    """MIDILike ids (int64, no BOS/EOS) of normalized grid notes: the one encoder.

    The notes come in encoding order (onset step, then pitch) with integer steps, pitches in the
    vocabulary's range, ``start < end``, and no note still sounding at the next onset of its
    pitch. Each note gives NoteOn + Velocity (nearest bin) at its start and NoteOff at its end;
    the events are sorted stably by time, so at one instant the NoteOffs come first (their notes
    started earlier), each group in note order (miditok's stable sort). Time shifts lead from 0
    to every instant; the sequence ends at the last NoteOff.
    """
    count = len(start)
    times = np.empty(3 * count, dtype=np.int64)
    event_ids = np.empty(3 * count, dtype=np.int64)
    times[0::3], times[1::3], times[2::3] = start, start, end
    event_ids[0::3] = table.note_on[pitch]
    event_ids[1::3] = nearest_velocity_ids(velocity, table)
    event_ids[2::3] = table.note_off[pitch]
    order = np.argsort(times, kind="stable")
    times, event_ids = times[order], event_ids[order]  # (frees the unsorted arrays early)
    return _with_time_shifts(event_ids, times, int(times[-1]) if count else 0, table)


def notes_to_ids(notes: np.ndarray, vocab: EventVocab) -> np.ndarray:
    """Encode (N, 4) notes (pitch, start_s, end_s, velocity) as MIDILike ids (uint16, no BOS/EOS).

    Times are rounded to the grid; every note lasts at least one step (miditok's rule for
    collapsed notes). Notes are ordered by onset step, then pitch (the tokenizer's order, so the
    result does not depend on the order of `notes`); of several notes with the same pitch and
    onset step only the first given is kept; a note still sounding when its pitch is struck
    again is cut there. Events at one instant: NoteOffs, then NoteOn + Velocity pairs, each in
    note order (miditok's stable sort of per-note events by time); the sequence ends at the last
    NoteOff. The normalized notes go through ``encode_grid_notes``, as the tokenizer's do.
    """
    table = tables(vocab)
    notes = _validated_notes(notes, table)
    step = vocab.seconds_per_step
    starts = np.floor(notes[:, START] / step + 0.5).astype(np.int64)
    ends = np.floor(notes[:, END] / step + 0.5).astype(np.int64)
    pitches = notes[:, PITCH].astype(np.int64)
    order = np.lexsort((pitches, starts))  # stable: same onset and pitch keep the given order
    starts, ends, pitches, velocities = starts[order], ends[order], pitches[order], notes[order, VELOCITY_COLUMN]

    by_pitch = np.lexsort((starts, pitches))
    pitch_sorted, start_sorted = pitches[by_pitch], starts[by_pitch]
    duplicate = np.zeros(len(by_pitch), dtype=bool)
    duplicate[1:] = (pitch_sorted[1:] == pitch_sorted[:-1]) & (start_sorted[1:] == start_sorted[:-1])
    keep = np.ones(len(starts), dtype=bool)
    keep[by_pitch[duplicate]] = False
    kept = by_pitch[~duplicate]
    cut = pitches[kept[1:]] == pitches[kept[:-1]]  # the next onset of the same pitch cuts a note
    ends = np.maximum(ends, starts + 1)
    ends[kept[:-1][cut]] = np.minimum(ends[kept[:-1][cut]], starts[kept[1:]][cut])

    starts, ends, pitches, velocities = starts[keep], ends[keep], pitches[keep], velocities[keep]
    return encode_grid_notes(starts, ends, pitches, velocities, table).astype(np.uint16)
