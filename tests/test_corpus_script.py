"""scripts/make_music21_corpus.py without music21: the stuck-notes check, the piece names, and\nthat a piece appears only once checked."""

from __future__ import annotations

from pathlib import Path

import pretty_midi
import pytest

from perceiver_ar_music.tools import music21_corpus as corpus


def four_voices(path: Path, held: int = 0) -> Path:
    """40 chords of four half-second notes, every pitch new in its voice; the first `held` voices'
    notes hang on to the end."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    chords = 40
    for i in range(chords):
        for voice, pitch in enumerate((21 + i, 61 + i, 104, 106)):
            end = chords * 0.5 + 1 if voice < held else i * 0.5 + 0.45
            piano.notes.append(pretty_midi.Note(velocity=91, pitch=pitch, start=i * 0.5, end=end))
    midi.instruments.append(piano)
    midi.write(str(path))
    return path


def test_a_clean_four_voice_piece_passes(tmp_path: Path) -> None:
    assert corpus.stuck_notes(four_voices(tmp_path / "clean.mid")) is None


def test_a_piece_with_hanging_notes_is_flagged(tmp_path: Path) -> None:
    problem = corpus.stuck_notes(four_voices(tmp_path / "stuck.mid", held=2))
    assert problem is not None and problem.startswith("stuck notes:") and "> 12" in problem


def test_an_unreadable_file_is_left_to_prepare(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a midi file")
    assert corpus.stuck_notes(bad) is None


@pytest.mark.parametrize(
    ("composer", "path", "name"),
    [
        ("bach", "/x/corpus/bach/bwv66.6.mxl", "bach/bwv66.6.mid"),
        ("beethoven", "/x/corpus/beethoven/opus18no1/movement1.mxl", "beethoven/opus18no1-movement1.mid"),
        ("palestrina", "/x/corpus/palestrina/Agnus_01.krn", "palestrina/Agnus_01.mid"),
    ],
)
def test_target_names_keep_the_split_of_earlier_corpora(composer: str, path: str, name: str) -> None:
    assert corpus.target_name(composer, path) == name


def test_a_piece_stored_twice_is_converted_once(tmp_path: Path) -> None:
    pairs = [("bach", "/x/corpus/bach/bwv1.krn"), ("bach", "/x/corpus/bach/bwv1.mxl"), ("bach", "/x/corpus/bach/bwv2.mxl")]
    jobs = corpus.unique_jobs(pairs, tmp_path)
    assert [Path(out).name for _, _, out in jobs] == ["bwv1.mid", "bwv2.mid"] and jobs[0][1].endswith(".krn")


class FakeScore:
    """A music21 score stand-in that writes a given MIDI file."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def write(self, fmt: str, fp: str) -> None:
        Path(fp).write_bytes(self.source.read_bytes())


@pytest.mark.parametrize("check", ["stuck", "fails"])
def test_a_piece_that_fails_its_check_leaves_no_file(tmp_path: Path, monkeypatch, check: str) -> None:
    """A hanging-notes piece, or a check that raises (an alarm during it), leaves nothing behind;
    a clean piece appears."""
    converter = pytest.importorskip("music21.converter")
    stuck, clean = four_voices(tmp_path / "stuck-src.mid", held=2), four_voices(tmp_path / "clean-src.mid")
    monkeypatch.setattr(converter, "parse", lambda path: FakeScore(Path(path)))
    if check == "fails":
        def broken(path):
            raise TimeoutError("conversion took longer than 180 s")
        monkeypatch.setattr(corpus, "stuck_notes", broken)
    out = tmp_path / "out" / "bach" / "piece.mid"
    line = corpus.convert(("bach", str(stuck), str(out)))
    assert line is not None and line.startswith("skipped bach stuck-src.mid")
    assert not out.exists() and not out.with_suffix(".tmp").exists()
    if check == "stuck":
        assert corpus.convert(("bach", str(clean), str(out))) is None and out.exists()
