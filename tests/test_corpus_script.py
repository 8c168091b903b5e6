"""scripts/make_music21_corpus.py without music21: the stuck-notes check and the piece names."""

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
