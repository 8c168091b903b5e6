"""scripts/eval_robustness.py: the validation pieces transposed and played slower or faster."""

from __future__ import annotations


import numpy as np
import pytest

from perceiver_ar_music.data.events import ids_to_notes
from perceiver_ar_music.data.tokenizer import load_tokenizer

from perceiver_ar_music.tools import robustness as script



def piece(vocab, pitches: list[int]) -> np.ndarray:
    """One note every 0.5 s, each 0.4 s long."""
    velocity = vocab.velocity.index(63)
    ids = []
    for pitch in pitches:
        ids += [vocab.note_on_id[pitch], velocity, vocab.shift_id[40], vocab.note_off_id[pitch], vocab.shift_id[10]]
    return np.array(ids)


def test_transforms_keep_the_notes_move_pitch_and_time_and_drop_what_does_not_fit():
    vocab = load_tokenizer().vocab
    low, high = piece(vocab, [60, 62, 64]), piece(vocab, [120, 125, 127])  # the second cannot go up 5
    entries = [{"path": "low", "seconds": 1.5}, {"path": "high", "seconds": 1.5}]
    same, _ = script.transformed([low, high], entries, "as is", vocab)
    assert [len(p) for p in same] == [len(low), len(high)]
    up, up_entries = script.transformed([low, high], entries, "transpose +5", vocab)
    assert [e["path"] for e in up_entries] == ["low"]
    assert ids_to_notes(up[0], vocab)[:, 0].tolist() == [65, 67, 69]
    slow, slow_entries = script.transformed([low], entries[:1], "tempo x0.5", vocab)
    notes, before = ids_to_notes(slow[0], vocab), ids_to_notes(low, vocab)
    assert notes[:, 0].tolist() == before[:, 0].tolist()
    assert notes[:, 1] == pytest.approx(2 * before[:, 1]) and notes[:, 2] == pytest.approx(2 * before[:, 2])
    assert slow_entries[0]["seconds"] == pytest.approx(3.0)


def test_the_played_column_keeps_every_note_and_is_the_same_each_time():
    vocab = load_tokenizer().vocab
    pieces = [piece(vocab, [60, 62, 64, 65, 67] * 8), piece(vocab, [48, 55] * 10)]
    entries = [{"path": "a", "seconds": 20.0}, {"path": "b", "seconds": 10.0}]
    played, played_entries = script.transformed(pieces, entries, "played", vocab)
    again, _ = script.transformed(pieces, entries, "played", vocab)
    assert [p.tolist() for p in played] == [p.tolist() for p in again]  # fixed seeds
    for before, after, entry in zip(pieces, played, played_entries):
        notes, original = ids_to_notes(after, vocab), ids_to_notes(before, vocab)
        assert len(notes) == len(original) and after.tolist() != before.tolist()
        assert entry["seconds"] == pytest.approx(notes[:, 2].max(), abs=1.5)


def test_played_without_jitter_moves_no_onset_off_the_drifting_tempo():
    """The "no jitter" column plays with tempo drift, arc and pedal only: a note's onset is where
    the tempo drift puts it, so notes of one chord still start together."""
    vocab = load_tokenizer().vocab
    chord = [vocab.note_on_id[60], vocab.velocity.index(63), vocab.note_on_id[64], vocab.velocity.index(63),
             vocab.shift_id[50], vocab.note_off_id[60], vocab.note_off_id[64], vocab.shift_id[10]]
    pieces, entries = [np.array(chord * 20)], [{"path": "c", "seconds": 12.0}]
    jittered, _ = script.transformed(pieces, entries, "played", vocab)
    steady, _ = script.transformed(pieces, entries, "played, no jitter", vocab)

    def together(ids) -> float:
        notes = ids_to_notes(ids, vocab)
        onsets = notes[np.lexsort((notes[:, 0], notes[:, 1]))][:, 1]
        return float(np.mean(np.isclose(onsets[0::2], onsets[1::2])))

    assert together(steady[0]) == 1.0 and together(jittered[0]) < 0.5


def test_the_jitter_floor_is_the_entropy_of_the_rounded_draw():
    assert script.jitter_nats(0.0) == 0.0
    # much finer than the grid: one step, or (near a half step) two; much coarser: a normal's entropy on the grid
    assert script.jitter_nats(0.05) < 0.15
    assert script.jitter_nats(20.0) == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 20.0**2), abs=0.03)
    values = [script.jitter_nats(s) for s in (0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values) and values[2] == pytest.approx(2.11, abs=0.01)  # 20 ms on the 10-ms grid
