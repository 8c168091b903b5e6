"""tools.package_performances: the pinned archive, the fixed split and the primers, offline."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pretty_midi
import pytest

from perceiver_ar_music.data.store_builder import load_metadata
from perceiver_ar_music.tools import package_performances as pp

UNREACHABLE = "http://127.0.0.1:9/miditok.tar.gz"


def tiny_midi(pitch: int) -> bytes:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(velocity=80, pitch=pitch, start=0.0, end=0.5))
    midi.instruments.append(piano)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


def fake_sdist() -> bytes:
    """A gzipped tar laid out as miditok's sdist, one tiny MIDI per performance."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for index, name in enumerate(sorted(pp.SPLITS)):
            data = tiny_midi(40 + index)
            info = tarfile.TarInfo(pp.MEMBER_DIR + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_cached_archive_with_the_pinned_digest_is_used_without_the_network(tmp_path: Path) -> None:
    archive = fake_sdist()
    cache = tmp_path / "cache.tar.gz"
    cache.write_bytes(archive)
    assert pp.fetch_archive(cache, UNREACHABLE, hashlib.sha256(archive).hexdigest()) == archive


def test_a_cached_archive_with_another_digest_is_not_trusted(tmp_path: Path) -> None:
    cache = tmp_path / "cache.tar.gz"
    cache.write_bytes(fake_sdist())
    with pytest.raises(SystemExit, match="cannot download"):
        pp.fetch_archive(cache, UNREACHABLE, "0" * 64)


def test_the_ten_performances_land_in_their_fixed_splits(tmp_path: Path) -> None:
    pp.extract(fake_sdist(), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.mid")) == sorted(pp.SPLITS)
    metadata = load_metadata(tmp_path)
    assert metadata is not None and metadata.split_of == pp.SPLITS
    splits = list(pp.SPLITS.values())
    assert (splits.count("train"), splits.count("validation"), splits.count("test")) == (7, 1, 2)
    before = (tmp_path / "Maestro_1.mid").stat().st_mtime_ns
    pp.extract(fake_sdist(), tmp_path)  # again: unchanged files are left alone
    assert (tmp_path / "Maestro_1.mid").stat().st_mtime_ns == before


def test_a_primer_is_the_span_shifted_to_zero_with_the_pedal_it_starts_under(tmp_path: Path) -> None:
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    for second in range(100):  # one note a second; the one at 69 s rings for 10 s
        piano.notes.append(pretty_midi.Note(80, 60 + second % 12, second, second + (10 if second == 69 else 0.5)))
    piano.control_changes += [pretty_midi.ControlChange(64, 127, 20.0), pretty_midi.ControlChange(64, 0, 45.0)]
    midi.instruments.append(piano)
    source = tmp_path / "piece.mid"
    midi.write(str(source))

    assert pp.cut_primer(source, tmp_path / "cut.mid", 30.0, 70.0) == 40
    cut = pretty_midi.PrettyMIDI(str(tmp_path / "cut.mid")).instruments[0]
    starts = sorted(round(n.start, 3) for n in cut.notes)
    assert starts == [float(s) for s in range(40)]
    assert max(n.end for n in cut.notes) == pytest.approx(40 + pp.PRIMER_TAIL_S, abs=0.01)
    pedal = sorted((round(c.time, 3), c.value) for c in cut.control_changes if c.number == 64)
    assert pedal == [(0.0, 127), (15.0, 0)]
