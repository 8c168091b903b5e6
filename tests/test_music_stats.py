"""Note-list statistics: hand-made lists with known answers, and the sweep against a grid count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perceiver_ar_music.listening.music_stats import (
    FIGURE_KEYS, MusicStats, compare, formatted_figures, music_stats, reference_figures, sample_report,
    windowed_stats, write_stats_json,
)


def notes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def test_one_note():
    stats = music_stats(notes((60, 0.0, 2.0, 100)))
    assert stats == MusicStats(
        duration_s=2.0, note_count=1, notes_per_second=0.5, pitch_min=60, pitch_max=60, pitch_mean=60.0,
        pitch_std=0.0, note_length_mean_s=2.0, velocity_mean=100.0, velocity_std=0.0,
        mean_polyphony=1.0, max_polyphony=1, silence_fraction=0.0, pitch_range=0, note_length_p50_s=2.0,
        note_length_p90_s=2.0, note_length_p99_s=2.0, note_length_max_s=2.0, long_note_fraction=0.0,
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


# ----- the figures added for long samples: percentiles, long notes, windows, reports -----


def test_length_percentiles_long_notes_and_pitch_range():
    # lengths 1..10 s: p50 = 5.5, p90 = 9.1, p99 = 9.91 (linear interpolation); 6 of 10 notes over 4 s
    table = notes(*[(50 + 3 * i, i, i + (i + 1), 64) for i in range(10)])
    stats = music_stats(table)
    assert stats.note_length_p50_s == pytest.approx(5.5)
    assert stats.note_length_p90_s == pytest.approx(9.1)
    assert stats.note_length_p99_s == pytest.approx(9.91)
    assert stats.note_length_max_s == 10.0
    assert stats.long_note_fraction == pytest.approx(0.6)
    assert stats.pitch_range == 27
    # exactly 4 s is not over 4 s
    assert music_stats(notes((60, 0, 4, 64), (62, 0, 4.01, 64))).long_note_fraction == 0.5
    # 400 grid steps of 10 ms, as the decoder computes them (523 * 0.01 - 123 * 0.01 > 4.0 in floats)
    assert music_stats(notes((60, 123 * 0.01, 523 * 0.01, 64))).long_note_fraction == 0.0


def test_music_sounding_throughout_has_no_negative_silence():
    """Overlapping notes on the 10 ms grid that sound from the first onset to the last release: the
    sounding time may sum to a hair over the span; the silence stays 0 (the tables showed -0.0)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        starts = np.sort(rng.integers(0, 300, 27)) * 0.01
        starts[0] = 0.0
        ends = starts + rng.integers(50, 200, 27) * 0.01  # each note reaches past the next onset
        stats = music_stats(np.stack([np.full(27, 60.0), starts, ends, np.full(27, 80.0)], axis=1))
        assert 0.0 <= stats.silence_fraction < 1e-12 and not formatted_figures(stats.as_dict())[-2].startswith("-")


def test_restrikes_count_a_pitch_struck_again_soon_after_its_release():
    # 60 is struck again 0.1 s after its release (a re-strike), then 0.5 s after (not); 62 sounds
    # once; 64 follows 62 at once but is another pitch; the order of the rows does not matter
    rows = [(60, 0.0, 0.2, 80), (60, 0.3, 0.5, 80), (60, 1.0, 1.2, 80), (62, 0.0, 1.0, 80), (64, 1.0, 1.5, 80)]
    assert music_stats(notes(*rows)).restrike_fraction == pytest.approx(1 / 5)
    assert music_stats(notes(*rows[::-1])).restrike_fraction == pytest.approx(1 / 5)
    # exactly the gap is not a re-strike; a tremolo on one pitch is all re-strikes but its first note
    assert music_stats(notes((60, 0, 0.1, 80), (60, 0.35, 0.4, 80))).restrike_fraction == 0.0
    tremolo = notes(*[(67, 0.1 * i, 0.1 * i + 0.05, 90) for i in range(10)])
    assert music_stats(tremolo).restrike_fraction == pytest.approx(0.9)
    assert "restrike_fraction" in FIGURE_KEYS and music_stats(notes()).restrike_fraction == 0.0


def test_windows_by_onset_with_polyphony_inside_the_window():
    # origin 10 s, windows of 5 s: [10, 15), [15, 20), [20, 22] (the last ends at the last release)
    table = notes(
        (60, 10, 19, 64),  # a drone struck in window 0 that sounds on into window 1
        (62, 11, 12, 64), (64, 12, 13, 64),
        (65, 16, 17, 64),
        (67, 20, 22, 64), (69, 21, 21.5, 64),
    )
    windows = windowed_stats(table, 5.0, start_s=10.0)
    assert [(w.index, w.start_s, w.end_s) for w in windows] == [(0, 10, 15), (1, 15, 20), (2, 20, 22)]
    assert [w.stats.note_count for w in windows] == [3, 1, 2]
    assert [w.stats.duration_s for w in windows] == [5, 5, 2]
    assert windows[0].stats.notes_per_second == pytest.approx(3 / 5)
    assert windows[2].stats.notes_per_second == pytest.approx(2 / 2)
    # window 1: the drone sounds 15-19 (with 65 during 16-17) although it belongs to window 0
    assert windows[1].stats.max_polyphony == 2
    assert windows[1].stats.mean_polyphony == pytest.approx(5 / 4)
    assert windows[1].stats.silence_fraction == pytest.approx(1 / 5)
    assert windows[1].stats.note_length_max_s == 1.0  # lengths are of its own notes only
    assert windows[0].stats.note_length_max_s == 9.0 and windows[0].stats.long_note_fraction == pytest.approx(1 / 3)
    assert windows[2].stats.max_polyphony == 2 and windows[2].stats.silence_fraction == 0.0
    # default origin: the first onset; a window with no onsets still measures what sounds in it
    lone = windowed_stats(notes((60, 0, 12, 64), (62, 11, 12, 64)), 5.0)
    assert [w.stats.note_count for w in lone] == [1, 0, 1]
    assert lone[1].stats.mean_polyphony == 1.0 and lone[1].stats.silence_fraction == 0.0
    assert windowed_stats(np.zeros((0, 4)), 30.0) == []
    with pytest.raises(ValueError):
        windowed_stats(table, 0.0)


def test_sample_report_primer_continuation_windows_drift_and_json(tmp_path):
    primer = [(60 + i % 5, 0.5 * i, 0.5 * i + 0.4, 70) for i in range(20)]  # 0-10 s, 2 notes/s
    # continuation from 10 s: 2 notes/s for 10 s, then 4 notes/s for 10 s
    first = [(70, 10 + 0.5 * i, 10 + 0.5 * i + 0.4, 80) for i in range(20)]
    second = [(72, 20 + 0.25 * i, 20 + 0.25 * i + 0.2, 80) for i in range(40)]
    table = notes(*primer, *first, *second)
    report = sample_report(table, 20, 10.0, window_s=10.0)
    assert report.primer.note_count == 20 and report.continuation.note_count == 60
    assert [w.stats.note_count for w in report.windows] == [20, 40]
    assert report.windows[0].start_s == 10.0
    assert report.drift["notes_per_second"] == pytest.approx((40 / 9.95) / (20 / 10))
    assert report.vs_primer()["notes_per_second"] == pytest.approx(report.continuation.notes_per_second / report.primer.notes_per_second)
    reference = reference_figures([music_stats(notes(*primer)), music_stats(notes(*first)), music_stats(notes(*second))], "test")
    assert reference.pieces == 3
    assert reference.median["notes_per_second"] == pytest.approx(music_stats(notes(*first)).notes_per_second)
    with_ref = sample_report(table, 20, 10.0, window_s=10.0, reference=reference)
    assert set(with_ref.vs_reference) == {"primer", "continuation"}
    assert with_ref.vs_reference["primer"].ratio["pitch_range"] is None  # the median range is 0
    assert "pitch_range" in with_ref.vs_reference["primer"].outside  # 4 semitones vs 0 in 2 of 3 pieces
    path = tmp_path / "stats.json"
    write_stats_json(path, {"sample-01": with_ref}, {"seed": 3})
    data = json.loads(path.read_text())
    assert data["details"] == {"seed": 3}
    sample = data["samples"]["sample-01"]
    assert sample["primer"]["note_count"] == 20 and len(sample["windows"]) == 2
    assert sample["windows"][1]["note_count"] == 40 and sample["reference"]["pieces"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary file left


def test_primer_figures_end_at_the_boundary_when_the_continuation_releases_a_primer_note():
    primer = [(60 + i % 5, 0.5 * i, 0.5 * i + 0.4, 70) for i in range(19)] + [(48, 9.5, 30.0, 70)]
    continuation = [(72, 10 + 0.5 * i, 10 + 0.5 * i + 0.4, 80) for i in range(40)]
    report = sample_report(notes(*primer, *continuation), 20, 10.0)
    assert report.primer.notes_per_second == pytest.approx(20 / 10)  # not 20 notes over 30 s
    assert report.primer.duration_s == pytest.approx(10.0)
    assert report.primer.note_length_max_s == pytest.approx(0.5)  # the held note counts up to the boundary
    assert report.primer.max_polyphony == 1 and report.primer.long_note_fraction == 0
    assert report.primer.silence_fraction == pytest.approx(19 * 0.1 / 10)  # the gaps after each short note
    # another take of the same primer releases the held note elsewhere: the primer's row is the same
    other = sample_report(notes(*primer[:-1], (48, 9.5, 11.2, 70), *continuation), 20, 10.0)
    assert other.primer == report.primer


def test_the_continuations_figures_span_the_new_music_from_the_boundary():
    """Its duration is the new music's (boundary to last release), as a take's header says; a
    primer note ringing on counts in its polyphony."""
    primer = [(60, 0.0, 12.0, 70)]
    continuation = [(72, 11.0 + 0.5 * i, 11.4 + 0.5 * i, 80) for i in range(10)]
    report = sample_report(notes(*primer, *continuation), 1, 10.0)
    assert report.continuation.duration_s == pytest.approx(15.9 - 10.0)
    assert report.continuation.notes_per_second == pytest.approx(10 / 5.9)
    assert report.continuation.max_polyphony == 2 and report.continuation.silence_fraction == pytest.approx(0.0, abs=0.2)


def test_report_without_primer_or_continuation():
    table = notes((60, 0, 1, 64), (62, 1, 2, 64))
    only_primer = sample_report(table, 2, 2.0)
    assert only_primer.continuation is None and only_primer.windows == []
    assert all(v is None for v in only_primer.drift.values())
    no_primer = sample_report(table, 0, 0.0)
    assert no_primer.primer is None and no_primer.continuation.note_count == 2
    assert json.loads(json.dumps(no_primer.as_dict()))["primer"] is None
    with pytest.raises(ValueError):
        sample_report(table, 3, 0.0)


def test_compare_ratios_and_band():
    ref = reference_figures([music_stats(notes((60, 0, 1, 64), (60 + k, 1, 2, 64))) for k in range(1, 11)])
    assert ref.median["pitch_range"] == 5.5 and ref.low["pitch_range"] == pytest.approx(1.9)
    inside = compare(music_stats(notes((60, 0, 1, 64), (65, 1, 2, 64))), ref)
    assert inside.ratio["pitch_range"] == pytest.approx(5 / 5.5) and "pitch_range" not in inside.outside
    wide = compare(music_stats(notes((60, 0, 1, 64), (80, 1, 2, 64))), ref)
    assert "pitch_range" in wide.outside and wide.ratio["silence_fraction"] is None  # median 0
    with pytest.raises(ValueError):
        reference_figures([music_stats(np.zeros((0, 4)))])


def test_formatted_figures_hide_note_figures_of_a_window_without_onsets():
    ringing = windowed_stats(notes((60, 0, 12, 64), (62, 11, 12, 64)), 5.0)[1].stats.as_dict()
    cells = dict(zip(FIGURE_KEYS, formatted_figures(ringing)))
    assert cells["notes_per_second"] == "-" and cells["note_length_p99_s"] == "-" and cells["pitch_range"] == "-"
    assert cells["mean_polyphony"] == "1.00" and cells["silence_fraction"] == "0.0"
    full = dict(zip(FIGURE_KEYS, formatted_figures(music_stats(notes((60, 0, 5, 64), (64, 0, 1, 64))).as_dict())))
    assert full["long_note_fraction"] == "50.0" and full["pitch_range"] == "4" and full["note_length_p50_s"] == "3.00"


def test_full_windows_leave_out_only_a_short_last_window():
    from perceiver_ar_music.listening.music_stats import full_windows

    table = notes((60, 0, 1, 64), (62, 10, 11, 64), (64, 20, 20.5, 64), (65, 20.2, 21.2, 64))
    windows = windowed_stats(table, 10.0)  # [0, 10) [10, 20) [20, 21.2]: the last spans 1.2 s
    assert [w.label() for w in windows] == ["0-10 s", "10-20 s", "20-21.2 s"]
    assert full_windows(windows, 10.0) == windows[:2]
    assert full_windows(windows[:2], 10.0) == windows[:2] and full_windows(windows, 2.0) == windows
