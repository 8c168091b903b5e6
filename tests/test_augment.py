"""Transposition, time stretch and velocities on token ids: the music changes exactly as intended."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from perceiver_ar_music.training.augment import (AugmentConfig, Performance, jitter_velocities, perform, tempo_warp, time_stretch,
                                        transpose, transpose_bounds)
from perceiver_ar_music.data.events import END, PITCH, START, VELOCITY_COLUMN, ids_to_note_steps, notes_to_ids
from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT
from perceiver_ar_music.data.tokenizer import load_tokenizer

VOCAB = load_tokenizer().vocab  # the performance preset
VELOCITY_IDS = [i for i, v in enumerate(VOCAB.velocity) if v >= 0]
MAX_SHIFT = VOCAB.max_shift_steps

# A crop of a well-formed sequence: (NoteOn, Velocity) pairs, NoteOffs, time shifts, specials,
# and the odd lone Velocity / NoteOff a crop can start with.
UNITS = st.one_of(
    st.tuples(st.integers(0, 127), st.sampled_from(VELOCITY_IDS)).map(lambda u: [VOCAB.note_on_id[u[0]], u[1]]),
    st.integers(0, 127).map(lambda p: [VOCAB.note_off_id[p]]),
    st.integers(1, MAX_SHIFT).map(lambda s: [VOCAB.shift_id[s]]),
    st.sampled_from([[VOCAB.bos_id], [VOCAB.eos_id], [VELOCITY_IDS[5]]]),
)
CROPS = st.lists(UNITS, max_size=120).map(lambda units: [i for unit in units for i in unit])
FACTORS = st.floats(0.5, 2.0)


def reference_stretch(ids: list[int], factor: float) -> list[int]:
    """Stretch token by token: round each token's stretched absolute time, emit greedy shifts."""
    out: list[int] = []
    clock = emitted = 0

    def shifts_to(target: int) -> None:
        gap = target - emitted
        while gap > 0:
            step = min(gap, MAX_SHIFT)
            out.append(VOCAB.shift_id[step])
            gap -= step

    for token in ids:
        if VOCAB.kind[token] == TIME_SHIFT:
            clock += VOCAB.shift_steps[token]
            continue
        target = math.floor(clock * factor + 0.5)
        shifts_to(target)
        emitted = target
        out.append(token)
    shifts_to(math.floor(clock * factor + 0.5))
    return out


def total_steps(ids) -> int:
    return sum(VOCAB.shift_steps[i] for i in ids)


@settings(max_examples=200, deadline=None)
@given(CROPS, FACTORS)
def test_stretch_matches_the_token_by_token_reference(ids, factor):
    got = time_stretch(np.array(ids, dtype=np.uint16), factor, VOCAB)
    assert got.dtype == np.uint16
    assert got.tolist() == (ids if factor == 1.0 else reference_stretch(ids, factor))


@settings(max_examples=200, deadline=None)
@given(CROPS, FACTORS)
def test_stretched_music_is_the_original_scaled_within_half_a_step(ids, factor):
    before = ids_to_note_steps(ids, VOCAB)
    after = ids_to_note_steps(time_stretch(ids, factor, VOCAB), VOCAB)
    assert len(after) == len(before)
    assert after[:, [PITCH, VELOCITY_COLUMN]].tolist() == before[:, [PITCH, VELOCITY_COLUMN]].tolist()
    # 0.5 step = 5 ms; the epsilon covers float rounding of exact halves.
    assert np.all(np.abs(after[:, START] - before[:, START] * factor) <= 0.5 + 1e-9)
    assert np.all(np.abs(after[:, END] - before[:, END] * factor) <= 0.5 + 1e-9)
    assert abs(total_steps(time_stretch(ids, factor, VOCAB)) - total_steps(ids) * factor) <= 0.5 + 1e-9


@settings(max_examples=100, deadline=None)
@given(CROPS, FACTORS)
def test_stretch_keeps_every_other_token_in_order_and_splits_shifts_maximally(ids, factor):
    assume(factor != 1.0)  # the identity returns its input as it is
    out = time_stretch(ids, factor, VOCAB).tolist()
    assert [i for i in out if VOCAB.kind[i] != TIME_SHIFT] == [i for i in ids if VOCAB.kind[i] != TIME_SHIFT]
    for previous, current in zip(out, out[1:]):
        if VOCAB.kind[previous] == VOCAB.kind[current] == TIME_SHIFT:
            assert VOCAB.shift_steps[previous] == MAX_SHIFT


def test_no_drift_over_a_long_run_of_short_shifts():
    ids = [VOCAB.note_on_id[60], VELOCITY_IDS[0], VOCAB.shift_id[1]] * 1000 + [VOCAB.note_off_id[60]]
    stretched = time_stretch(ids, 1.037, VOCAB)
    assert total_steps(stretched) == round(1000 * 1.037)


def test_identity_augmentation_returns_the_same_ids():
    rng = np.random.default_rng(3)
    notes = np.column_stack(
        [rng.integers(21, 109, 400), np.sort(rng.uniform(0, 60, 400)), np.zeros(400), rng.integers(1, 128, 400)]
    )
    notes[:, END] = notes[:, START] + rng.uniform(0.01, 3.0, 400)
    ids = notes_to_ids(notes, VOCAB)
    assert time_stretch(ids, 1.0, VOCAB).tolist() == ids.tolist()
    assert time_stretch(ids, 1.0 + 1e-12, VOCAB).tolist() == ids.tolist()  # the general path too
    assert transpose(ids, 0, VOCAB).tolist() == ids.tolist()


@settings(max_examples=150, deadline=None)
@given(CROPS, st.integers(-3, 3))
def test_transposed_music_is_the_original_moved_exactly(ids, semitones):
    low, high = transpose_bounds(ids, VOCAB, 3)
    if not low <= semitones <= high:
        with pytest.raises(ValueError, match="outside"):
            transpose(ids, semitones, VOCAB)
        return
    moved = transpose(np.array(ids, dtype=np.uint16), semitones, VOCAB)
    assert moved.dtype == np.uint16 and len(moved) == len(ids)
    before, after = ids_to_note_steps(ids, VOCAB), ids_to_note_steps(moved, VOCAB)
    assert (after[:, PITCH] - before[:, PITCH]).tolist() == [semitones] * len(before)
    assert after[:, 1:].tolist() == before[:, 1:].tolist()
    is_note = np.isin([VOCAB.kind[i] for i in ids], [NOTE_ON, NOTE_OFF])
    assert np.array_equal(moved[~is_note], np.array(ids, dtype=np.uint16)[~is_note])


def test_transpose_bounds_keep_every_note_on_the_keyboard():
    near_top = [VOCAB.note_on_id[126], VELOCITY_IDS[3], VOCAB.note_off_id[40]]
    assert transpose_bounds(near_top, VOCAB, 3) == (-3, 1)
    near_bottom = [VOCAB.note_off_id[1], VOCAB.note_on_id[60]]
    assert transpose_bounds(near_bottom, VOCAB, 3) == (-1, 3)
    assert transpose_bounds([VOCAB.shift_id[5]], VOCAB, 3) == (-3, 3)
    assert transpose_bounds([VOCAB.note_on_id[0], VOCAB.note_on_id[127]], VOCAB, 3) == (0, 0)


def test_sampled_transpositions_cover_the_allowed_range_only():
    config = AugmentConfig(max_transpose=3)
    ids = np.array([VOCAB.note_on_id[125], VELOCITY_IDS[0]])
    rng = np.random.default_rng(0)
    drawn = {config.sample_transpose(ids, VOCAB, rng) for _ in range(300)}
    assert drawn == {-3, -2, -1, 0, 1, 2}


def test_sampling_is_deterministic_given_the_generator():
    config = AugmentConfig()
    ids = np.array([VOCAB.note_on_id[60], VELOCITY_IDS[0], VOCAB.shift_id[40], VOCAB.note_off_id[60]])

    def draws(seed: int) -> list[float]:
        rng = np.random.default_rng(seed)
        return [config.sample_stretch(rng) for _ in range(5)] + [config.sample_transpose(ids, VOCAB, rng) for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert all(0.95 <= f <= 1.05 for f in draws(9)[:5])


@pytest.mark.parametrize(
    "kwargs", [{"max_transpose": -1}, {"min_stretch": 0.0}, {"min_stretch": 1.1, "max_stretch": 1.0},
               {"stretch_windows": -0.1}, {"stretch_windows": 1.5},
               {"velocity_windows": 1.5}, {"max_velocity_shift": -1}, {"velocity_noise": 200.0}]
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_bad_stretch_factor_is_rejected():
    with pytest.raises(ValueError, match="factor"):
        time_stretch([VOCAB.shift_id[3]], 0.0, VOCAB)


def test_augmenting_a_4k_window_is_fast():
    rng = np.random.default_rng(1)
    notes = np.column_stack(
        [rng.integers(21, 109, 3000), np.sort(rng.uniform(0, 300, 3000)), np.zeros(3000), rng.integers(1, 128, 3000)]
    )
    notes[:, END] = notes[:, START] + rng.uniform(0.01, 2.0, 3000)
    ids = notes_to_ids(notes, VOCAB)[:4600]
    started = time.perf_counter()
    for _ in range(50):
        transpose(time_stretch(ids, 1.03, VOCAB), 1, VOCAB)
    per_window = (time.perf_counter() - started) / 50
    assert per_window < 0.01  # measured well under 1 ms; generous for a loaded CI machine


def _velocities(ids: list[int] | np.ndarray) -> list[int]:
    return [VOCAB.velocity[i] for i in ids if VOCAB.velocity[i] >= 0]


@given(CROPS, st.integers(-40, 40), st.floats(0, 30), st.integers(0, 2**31))
@settings(max_examples=150, deadline=None)
def test_velocity_jitter_changes_only_velocity_tokens(ids, shift, noise, seed):
    out = jitter_velocities(np.array(ids, dtype=np.uint16), shift, noise, VOCAB, np.random.default_rng(seed))
    assert out.dtype == np.uint16 and len(out) == len(ids)
    is_velocity = np.array([VOCAB.velocity[i] >= 0 for i in ids], dtype=bool)
    assert out[~is_velocity].tolist() == np.array(ids, dtype=np.int64)[~is_velocity].tolist()
    assert all(VOCAB.velocity[i] >= 0 for i in out[is_velocity])


def test_velocity_jitter_shifts_to_the_nearest_bin_and_clips():
    bins = sorted(_velocities(VELOCITY_IDS))
    ids = [VOCAB.note_on_id[60], VELOCITY_IDS[bins.index(min(bins, key=lambda v: abs(v - 91)))], VOCAB.shift_id[5]]
    rng = np.random.default_rng(0)
    assert jitter_velocities(ids, 0, 0.0, VOCAB, rng).tolist() == ids  # nothing to do: the same ids
    up = _velocities(jitter_velocities(ids, 20, 0.0, VOCAB, rng))[0]
    assert up == min(bins, key=lambda v: (abs(v - (_velocities(ids)[0] + 20)), -v))
    assert _velocities(jitter_velocities(ids, 127, 0.0, VOCAB, rng)) == [max(bins)]
    assert _velocities(jitter_velocities(ids, -127, 0.0, VOCAB, rng)) == [min(bins)]
    noisy = [_velocities(jitter_velocities(ids, 0, 12.0, VOCAB, np.random.default_rng(s)))[0] for s in range(200)]
    assert 4 <= np.std(noisy) <= 20 and len(set(noisy)) > 5


def test_velocity_variation_draws_nothing_when_off_and_varies_the_configured_share():
    ids = np.array([VOCAB.note_on_id[60], VELOCITY_IDS[20], VOCAB.shift_id[5]] * 30, dtype=np.uint16)
    off, rng = AugmentConfig(), np.random.default_rng(3)
    assert off.vary_velocities(ids, VOCAB, rng) is ids
    assert rng.random() == np.random.default_rng(3).random()  # the stream is untouched
    always = AugmentConfig(velocity_windows=1.0)
    assert always.vary_velocities(ids, VOCAB, np.random.default_rng(1)).tolist() != ids.tolist()
    half = AugmentConfig(velocity_windows=0.5)
    varied = sum(half.vary_velocities(ids, VOCAB, np.random.default_rng(s)).tolist() != ids.tolist() for s in range(200))
    assert 70 <= varied <= 130


def test_a_share_of_windows_is_stretched_and_all_stretched_draws_as_before():
    every = AugmentConfig(min_stretch=0.75, max_stretch=1.25)
    plain = np.random.default_rng(5)
    assert [every.sample_stretch(np.random.default_rng(5)) for _ in range(1)] == [float(plain.uniform(0.75, 1.25))]
    rng = np.random.default_rng(5)  # all windows stretched: the draws of runs made before the option
    assert [every.sample_stretch(rng) for _ in range(20)] == [float(v) for v in np.random.default_rng(5).uniform(0.75, 1.25, 20)]
    none = AugmentConfig(min_stretch=0.75, max_stretch=1.25, stretch_windows=0.0)
    assert {none.sample_stretch(np.random.default_rng(s)) for s in range(50)} == {1.0}
    half = AugmentConfig(min_stretch=0.75, max_stretch=1.25, stretch_windows=0.5)
    factors = [half.sample_stretch(np.random.default_rng(s)) for s in range(400)]
    kept = sum(f == 1.0 for f in factors)
    assert 160 <= kept <= 240  # about half keep their time
    assert all(0.75 <= f <= 1.25 for f in factors) and len(set(factors)) > 150  # the rest spread over the range


# ----------------------------------------------------------------------------- performance-like windows


def _performance(**amounts) -> Performance:
    return Performance(seed=amounts.pop("seed", 0), pedal_every=(50.0, 200.0), phrase=600.0, **amounts)


def _score_window() -> np.ndarray:
    """A score-like crop: chords on a 250 ms grid at one velocity, repeated pitches included."""
    rng = np.random.default_rng(7)
    notes = []
    for beat in range(40):
        for pitch in rng.choice([48, 52, 55, 60, 64, 67, 72], size=3, replace=False):
            notes.append([pitch, beat * 0.25, beat * 0.25 + rng.choice([0.25, 0.5]), 91])
    return notes_to_ids(np.array(notes, dtype=float), VOCAB)


def _grammar_holds(ids) -> None:
    """Every NoteOn right before a Velocity, as the input had it."""
    for a, b in zip(ids[:-1], ids[1:]):
        if VOCAB.kind[a] == NOTE_ON:
            assert VOCAB.velocity[b] >= 0


def test_performance_with_no_amounts_is_the_identity():
    ids = _score_window()
    assert perform(ids, _performance(), VOCAB).tolist() == ids.tolist()


def test_tempo_drift_moves_every_event_to_its_warped_time():
    ids = _score_window()
    out = perform(ids, _performance(tempo_drift=0.2, tempo_phase=1.0), VOCAB)
    before, after = ids_to_note_steps(ids, VOCAB), ids_to_note_steps(out, VOCAB)
    warped = np.floor(tempo_warp(before[:, START], 0.2, 600.0, 1.0) + 0.5)
    order = np.lexsort((before[:, PITCH], warped))
    assert np.array_equal(after[:, START], warped[order])
    assert after[:, START].max() != before[:, START].max()  # it did move
    assert np.all(np.diff(tempo_warp(np.arange(0, 5000), 0.9, 300.0, 2.0)) > 0)  # monotone below drift 1


def test_onset_jitter_moves_notes_with_their_releases_and_loses_none():
    ids = _score_window()
    before = ids_to_note_steps(ids, VOCAB)
    for seed in range(20):
        out = perform(ids, _performance(onset_jitter=2.0, seed=seed), VOCAB)
        _grammar_holds(out)
        after = ids_to_note_steps(out, VOCAB)
        assert len(after) == len(before)  # every note kept
        assert sorted(after[:, PITCH].tolist()) == sorted(before[:, PITCH].tolist())
        moved = np.abs(np.sort(after[:, START]) - np.sort(before[:, START]))
        assert moved.max() <= 7  # 3 std and rounding (sorted onsets: an upper bound per rank)
    assert any(perform(ids, _performance(onset_jitter=2.0, seed=s), VOCAB).tolist() != ids.tolist() for s in range(3))


def test_pedal_holds_notes_longer_but_never_into_the_next_note_of_their_pitch():
    ids = _score_window()
    before = ids_to_note_steps(ids, VOCAB)
    out = perform(ids, _performance(pedal_hold=100.0), VOCAB)
    after = ids_to_note_steps(out, VOCAB)
    key = lambda notes: np.lexsort((notes[:, PITCH], notes[:, START]))  # noqa: E731
    before, after = before[key(before)], after[key(after)]
    assert np.array_equal(after[:, START], before[:, START])  # onsets untouched
    held = after[:, END] - before[:, END]
    assert held.min() >= 0 and held.max() <= 100 and held.mean() > 5
    for pitch in np.unique(after[:, PITCH]):
        notes = after[after[:, PITCH] == pitch]
        assert np.all(notes[1:, START] >= notes[:-1, END])  # no overlap within a pitch


def test_velocity_arc_changes_only_velocities_and_follows_the_phrase():
    ids = _score_window()
    out = perform(ids, _performance(velocity_arc=30.0, velocity_phase=0.0), VOCAB)
    assert len(out) == len(ids)
    is_velocity = np.array([VOCAB.velocity[i] >= 0 for i in ids])
    assert np.array_equal(out[~is_velocity], ids[~is_velocity])
    velocities = ids_to_note_steps(out, VOCAB)[:, VELOCITY_COLUMN]
    assert velocities.max() - velocities.min() >= 40  # 91 +- 30, in bins


@given(CROPS, st.integers(0, 2**31), st.floats(0, 5), st.floats(0, 0.5), st.floats(0, 150), st.floats(0, 40))
@settings(max_examples=150, deadline=None)
def test_a_played_crop_keeps_its_events_and_grammar(ids, seed, jitter, drift, hold, arc):
    p = _performance(seed=seed, onset_jitter=jitter, tempo_drift=drift, pedal_hold=hold, velocity_arc=arc)
    out = perform(np.array(ids, dtype=np.uint16), p, VOCAB)
    assert out.dtype == np.uint16

    def events(seq):
        return [i if VOCAB.velocity[i] < 0 else "v" for i in seq if VOCAB.kind[i] != TIME_SHIFT]

    assert sorted(map(str, events(out))) == sorted(map(str, events(ids)))  # the same events, velocities aside
    if ids and ids[0] == VOCAB.bos_id:
        assert out[0] == VOCAB.bos_id
    if ids and ids[-1] == VOCAB.eos_id:
        assert out[-1] == VOCAB.eos_id
    pairs_in = sum(VOCAB.kind[a] == NOTE_ON and VOCAB.velocity[b] >= 0 for a, b in zip(ids[:-1], ids[1:]))
    pairs_out = sum(VOCAB.kind[a] == NOTE_ON and VOCAB.velocity[b] >= 0 for a, b in zip(out[:-1], out[1:]))
    assert pairs_out == pairs_in
    assert len(ids_to_note_steps(out, VOCAB)) == len(ids_to_note_steps(ids, VOCAB))  # no note lost


def test_performance_draws_nothing_when_off_and_plays_the_configured_share():
    ids = _score_window()
    off, rng = AugmentConfig(), np.random.default_rng(3)
    assert off.sample_performance(VOCAB, rng) is None
    assert rng.random() == np.random.default_rng(3).random()  # the stream is untouched
    half = AugmentConfig(perform_windows=0.5)
    drawn = [half.sample_performance(VOCAB, np.random.default_rng(s)) for s in range(200)]
    assert 70 <= sum(d is not None for d in drawn) <= 130
    played = [d for d in drawn if d is not None]
    assert all(d.onset_jitter == 2.0 and 0 <= d.tempo_drift <= 0.08 and 400 <= d.phrase <= 1200 for d in played)
    assert 0.3 < np.mean([d.pedal_hold > 0 for d in played]) < 0.7
    assert perform(ids, played[0], VOCAB).tolist() != ids.tolist()
