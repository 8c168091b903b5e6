"""Note-list statistics: hand-made lists with known answers, and the sweep against a grid count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perceiver_ar_music.music_stats import MusicStats, music_stats


def notes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def test_one_note():
    stats = music_stats(notes((60, 0.0, 2.0, 100)))
    assert stats == MusicStats(
        duration_s=2.0, note_count=1, notes_per_second=0.5, pitch_min=60, pitch_max=60, pitch_mean=60.0,
        pitch_std=0.0, note_length_mean_s=2.0, velocity_mean=100.0, velocity_std=0.0,
        mean_polyphony=1.0, max_polyphony=1, silence_fraction=0.0,
    )


def test_overlap_and_gap():
    # 60 sounds 0-2, 64 sounds 1-3, silence 3-5, 67 sounds 5-6.
    stats = music_stats(notes((60, 0, 2, 80), (64, 1, 3, 40), (67, 5, 6, 60)))
    assert stats.duration_s == 6.0
    assert stats.notes_per_second == pytest.approx(0.5)
    assert (stats.pitch_min, stats.pitch_max) == (60, 67)
    assert stats.pitch_mean == pytest.approx(191 / 3)
    assert stats.pitch_std == pytest.approx(np.sqrt(((60 - 191 / 3) ** 2 + (64 - 191 / 3) ** 2 + (67 - 191 / 3) ** 2) / 3))
    assert stats.note_length_mean_s == pytest.approx(5 / 3)
    assert stats.velocity_mean == 60.0
    assert stats.velocity_std == pytest.approx(np.sqrt(800 / 3))
    assert stats.mean_polyphony == pytest.approx(5 / 4)  # 5 note-seconds over 4 sounding seconds
    assert stats.max_polyphony == 2
    assert stats.silence_fraction == pytest.approx(2 / 6)


def test_chord_polyphony_and_order_independence():
    chord = notes((60, 0, 1, 64), (64, 0, 1, 64), (67, 0, 1, 64), (72, 0.5, 1.5, 64))
    stats = music_stats(chord)
    assert stats.max_polyphony == 4
    assert stats.mean_polyphony == pytest.approx(4 / 1.5)
    assert music_stats(chord[::-1]) == stats


def test_touching_notes_do_not_overlap():
    stats = music_stats(notes((60, 0, 1, 64), (62, 1, 2, 64), (64, 2, 3, 64)))
    assert (stats.max_polyphony, stats.mean_polyphony, stats.silence_fraction) == (1, 1.0, 0.0)


def test_leading_silence_is_not_part_of_the_span():
    stats = music_stats(notes((60, 10, 12, 64), (62, 13, 14, 64)))
    assert stats.duration_s == 4.0
    assert stats.silence_fraction == pytest.approx(0.25)


def test_zero_length_notes_count_but_never_sound():
    stats = music_stats(notes((62, 0, 2, 64), (60, 1, 1, 64), (64, 2, 2, 64)))
    assert stats.note_count == 3
    assert (stats.max_polyphony, stats.mean_polyphony) == (1, 1.0)
    only_zero = music_stats(notes((60, 1, 1, 64)))
    assert (only_zero.duration_s, only_zero.notes_per_second, only_zero.max_polyphony) == (0.0, 0.0, 0)
    assert only_zero.silence_fraction == 1.0


def test_empty_and_invalid():
    assert music_stats(np.zeros((0, 4))).note_count == 0
    assert music_stats(np.zeros((0, 4))).duration_s == 0.0
    with pytest.raises(ValueError):
        music_stats(notes((60, 2, 1, 64)))
    with pytest.raises(ValueError):
        music_stats(notes((60, 0, np.nan, 64)))


def test_dict_and_rows():
    stats = music_stats(notes((60, 0, 2, 80), (64, 1, 3, 40)))
    assert json.loads(json.dumps(stats.as_dict()))["max_polyphony"] == 2
    rows = dict(stats.rows())
    assert rows["notes"] == "2" and rows["polyphony mean / max"] == "1.33 / 2" and rows["silence"] == "0.0 %"


STEP = 0.01


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(21, 108), st.integers(0, 300), st.integers(0, 80), st.integers(1, 127)), min_size=1, max_size=25))
def test_polyphony_matches_a_grid_count(rows):
    """On a 10 ms grid the sounding notes of every cell can simply be counted."""
    table = notes(*[(p, s * STEP, (s + d) * STEP, v) for p, s, d, v in rows])
    stats = music_stats(table)
    first = min(s for _, s, _, _ in rows)
    last = max(s + d for _, s, d, _ in rows)
    counts = np.array([sum(s <= cell < s + d for _, s, d, _ in rows) for cell in range(first, last)], dtype=np.int64)
    sounding = (counts > 0).sum()
    assert stats.max_polyphony == (counts.max() if len(counts) else 0)
    assert stats.mean_polyphony == pytest.approx(counts.sum() / sounding if sounding else 0.0)
    if last > first:
        assert stats.silence_fraction == pytest.approx(1 - sounding / (last - first), abs=1e-9)
