"""download-maestro against a fake MAESTRO archive served on 127.0.0.1 by handlers written here."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import socket
import threading
import zipfile
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import mido
import pytest
import tqdm

from perceiver_ar_music.data import download
from perceiver_ar_music.cli import main
from perceiver_ar_music.data.download import (
    ARCHIVE_NAME,
    CSV_NAME,
    DATASET_DIR_NAME,
    check_member_name,
    fetch_resumable,
    part_path,
    unpack_maestro,
)
from perceiver_ar_music.runtime.errors import UserError

CSV_TEXT = (
    "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n"
    "A,One,train,2004,2004/a.midi,2004/a.wav,1.0\n"
    "B,Two,test,2018,2018/b.midi,2018/b.wav,1.0\n"
)


def tiny_midi(pitch: int) -> bytes:
    """A real one-track MIDI file with a short run of notes."""
    track = mido.MidiTrack()
    for step in range(40):
        track.append(mido.Message("note_on", note=pitch + step % 12, velocity=64, time=0))
        track.append(mido.Message("note_off", note=pitch + step % 12, velocity=0, time=120))
    midi = mido.MidiFile()
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def fake_files(root: str = "maestro-v3.0.0/") -> dict[str, bytes]:
    return {
        root + CSV_NAME: CSV_TEXT.encode(),
        root + "2004/a.midi": tiny_midi(60),
        root + "2018/b.midi": tiny_midi(48),
        root + "LICENSE": b"CC BY-NC-SA 4.0\n",
    }


def make_zip(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


ARCHIVE = make_zip(fake_files())
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()
HALF = len(ARCHIVE) // 2


class FakeServer:
    """What the handler serves and how it misbehaves; records every request's Range header."""

    def __init__(self, data: bytes, mode: str) -> None:
        self.data = data
        self.mode = mode
        self.ranges: list[str | None] = []
        self.release = threading.Event()


class Handler(BaseHTTPRequestHandler):
    """Modes: ok honours Range (206/416); cut_first stops the first reply halfway; stall_first
    stops it halfway and hangs; ignore_range always answers 200; wrong_start answers 206 from
    byte 0; missing answers 404."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        fake.ranges.append(requested)
        first = len(fake.ranges) == 1
        size = len(fake.data)
        if fake.mode == "missing":
            self.send_error(404, "Not Found")
            return
        partial = requested is not None and fake.mode != "ignore_range"
        start = 0
        if partial:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fake.mode == "wrong_start":
                start = 0
        body = fake.data[start:]
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and fake.mode in ("cut_first", "stall_first"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fake.mode == "stall_first":
                fake.release.wait(5)
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextmanager
def serve(data: bytes = ARCHIVE, mode: str = "ok") -> Iterator[tuple[str, FakeServer]]:
    fake = FakeServer(data, mode)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{ARCHIVE_NAME}", fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def cli(out: Path, url: str, *extra: str, sha256: str = ARCHIVE_SHA) -> int:
    return main(
        ["download-maestro", "--out", str(out), "--url", url, "--sha256", sha256]
        + ["--timeout", "5", *extra]
    )


def fetch(url: str, part: Path, **kwargs: object) -> int:
    options = {"attempts": 1, "timeout": 5.0, "retry_wait": 0.0, "progress": False, **kwargs}
    return fetch_resumable(url, part, **options)  # type: ignore[arg-type]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line, which must be the CLI's one-line error."""
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("perceiver-music download-maestro: error: ")
    return line


def assert_unpacked(dataset: Path, files: dict[str, bytes], root: str = "maestro-v3.0.0/") -> None:
    for name, data in files.items():
        assert (dataset / name[len(root):]).read_bytes() == data


# --- the whole command -------------------------------------------------------------------------


def test_full_download_unpacks_and_deletes_the_archive(tmp_path: Path, capsys) -> None:
    out = tmp_path / "maestro"
    with serve() as (url, fake):
        assert cli(out, url) == 0
    assert fake.ranges == [None]
    assert_unpacked(out / DATASET_DIR_NAME, fake_files())
    assert sorted(p.name for p in out.iterdir()) == [DATASET_DIR_NAME]  # no archive, part or temp
    stdout = capsys.readouterr().out
    assert "unpacked 2 MIDI files" in stdout
    assert f"next: perceiver-music prepare --data {out} --out {out / 'prepared'}" in stdout


def test_kept_archive_is_not_fetched_again(tmp_path: Path, capsys) -> None:
    out = tmp_path / "maestro"
    with serve() as (url, fake):
        assert cli(out, url, "--keep-archive") == 0
        assert (out / ARCHIVE_NAME).read_bytes() == ARCHIVE
        capsys.readouterr()
        assert cli(out, url) == 0
        assert "already unpacked" in capsys.readouterr().out
        shutil.rmtree(out / DATASET_DIR_NAME)
        assert cli(out, url) == 0
    assert fake.ranges == [None]  # the second unpack used the verified archive on disk
    assert_unpacked(out / DATASET_DIR_NAME, fake_files())
    assert not (out / ARCHIVE_NAME).exists()


def test_checksum_mismatch_deletes_the_download(tmp_path: Path, capsys) -> None:
    out = tmp_path / "maestro"
    with serve() as (url, _):
        assert cli(out, url, sha256="0" * 64) == 2
    line = error_line(capsys)
    assert f"sha256 {ARCHIVE_SHA}" in line and "deleted" in line
    assert not part_path(out).exists()
    assert not (out / ARCHIVE_NAME).exists()
    assert not (out / DATASET_DIR_NAME).exists()


def test_wrong_existing_archive_is_deleted_and_reported(tmp_path: Path, capsys) -> None:
    out = tmp_path / "maestro"
    out.mkdir()
    (out / ARCHIVE_NAME).write_bytes(b"not the archive")
    with serve() as (url, fake):
        assert cli(out, url) == 2
    assert "existing archive" in error_line(capsys)
    assert fake.ranges == []
    assert not (out / ARCHIVE_NAME).exists()


def test_http_404_is_one_line(tmp_path: Path, capsys) -> None:
    with serve(mode="missing") as (url, _):
        assert cli(tmp_path / "maestro", url) == 2
    line = error_line(capsys)
    assert url in line and "HTTP 404" in line and "re-running resumes" in line


def test_connection_refused_is_one_line(tmp_path: Path, capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{ARCHIVE_NAME}"
    assert cli(tmp_path / "maestro", url) == 2
    line = error_line(capsys)
    assert f"cannot reach {url}" in line and "re-running resumes" in line


def test_path_traversal_member_is_rejected_before_writing(tmp_path: Path, capsys) -> None:
    evil = make_zip({**fake_files(), "maestro-v3.0.0/../../evil.txt": b"gotcha"})
    out = tmp_path / "a" / "maestro"
    with serve(evil) as (url, _):
        assert cli(out, url, sha256=hashlib.sha256(evil).hexdigest()) == 2
    assert "outside the dataset folder" in error_line(capsys)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (out / DATASET_DIR_NAME).exists()


@pytest.mark.parametrize("evil_name", ["maestro-v3.0.0//{target}", "maestro-v3.0.0/2004//{target}"])
def test_double_slash_member_cannot_escape_to_an_absolute_path(tmp_path: Path, capsys, evil_name: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    evil = make_zip({**fake_files(), evil_name.format(target=str(victim).lstrip("/")): b"gotcha"})
    out = tmp_path / "a" / "maestro"
    with serve(evil) as (url, _):
        assert cli(out, url, sha256=hashlib.sha256(evil).hexdigest()) == 2
    assert "outside the dataset folder" in error_line(capsys)
    assert victim.read_text() == "precious"
    assert not (out / DATASET_DIR_NAME).exists()


def test_member_target_is_checked_on_the_final_path(tmp_path: Path) -> None:
    assert download.member_target(tmp_path, "2004/a.midi") == tmp_path / "2004" / "a.midi"
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(UserError, match="outside the dataset folder"):
        download.member_target(tmp_path, "link/x.txt")
    with pytest.raises(UserError, match="outside the dataset folder"):
        download.member_target(tmp_path, "/tmp/x.txt")


def test_unwritable_out_is_one_line_before_any_download(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    with serve(make_zip(fake_files())) as (url, fake):
        assert cli(tmp_path / "file" / "maestro", url) == 2
        assert fake.ranges == []  # refused before any request
    line = error_line(capsys)
    assert "is under" in line and "which is a file" in line


def test_failed_download_leaves_no_empty_out_folder(tmp_path: Path, capsys) -> None:
    with serve(mode="missing") as (url, _):
        assert cli(tmp_path / "new" / "maestro", url) == 2
    assert not (tmp_path / "new" / "maestro").exists()


def test_bad_arguments_are_one_line(tmp_path: Path, capsys) -> None:
    assert cli(tmp_path, "http://127.0.0.1:9/x.zip", sha256="xyz") == 2
    assert "--sha256" in error_line(capsys)
    assert cli(tmp_path, "ftp://example.org/x.zip") == 2
    assert "--url" in error_line(capsys)


# --- resuming ---------------------------------------------------------------------------------


def test_cut_connection_keeps_the_part_and_a_rerun_resumes_with_range(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    with serve(mode="cut_first") as (url, fake):
        broken = rf"{re.escape(url)} failed: connection closed after {HALF} "
        with pytest.raises(UserError, match=broken):
            fetch(url, part)
        assert part.read_bytes() == ARCHIVE[:HALF]
        assert fetch(url, part) == len(ARCHIVE)
    assert fake.ranges == [None, f"bytes={HALF}-"]
    assert part.read_bytes() == ARCHIVE


def test_cut_connection_is_resumed_within_one_run(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    with serve(mode="cut_first") as (url, fake):
        fetch(url, part, attempts=2, expected_size=len(ARCHIVE))
    assert fake.ranges == [None, f"bytes={HALF}-"]
    assert part.read_bytes() == ARCHIVE


def test_silent_server_times_out_and_keeps_the_part(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    with serve(mode="stall_first") as (url, _):
        with pytest.raises(UserError, match="re-run to resume"):
            fetch(url, part, timeout=0.3)
    assert part.read_bytes() == ARCHIVE[:HALF]


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(b"\xff" * HALF)  # wrong bytes: appending to them would corrupt the file
    with serve(mode="ignore_range") as (url, fake):
        fetch(url, part)
    assert fake.ranges == [f"bytes={HALF}-"]
    assert part.read_bytes() == ARCHIVE


def test_resume_at_the_wrong_offset_restarts_from_zero(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(ARCHIVE[:HALF])
    with serve(mode="wrong_start") as (url, fake):
        fetch(url, part, attempts=2)
    assert fake.ranges == [f"bytes={HALF}-", None]
    assert part.read_bytes() == ARCHIVE


def test_part_larger_than_expected_restarts_from_zero(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(ARCHIVE + b"junk")
    with serve() as (url, fake):
        fetch(url, part, expected_size=len(ARCHIVE))
    assert fake.ranges == [None]
    assert part.read_bytes() == ARCHIVE


def test_complete_part_of_known_size_is_not_fetched(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(ARCHIVE)
    with serve() as (url, fake):
        assert fetch(url, part, expected_size=len(ARCHIVE)) == len(ARCHIVE)
    assert fake.ranges == []


def test_complete_part_of_unknown_size_is_confirmed_by_416(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    part.write_bytes(ARCHIVE)
    with serve() as (url, fake):
        assert fetch(url, part) == len(ARCHIVE)
    assert fake.ranges == [f"bytes={len(ARCHIVE)}-"]
    assert part.read_bytes() == ARCHIVE


def test_server_offering_the_wrong_size_is_refused(tmp_path: Path) -> None:
    part = tmp_path / "x.part"
    with serve() as (url, _):
        with pytest.raises(UserError, match=f"offers {len(ARCHIVE)} bytes"):
            fetch(url, part, expected_size=len(ARCHIVE) + 1)


def test_ctrl_c_keeps_the_part(tmp_path: Path, monkeypatch, capsys) -> None:
    def interrupt(self, n=1):
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.tqdm, "update", interrupt)
    part = tmp_path / "x.part"
    with serve() as (url, _):
        with pytest.raises(KeyboardInterrupt):
            fetch(url, part)
    kept = part.read_bytes()  # the first block was written before the interrupt
    assert kept and ARCHIVE.startswith(kept)
    assert "re-run to resume" in capsys.readouterr().err


# --- unpacking --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "maestro-v3.0.0//etc/x", "a/\\x", "maestro-v3.0.0/../../x", "..\\x.midi", "a\\..\\..\\x", "C:/x", "\\x"]
)
def test_unsafe_member_names_are_rejected(name: str) -> None:
    with pytest.raises(UserError, match="outside the dataset folder"):
        check_member_name(name)


@pytest.mark.parametrize("name", ["maestro-v3.0.0/2004/a.midi", "a..b/c.midi", "LICENSE"])
def test_safe_member_names_pass(name: str) -> None:
    check_member_name(name)


@pytest.mark.parametrize("root", ["", "some-other-name/"])
def test_any_archive_root_unpacks_to_the_same_layout(tmp_path: Path, root: str) -> None:
    archive = tmp_path / "a.zip"
    outside = {"__MACOSX/._junk": b"x"} if root else {}  # beside the dataset folder: skipped
    archive.write_bytes(make_zip({**fake_files(root), **outside}))
    assert unpack_maestro(archive, tmp_path / DATASET_DIR_NAME) == 2
    assert_unpacked(tmp_path / DATASET_DIR_NAME, fake_files(root), root)
    dataset = tmp_path / DATASET_DIR_NAME
    unpacked = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    assert unpacked == {CSV_NAME, "2004/a.midi", "2018/b.midi", "LICENSE"}


def test_archive_without_the_csv_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(make_zip({"x/2004/a.midi": tiny_midi(60)}))
    with pytest.raises(UserError, match=f"no {CSV_NAME}"):
        unpack_maestro(archive, tmp_path / DATASET_DIR_NAME)


def test_corrupt_member_fails_its_crc_and_leaves_nothing(tmp_path: Path) -> None:
    data = bytearray(make_zip(fake_files(), zipfile.ZIP_STORED))
    midi = tiny_midi(48)
    at = bytes(data).index(midi) + len(midi) // 2
    data[at] ^= 0xFF
    archive = tmp_path / "a.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not a valid zip archive"):
        unpack_maestro(archive, tmp_path / DATASET_DIR_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_interrupted_unpack_leaves_no_half_tree(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "a.zip"
    archive.write_bytes(ARCHIVE)
    real_copy = download.shutil.copyfileobj
    calls = []

    def copy_then_interrupt(src, dst, length=0):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_copy(src, dst, length)

    monkeypatch.setattr(download.shutil, "copyfileobj", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        unpack_maestro(archive, tmp_path / DATASET_DIR_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
