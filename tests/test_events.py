"""ids <-> notes: the vectorized reading against a literal loop, and encoding against miditok."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from miditok.utils.utils import np_get_closest
from symusic import Note, Score, Tempo, Track

from perceiver_ar_music.data.events import (
    DEFAULT_VELOCITY,
    END,
    PITCH,
    START,
    VELOCITY_COLUMN,
    ids_to_note_steps,
    encode_grid_notes,
    encode_timed_events,
    ids_to_notes,
    nearest_velocity_ids,
    notes_to_ids,
    tables,
)
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, EventVocab
from perceiver_ar_music.data.tokenizer import load_tokenizer

TOKENIZER = load_tokenizer().miditok  # the performance preset's miditok MIDILike
VOCAB = EventVocab.from_token_map(TOKENIZER.vocab)
ON, OFF, VEL, SHIFT = VOCAB.note_on_id, VOCAB.note_off_id, {v: i for i, v in enumerate(VOCAB.velocity) if v >= 0}, VOCAB.shift_id


def reference_note_steps(ids: list[int], vocab: EventVocab) -> list[list[int]]:
    """The documented reading, token by token."""
    clock, velocity = 0, DEFAULT_VELOCITY
    notes: list[list[int]] = []
    sounding: dict[int, int] = {}

    def valid(i: int) -> bool:
        return 0 <= i < len(vocab)

    for position, token in enumerate(ids):
        if not valid(token):
            continue
        kind = vocab.kind[token]
        if kind == TIME_SHIFT:
            clock += vocab.shift_steps[token]
        elif kind == VELOCITY:
            velocity = vocab.velocity[token]
        elif kind in (NOTE_ON, NOTE_OFF):
            pitch = vocab.pitch[token]
            if pitch in sounding:
                notes[sounding.pop(pitch)][END] = clock
            if kind == NOTE_ON:
                following = ids[position + 1] if position + 1 < len(ids) else -1
                own = vocab.velocity[following] if valid(following) and vocab.kind[following] == VELOCITY else velocity
                sounding[pitch] = len(notes)
                notes.append([pitch, clock, -1, own])
    for index in sounding.values():
        notes[index][END] = clock
    return notes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-3, len(VOCAB) + 3), max_size=200))
def test_vectorized_reading_matches_the_loop_on_any_ids(ids):
    got = ids_to_note_steps(np.array(ids, dtype=np.int64), VOCAB)
    assert got.tolist() == reference_note_steps(ids, VOCAB)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([ON[60], ON[62], OFF[60], OFF[62], VEL[63], VEL[127], SHIFT[1], SHIFT[100], 0, 1, 2]), max_size=60))
def test_dense_same_pitch_sequences_match_the_loop(ids):
    assert ids_to_note_steps(ids, VOCAB).tolist() == reference_note_steps(ids, VOCAB)


def test_reading_rules_by_hand():
    ids = [
        1,  # BOS ignored
        OFF[50],  # silent pitch: ignored
        ON[60], VEL[79],  # velocity follows its NoteOn
        SHIFT[10],
        ON[64],  # no Velocity after it: the last one seen (79)
        SHIFT[5],
        ON[60], VEL[31],  # re-strike: ends the first 60 at step 15
        SHIFT[100], SHIFT[20],
        OFF[60],
        0, 2,  # PAD / EOS ignored
        SHIFT[3],  # 64 still sounds: released at the end, step 138
    ]
    assert ids_to_note_steps(ids, VOCAB).tolist() == [
        [60, 0, 15, 79],
        [64, 10, 138, 79],
        [60, 15, 135, 31],
    ]
    seconds = ids_to_notes(ids, VOCAB)
    assert seconds.dtype == np.float64
    np.testing.assert_allclose(seconds[:, [START, END]], [[0, 0.15], [0.1, 1.38], [0.15, 1.35]])


def test_default_velocity_and_empty_input():
    assert ids_to_note_steps([ON[40]], VOCAB).tolist() == [[40, 0, 0, DEFAULT_VELOCITY]]
    assert ids_to_notes([], VOCAB).shape == (0, 4)
    assert ids_to_notes(np.zeros(0, dtype=np.uint16), VOCAB).shape == (0, 4)
    assert len(notes_to_ids(np.zeros((0, 4)), VOCAB)) == 0


def test_nearest_velocity_bin_is_miditok_rule():
    table = tables(VOCAB)
    velocities = np.arange(0, 128)
    expected = np_get_closest(table.velocity_values, velocities)
    got = table.velocity[nearest_velocity_ids(velocities, table)]
    assert got.tolist() == expected.tolist()
    assert table.velocity[nearest_velocity_ids(np.array([5]), table)].tolist() == [7]  # a tie: the louder bin


def test_velocity_lookup_of_the_grid_encoder_is_the_nearest_bin():
    table = tables(VOCAB)
    assert table.midi_velocity_ids.tolist() == nearest_velocity_ids(np.arange(128), table).tolist()
    velocities = np.array([-5, 0, 1, 5, 64, 127, 200])
    steps = np.arange(len(velocities))
    as_int = encode_grid_notes(steps, steps + 1, np.full(len(steps), 60), velocities, table)
    as_float = encode_grid_notes(steps, steps + 1, np.full(len(steps), 60), velocities.astype(np.float64), table)
    assert as_int.tolist() == as_float.tolist()
    assert [VOCAB.velocity[i] for i in as_int if VOCAB.kind[i] == VELOCITY] == [3, 3, 3, 7, 63, 127, 127]
    fractional = encode_grid_notes(np.array([0]), np.array([1]), np.array([60]), np.array([8.9]), table)
    assert VOCAB.velocity[fractional[1]] == 7  # binned as it is (9 would tie and go to 11)


def test_grid_encoder_by_hand():
    table = tables(VOCAB)
    # A chord at step 0, a re-strike of 60 where it ends (NoteOff first), a gap of 250 steps.
    start, end = np.array([0, 0, 5, 255]), np.array([5, 5, 255, 256])
    pitch, velocity = np.array([60, 64, 60, 67]), np.array([63, 127, 63, 31])
    expected = [
        ON[60], VEL[63], ON[64], VEL[127], SHIFT[5],
        OFF[60], OFF[64], ON[60], VEL[63], SHIFT[100], SHIFT[100], SHIFT[50],
        OFF[60], ON[67], VEL[31], SHIFT[1], OFF[67],
    ]
    assert encode_grid_notes(start, end, pitch, velocity, table).tolist() == expected
    empty = np.zeros(0, dtype=np.int64)
    assert encode_grid_notes(empty, empty, empty, empty, table).tolist() == []


def test_timed_events_close_at_the_end_step():
    ids = encode_timed_events([ON[60], OFF[60]], [3, 3], 103, VOCAB)
    assert ids.tolist() == [SHIFT[3], ON[60], OFF[60], SHIFT[100]]
    assert encode_timed_events([], [], 250, VOCAB).tolist() == [SHIFT[100], SHIFT[100], SHIFT[50]]
    assert encode_timed_events([], [], 0, VOCAB).tolist() == []
    with pytest.raises(ValueError, match="non-decreasing"):
        encode_timed_events([ON[60], OFF[60]], [5, 4], 10, VOCAB)
    with pytest.raises(ValueError, match="non-decreasing"):
        encode_timed_events([ON[60]], [5], 4, VOCAB)


def _random_clean_notes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Notes on the grid (in steps), in the tokenizer's order (onset, pitch), no same-pitch overlap."""
    pitches = rng.integers(20, 100, count)
    starts = np.cumsum(rng.choice([0, 0, 1, 3, 20, 80, 150, 320], count))
    durations = rng.integers(1, 400, count)
    velocities = rng.integers(1, 128, count)
    notes, busy_until = [], {}
    for pitch, start, duration, velocity in zip(pitches, starts, durations, velocities):
        if start >= busy_until.get(pitch, 0):
            busy_until[pitch] = start + duration
            notes.append((start, pitch, duration, velocity))
    notes.sort()
    return np.array([[p, s, s + d, v] for s, p, d, v in notes], dtype=np.int64).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(12))
def test_encoding_is_identical_to_miditok(seed):
    steps = _random_clean_notes(np.random.default_rng(seed), 300)
    score = Score(50)  # 50 ticks per quarter at 120 qpm: one tick is one 10 ms step
    score.tempos.append(Tempo(0, 120.0))
    track = Track(program=0)
    for pitch, start, end, velocity in steps.tolist():
        track.notes.append(Note(start, end - start, pitch, velocity))
    score.tracks.append(track)
    encoded = TOKENIZER.encode(score)
    expected = (encoded[0] if isinstance(encoded, list) else encoded).ids

    seconds = steps.astype(np.float64)
    seconds[:, [START, END]] *= 0.01
    ids = notes_to_ids(seconds, VOCAB)
    assert ids.dtype == np.uint16
    assert ids.tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 120))
def test_round_trip_of_clean_notes(seed, count):
    steps = _random_clean_notes(np.random.default_rng(seed), count)
    seconds = steps.astype(np.float64)
    seconds[:, [START, END]] *= 0.01
    ids = notes_to_ids(seconds, VOCAB)
    decoded = ids_to_note_steps(ids, VOCAB)
    assert decoded[:, [PITCH, START, END]].tolist() == steps[:, [PITCH, START, END]].tolist()
    assert np.all(np.abs(decoded[:, VELOCITY_COLUMN] - steps[:, VELOCITY_COLUMN]) <= 2)  # bins 4 apart
    assert notes_to_ids(ids_to_notes(ids, VOCAB), VOCAB).tolist() == ids.tolist()


def test_encoding_does_not_depend_on_the_order_of_the_notes():
    steps = _random_clean_notes(np.random.default_rng(5), 200)
    seconds = steps.astype(np.float64)
    seconds[:, [START, END]] *= 0.01
    shuffled = seconds[np.random.default_rng(6).permutation(len(seconds))]
    assert notes_to_ids(shuffled, VOCAB).tolist() == notes_to_ids(seconds, VOCAB).tolist()


def test_long_gaps_are_split_into_maximal_shifts():
    ids = notes_to_ids(np.array([[60, 0.0, 2.504, 100]]), VOCAB)
    shifts = [VOCAB.shift_steps[i] for i in ids if VOCAB.kind[i] == TIME_SHIFT]
    assert shifts == [100, 100, 50]


def test_encoding_cleans_overlaps_duplicates_and_collapsed_notes():
    notes = np.array(
        [
            [60, 0.0, 1.0, 80],  # cut at 0.5 by the re-strike
            [60, 0.5, 0.8, 80],
            [62, 0.2, 0.3, 80],
            [62, 0.2, 0.9, 40],  # same pitch and onset step: dropped
            [64, 0.3, 0.3, 80],  # zero length: one step
        ]
    )
    decoded = ids_to_note_steps(notes_to_ids(notes, VOCAB), VOCAB)
    assert decoded[:, :3].tolist() == [[60, 0, 50], [62, 20, 30], [64, 30, 31], [60, 50, 80]]


@pytest.mark.parametrize(
    "notes, message",
    [
        (np.zeros((3, 3)), "shape"),
        ([[60, 0.0, np.nan, 64]], "NaN"),
        ([[128, 0.0, 1.0, 64]], "pitches"),
        ([[60.5, 0.0, 1.0, 64]], "pitches"),
        ([[60, -0.1, 1.0, 64]], "start"),
        ([[60, 1.0, 0.5, 64]], "start"),
    ],
)
def test_bad_notes_raise_one_clear_error(notes, message):
    with pytest.raises(ValueError, match=message):
        notes_to_ids(np.asarray(notes, dtype=np.float64), VOCAB)


def test_seconds_follow_the_vocabulary_grid():
    ids = [ON[60], VEL[63], SHIFT[37], OFF[60]]
    assert math.isclose(ids_to_notes(ids, VOCAB)[0, END], 0.37)


def test_note_steps_and_open_marks_the_notes_still_sounding_at_the_end():
    """continuation.sample_notes ends these cleanly when sampling stops mid-note."""
    from perceiver_ar_music.data.events import note_steps_and_open

    ids = [ON[60], VEL[79], ON[64], SHIFT[10], OFF[60], ON[67], SHIFT[5], ON[67], SHIFT[2]]
    notes, still_sounding = note_steps_and_open(ids, VOCAB)
    assert notes.tolist() == [[60, 0, 10, 79], [64, 0, 17, 79], [67, 10, 15, 79], [67, 15, 17, 79]]
    assert still_sounding.tolist() == [False, True, False, True]  # a re-strike ended the first 67
    assert np.array_equal(notes, ids_to_note_steps(ids, VOCAB))
    empty, none_open = note_steps_and_open([], VOCAB)
    assert empty.shape == (0, 4) and none_open.shape == (0,)
