"""tools/heldout_primers: cutting a piece's opening (every track, notes cut at the end) and the
refusal of a piece the model trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pretty_midi

from perceiver_ar_music.tools import heldout_primers


def two_tracks(path: Path) -> None:
    midi = pretty_midi.PrettyMIDI()
    for program, pitch in ((40, 67), (42, 48)):
        track = pretty_midi.Instrument(program)
        track.notes = [pretty_midi.Note(velocity=90, pitch=pitch + i, start=0.5 * i, end=0.5 * i + 0.8) for i in range(10)]
        midi.instruments.append(track)
    midi.write(str(path))


def test_the_opening_keeps_every_track_and_cuts_notes_at_the_end(tmp_path):
    two_tracks(tmp_path / "quartet.mid")
    kept = heldout_primers.cut(tmp_path / "quartet.mid", tmp_path / "cut.mid", seconds=2.0)
    midi = pretty_midi.PrettyMIDI(str(tmp_path / "cut.mid"))
    assert kept == 8 and [t.program for t in midi.instruments] == [40, 42]
    for track in midi.instruments:
        assert [round(n.start, 2) for n in track.notes] == [0.0, 0.5, 1.0, 1.5]
        assert max(n.end for n in track.notes) <= 2.0 + 1e-6 and round(track.notes[-1].end, 2) == 2.0
    assert not list(tmp_path.glob("*.partial"))


def test_a_piece_of_the_train_split_is_refused(tmp_path, capsys):
    midi, data = tmp_path / "midi", tmp_path / "prepared"
    for piece in heldout_primers.PIECES:
        (midi / piece).parent.mkdir(parents=True, exist_ok=True)
        two_tracks(midi / piece)
    data.mkdir()
    files = [{"path": piece, "split": "test"} for piece in heldout_primers.PIECES]
    (data / "manifest.json").write_text(json.dumps({"files": files}))
    out = tmp_path / "out"
    assert heldout_primers.main(["--midi", str(midi), "--data", str(data), "--out", str(out), "--seconds", "1"]) == 0
    assert len(list(out.glob("*.mid"))) == len(heldout_primers.PIECES)
    files[2]["split"] = "train"
    (data / "manifest.json").write_text(json.dumps({"files": files}))
    assert heldout_primers.main(["--midi", str(midi), "--data", str(data), "--out", str(out)]) == 2
    assert "in the train split" in capsys.readouterr().err
