"""Memorisation: a passage planted in a small reference set is found, also at another tempo and
dynamics; the primer's part is reported apart from the continuation's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perceiver_ar_music.listening.memorization import (
    MIN_NOTES, ReferenceIndex, agreement, canonical_order, memorization_report, shingle_hashes,
)

STEP = 0.01


def performance(rng: np.random.Generator, n: int, chords: bool = True) -> np.ndarray:
    """Notes on the 10 ms grid: onsets 30-300 ms apart, some 3-note chords on one step."""
    onsets = np.cumsum(rng.integers(3, 30, n)) * STEP
    if chords:
        onsets[1::4] = onsets[0::4][: len(onsets[1::4])]  # every 4th pair shares its onset
    pitch = rng.integers(36, 96, n)
    length = rng.integers(5, 80, n) * STEP
    velocity = rng.integers(20, 120, n)
    table = np.stack([pitch, onsets, onsets + length, velocity], 1).astype(np.float64)
    return table[np.lexsort((table[:, 0], table[:, 1]))]


def restyled(notes: np.ndarray, tempo: float, velocity_shift: int, shift_s: float) -> np.ndarray:
    """The same notes at `tempo` times the durations, other velocities, moved to `shift_s`."""
    out = notes.copy()
    out[:, 1:3] = np.round((out[:, 1:3] - out[0, 1]) * tempo / STEP) * STEP + shift_s
    out[:, 3] = np.clip(out[:, 3] + velocity_shift, 1, 127)
    return out


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(1)
    pieces = [performance(rng, int(n)) for n in rng.integers(300, 800, 12)]
    return pieces, ReferenceIndex(pieces, [f"piece-{i}.mid" for i in range(len(pieces))])


def test_canonical_order_sorts_chords_by_pitch_and_keeps_onset_order():
    notes = np.array([[67, 0.0, 1, 64], [60, 0.0, 1, 64], [64, 0.0, 1, 64], [50, 0.5, 1, 64], [40, 0.52, 1, 64]])
    assert notes[canonical_order(notes), 0].tolist() == [60, 64, 67, 50, 40]


def test_planted_passage_is_found_at_other_tempos_and_velocities(reference):
    pieces, index = reference
    rng = np.random.default_rng(7)
    planted = pieces[5][100:160]  # 60 notes of piece 5
    for tempo in (1.0, 1.5, 0.75):
        sample = np.concatenate([performance(rng, 40), restyled(planted, tempo, -30, 50.0), restyled(performance(rng, 40), 1, 0, 200.0)])
        match = index.longest_match(sample)
        assert (match.notes, match.piece, match.name, match.piece_note) == (60, 5, "piece-5.mid", 100), tempo
        assert match.query_note == 40 and match.query_start_s == pytest.approx(50.0)
        assert match.piece_start_s == pytest.approx(pieces[5][100, 1])
        played = restyled(planted, tempo, 0, 0.0)
        assert match.seconds == pytest.approx(played[:, 2].max() - played[:, 1].min(), abs=1e-6)
        assert match.reference_seconds == pytest.approx(planted[:, 2].max() - planted[:, 1].min(), abs=1e-4)


def test_nothing_copied_and_too_short(reference):
    _, index = reference
    unrelated = performance(np.random.default_rng(99), 300)
    assert index.longest_match(unrelated).notes == 0
    assert index.longest_match(unrelated[: MIN_NOTES - 1]).notes == 0
    assert index.longest_match(np.zeros((0, 4))).notes == 0


def test_exactly_min_notes_at_a_piece_end():
    rng = np.random.default_rng(3)
    pieces = [performance(rng, 200, chords=False) for _ in range(3)]
    index = ReferenceIndex(pieces)
    tail = pieces[2][-MIN_NOTES:]
    sample = np.concatenate([restyled(tail, 1.2, 5, 0.0), restyled(performance(rng, 30), 1, 0, 100.0)])
    match = index.longest_match(sample)
    assert (match.notes, match.piece, match.piece_note) == (MIN_NOTES, 2, 200 - MIN_NOTES)
    assert index.longest_match(sample[1:]).notes == 0  # one note short


def test_shingles_do_not_cross_pieces():
    a, b = np.arange(20, 30), np.arange(40, 50)  # 10 + 10 notes, MIN_NOTES = 12 spans both
    as_notes = lambda p: np.stack([p, np.arange(len(p)) * 0.1, np.arange(len(p)) * 0.1 + 0.05, np.full(len(p), 64)], 1)
    index = ReferenceIndex([as_notes(a), as_notes(b)])
    assert len(index.hashes) == 0
    assert index.longest_match(as_notes(np.concatenate([a, b]))).notes == 0


def test_hash_collisions_cannot_fake_a_match(reference, monkeypatch):
    pieces, index = reference
    # every shingle hashes alike: all are hits, but the verification against the pitches decides
    monkeypatch.setattr("perceiver_ar_music.listening.memorization.MAX_OCCURRENCES", 10**9)
    broken = ReferenceIndex.__new__(ReferenceIndex)
    broken.__dict__.update(index.__dict__)
    broken.hashes = np.zeros_like(index.hashes)
    monkeypatch.setattr("perceiver_ar_music.listening.memorization.shingle_hashes", lambda p, k: np.zeros(max(len(p) - k + 1, 0), np.uint64))
    assert broken.longest_match(performance(np.random.default_rng(5), 50)).notes == 0


def test_common_shingles_do_not_hide_a_longer_passage(monkeypatch):
    # a piece of one repeated note, then a distinctive run: the repeated part is too common to expand
    monkeypatch.setattr("perceiver_ar_music.listening.memorization.MAX_OCCURRENCES", 3)
    pitches = np.concatenate([np.full(40, 60), np.arange(61, 81), np.full(40, 60)])
    piece = np.stack([pitches, np.arange(100) * 0.1, np.arange(100) * 0.1 + 0.05, np.full(100, 64)], 1)
    index = ReferenceIndex([piece, piece, piece])
    sample = piece[30:75].copy()  # 10 repeated, 20 distinctive, 15 repeated
    match = index.longest_match(sample)
    assert match.notes == 45 and match.piece_note == 30


def test_report_keeps_the_primer_apart(reference):
    pieces, index = reference
    rng = np.random.default_rng(11)
    primer = restyled(pieces[3][:50], 1.3, 10, 0.0)  # the primer IS a training piece's start
    gap = primer[:, 2].max() + 1
    replay = restyled(primer[10:40], 1.0, 0, gap)  # the continuation replays 30 notes of the primer
    fresh = restyled(performance(rng, 60), 1, 0, gap + 20)
    copied = restyled(pieces[8][200:225], 0.9, -20, gap + 60)  # and copies 25 notes of another piece
    notes = np.concatenate([primer, replay, fresh, copied])
    report = memorization_report(notes, len(primer), index)
    assert (report.primer.notes, report.primer.piece, report.primer.piece_note) == (50, 3, 0)
    assert report.continuation.notes == 30 and report.continuation.piece == 3  # the replay, from piece 3
    assert report.continuation_in_primer == 30 and report.match_replays_primer
    data = json.loads(json.dumps(report.as_dict()))
    assert data["primer"]["name"] == "piece-3.mid" and data["min_notes"] == MIN_NOTES
    # without the replay, the copy from piece 8 is the continuation's longest, not in the primer
    report = memorization_report(np.concatenate([primer, fresh, copied]), len(primer), index)
    assert (report.continuation.notes, report.continuation.piece, report.continuation.piece_note) == (25, 8, 200)
    assert report.continuation_in_primer == 0 and not report.match_replays_primer
    only_generated = memorization_report(np.concatenate([fresh, copied]), 0, index)
    assert only_generated.primer is None and only_generated.continuation.notes == 25


def test_shingle_hashes_are_order_blind_multisets():
    values = np.array([1, 2, 3, 3, 2, 1, 1, 2, 4], dtype=np.uint8)
    hashes = shingle_hashes(values, 3)
    assert len(hashes) == 7 and hashes[0] == hashes[3] and hashes[4] == hashes[5] and hashes[0] != hashes[6]
    assert len(shingle_hashes(values[:2], 3)) == 0


def test_agreement_passes_reordered_blocks_only():
    a = np.array([60, 64, 67, 72, 50, 55, 59, 40], dtype=np.uint8)
    b = np.array([60, 67, 64, 72, 59, 50, 55, 41], dtype=np.uint8)
    assert agreement(a, b) == 7  # two reordered chords, then a different note
    assert agreement(a, a) == 8 and agreement(a[:3], b[:2]) == 1
    assert agreement(np.array([1, 2, 3], np.uint8), np.array([1, 3, 4], np.uint8)) == 1


def test_rolled_chords_played_faster_still_match():
    """Rolled chords (notes 10 ms apart) played at half the duration land on one grid step and are
    put in pitch order: the passage is found whole through the reordered chords."""
    rng = np.random.default_rng(4)
    rows, t = [], 0.0
    for _ in range(150):
        chord = rng.choice(np.arange(40, 90), size=int(rng.integers(1, 5)), replace=False)
        for offset, pitch in enumerate(chord):  # in random pitch order, 10 ms apart
            rows.append((pitch, t + 0.01 * offset, t + 0.5, 64))
        t += float(rng.integers(15, 40)) * STEP
    piece = np.array(rows)
    index = ReferenceIndex([piece, performance(rng, 300)])
    faster = restyled(piece[100:400], 0.5, 0, 3.0)
    onsets = np.round(faster[:, 1] / STEP).astype(int)
    assert len(np.unique(onsets)) < len(onsets) - 50  # many chord notes now share a step
    assert not np.array_equal(faster[canonical_order(faster), 0], piece[canonical_order(piece), 0][100:400])
    match = index.longest_match(faster)
    assert len(faster) > 250 and match.piece == 0
    assert match.notes >= len(faster) - 4 and abs(match.piece_note - 100) <= 4  # chords at the edges may be cut
