"""scripts/split_duplicates.py: held-out pieces that repeat a training piece under another path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretty_midi

from perceiver_ar_music.data.store_builder import prepare

from perceiver_ar_music.tools import duplicates as script



def write_piece(path: Path, pitches) -> None:
    midi, piano = pretty_midi.PrettyMIDI(), pretty_midi.Instrument(0)
    for i, pitch in enumerate(pitches):
        piano.notes.append(pretty_midi.Note(velocity=80, pitch=int(pitch), start=0.25 * i, end=0.25 * i + 0.2))
    midi.instruments.append(piano)
    midi.write(str(path))


def test_copies_of_one_piece_under_other_paths_are_found_and_nothing_else(tmp_path):
    midi, rng = tmp_path / "midi", np.random.default_rng(3)
    midi.mkdir()
    twin = rng.integers(40, 90, 60)
    for i in range(8):  # one piece under eight paths: the path hash scatters them over the splits
        write_piece(midi / f"mass_{i}.mid", twin)
    for i in range(16):  # unrelated pieces that share a 20-note opening (a third of them): not repeats
        write_piece(midi / f"other_{i:02d}.mid", list(twin[:20]) + list(rng.integers(40, 90, 40)))
    prepare(midi, tmp_path / "prepared", workers=1, split_ratios=(0.5, 0.25, 0.25), progress=False)
    from perceiver_ar_music.data.token_store import PreparedData

    data = PreparedData.open(tmp_path / "prepared")
    in_train = [e["path"] for e in data.files("train")]
    assert any(path.startswith("mass_") for path in in_train)
    for split, (found, kept) in script.repeats(tmp_path / "prepared").items():
        paths = [e["path"] for e in data.files(split)]
        assert [r.path for r in found] == [p for p in paths if p.startswith("mass_")]
        assert kept == [not p.startswith("mass_") for p in paths]
        assert all(r.shared == r.notes == 60 and r.training_piece.startswith("mass_") for r in found)
    held_out = [e["path"] for split in ("validation", "test") for e in data.files(split)]
    assert any(p.startswith("mass_") for p in held_out) and any(p.startswith("other_") for p in held_out)
