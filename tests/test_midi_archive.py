"""Zip archives of MIDI files from strangers: flat names inside the destination only, limits
checked before the work (a zip bomb, a lying header, too many entries), one-line errors."""

from __future__ import annotations

import io
import stat
import struct
import time
import zipfile
from pathlib import Path

import pytest

from perceiver_ar_music.data.midi_archive import flat_name, is_zip, unpack_midi
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.tools.midi_factory import write_performance


@pytest.fixture(scope="module")
def midi(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("midi") / "piece.mid"
    write_performance(path, seed=1, num_notes=40)
    return path.read_bytes()


def archive(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_midi_members_land_flat_in_the_destination_and_the_rest_is_skipped_with_reasons(tmp_path, midi):
    data = archive({"songs/a.mid": midi, "songs/deeper/b.MIDI": midi, "other/a.mid": midi, "notes.txt": b"hello",
                    "__MACOSX/songs/._a.mid": b"junk", ".hidden.mid": midi, "inner.zip": archive({"c.mid": midi}),
                    "fake.mid": b"not midi at all", "empty/": b""})
    dest = tmp_path / "dest"
    dest.mkdir()
    out = unpack_midi(io.BytesIO(data), dest)
    assert [p.name for p in out.files] == ["a.mid", "b.mid", "a-2.mid"]
    assert everything_under(dest) == ["a-2.mid", "a.mid", "b.mid"]
    assert all(p.read_bytes() == midi for p in out.files)
    reasons = dict(out.skipped)
    assert reasons["notes.txt"].startswith("not a MIDI file")
    assert reasons["inner.zip"].startswith("an archive inside")
    assert reasons["fake.mid"] == "not a MIDI file (no MIDI header)"
    assert "hidden" in reasons["__MACOSX/songs/._a.mid"] and "hidden" in reasons[".hidden.mid"]
    assert "empty/" not in reasons


def test_paths_that_climb_out_or_are_absolute_stay_inside(tmp_path, midi):
    data = archive({"../../evil.mid": midi, "/etc/cron.d/x.mid": midi, "C:\\Windows\\y.mid": midi,
                    "..\\..\\z.mid": midi, "a/../../../w.mid": midi, "..": midi, "name with ünïcode & $(rm).mid": midi})
    dest = tmp_path / "inside" / "dest"
    dest.mkdir(parents=True)
    out = unpack_midi(io.BytesIO(data), dest)
    assert len(out.files) == 6, out.skipped  # ".." has no MIDI name
    assert everything_under(tmp_path) == ["inside", "inside/dest", *(f"inside/dest/{p.name}" for p in sorted(out.files))]
    assert {p.name for p in out.files} >= {"evil.mid", "x.mid", "y.mid", "z.mid", "w.mid"}
    assert all(p.parent == dest and p.name.isascii() and "/" not in p.name for p in out.files)


def test_a_link_in_the_archive_is_never_followed(tmp_path, midi):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("link.mid")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("real.mid", midi)
    out = unpack_midi(io.BytesIO(buffer.getvalue()), tmp_path)
    assert [p.name for p in out.files] == ["real.mid"]
    assert dict(out.skipped)["link.mid"].startswith("a link")


def test_a_zip_bomb_is_refused_in_milliseconds(tmp_path):
    bomb = archive({f"part{i}.mid": b"MThd" + bytes(1_000_000) for i in range(300)})  # 300 MB in about 300 KB
    assert len(bomb) < 2_000_000
    started = time.perf_counter()
    with pytest.raises(UserError, match="would inflate to 286 MB; the limit is 256 MB"):
        unpack_midi(io.BytesIO(bomb), tmp_path)
    assert time.perf_counter() - started < 1.0
    assert not list(tmp_path.iterdir())
    one_big = archive({"big.mid": b"MThd" + bytes(50_000_000)})
    out = unpack_midi(io.BytesIO(one_big), tmp_path)
    assert not out.files and "too large (47.7 MB; the limit is 2 MB)" in dict(out.skipped)["big.mid"]


def lying_header(data: bytes, name: bytes, claimed: int) -> bytes:
    """`data` (a one-member archive) with the member's sizes in both headers set to `claimed`."""
    data = bytearray(data)
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, claimed)  # uncompressed size
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, claimed)
    return bytes(data)


def test_a_member_whose_header_lies_about_its_size_is_refused(tmp_path):
    honest = archive({"liar.mid": b"MThd" + bytes(10_000_000)})
    with pytest.raises(UserError) as caught:
        unpack_midi(io.BytesIO(lying_header(honest, b"liar.mid", 1000)), tmp_path)
    message = str(caught.value)
    assert "'liar.mid'" in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def test_limits_on_entries_and_on_what_the_archive_inflates_to_are_applied_as_it_is_read(tmp_path, midi):
    many = archive({f"{i}.txt": b"" for i in range(30)})
    with pytest.raises(UserError, match="has 30 entries; the limit is 20"):
        unpack_midi(io.BytesIO(many), tmp_path, max_members=20)
    three = archive({f"{i}.mid": midi for i in range(3)})
    with pytest.raises(UserError, match="inflate to"):
        unpack_midi(io.BytesIO(three), tmp_path, max_total_bytes=2 * len(midi))


@pytest.mark.parametrize("data", [b"PK\x03\x04" + bytes(100), b"not a zip", b""], ids=["truncated", "text", "empty"])
def test_what_is_not_a_zip_is_one_line(tmp_path, data):
    with pytest.raises(UserError, match="^not a readable zip archive") as caught:
        unpack_midi(io.BytesIO(data), tmp_path)
    assert "\n" not in str(caught.value)


def test_flat_names_and_zip_detection(midi):
    taken: set[str] = set()
    assert [flat_name(n, taken) for n in ["a.mid", "A.MID", "x/y/a.midi", "no-suffix", "...", "a\x00b.mid"]] == \
        ["a.mid", "A-2.mid", "a-3.mid", "no-suffix.mid", "piece.mid", "a_b.mid"]
    assert is_zip(archive({"a.mid": midi})) and is_zip(archive({})) and not is_zip(midi)
