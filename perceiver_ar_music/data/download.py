"""Fetch, verify and unpack the MAESTRO v3 MIDI-only archive (stdlib urllib, resumable).

The archive is streamed into ``<out>/.maestro-v3.0.0-midi.zip.part``; an interrupted run keeps
the part and the next run resumes it with an HTTP Range request. Once the size and SHA-256
match, the part is renamed to ``<out>/maestro-v3.0.0-midi.zip`` and unpacked through a
temporary folder that is renamed into place as ``<out>/maestro-v3.0.0`` in one step.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from perceiver_ar_music.runtime.atomic import atomic_directory, check_writable_dir, os_error_text
from perceiver_ar_music.runtime.errors import UserError

MAESTRO_URL = (
    "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip"
)
MAESTRO_SHA256 = "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c"
MAESTRO_SIZE = 58_416_533
ARCHIVE_NAME = "maestro-v3.0.0-midi.zip"
DATASET_DIR_NAME = "maestro-v3.0.0"
CSV_NAME = "maestro-v3.0.0.csv"
MIDI_SUFFIXES = (".midi", ".mid")

# Byte sizes of the archives whose SHA-256 we know; any other checksum takes the server's size.
KNOWN_SIZES: dict[str, int] = {MAESTRO_SHA256: MAESTRO_SIZE}

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


class _TransferBroken(Exception):
    """The connection failed mid-transfer; whatever arrived is kept in the part file."""


def part_path(out: Path) -> Path:
    """Where the archive is downloaded to before it is verified."""
    return out / f".{ARCHIVE_NAME}.part"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch_resumable(
    url: str,
    part: Path,
    *,
    expected_size: int | None = None,
    attempts: int = 3,
    timeout: float = 60.0,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> int:
    """Download `url` into `part`, resuming what is already there; return the final byte count.

    A connection that breaks mid-transfer is retried (resuming) up to `attempts` requests in
    all; anything else (unreachable host, HTTP error, wrong size) is a UserError at once.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    failure = ""
    for attempt in range(1, attempts + 1):
        offset = part.stat().st_size if part.exists() else 0
        if expected_size is not None and offset > expected_size:
            print(f"{part} is larger than the expected {expected_size} bytes; restarting from zero")
            part.unlink()
            offset = 0
        if expected_size is not None and offset == expected_size:
            return offset
        try:
            return _transfer(url, part, offset, expected_size, timeout, progress)
        except _TransferBroken as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            kept = part.stat().st_size if part.exists() else 0
            print(f"\ninterrupted: {kept} bytes kept in {part}; re-run to resume", file=sys.stderr)
            raise
        if attempt < attempts:
            print(f"{failure}; retrying ({attempt + 1}/{attempts})", file=sys.stderr)
            time.sleep(retry_wait)
    kept = part.stat().st_size if part.exists() else 0
    raise UserError(
        f"download of {url} failed: {failure}; {kept} bytes kept in {part}, re-run to resume"
    )


def _transfer(
    url: str, part: Path, offset: int, expected_size: int | None, timeout: float, progress: bool
) -> int:
    """One request: resume from `offset` (206) or restart from zero (200)."""
    headers = {"User-Agent": "perceiver-music"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return _after_unsatisfiable_range(part, offset, exc.headers.get("Content-Range"))
        raise UserError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}; "
            "check the URL, re-running resumes"
        ) from None
    except urllib.error.URLError as exc:
        raise UserError(
            f"cannot reach {url}: {exc.reason}; check the connection, re-running resumes"
        ) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _TransferBroken(f"no response ({exc or type(exc).__name__})") from None

    with response:
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _TransferBroken(
                    f"server resumed at byte {start} instead of {offset}; restarting from zero"
                )
        elif response.status == 200:
            if offset:
                print("server does not support resuming; restarting from zero")
                offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise UserError(f"download of {url} failed: unexpected HTTP {response.status}")
        if expected_size is not None and total is not None and total != expected_size:
            raise UserError(
                f"{url} offers {total} bytes but the archive has {expected_size}; "
                "wrong URL? (pass --sha256 too for a different file)"
            )
        goal = expected_size if expected_size is not None else total
        received = _stream_into(response, part, offset, goal, progress)

    if goal is not None and received > goal:
        part.unlink()
        raise UserError(
            f"{url} sent {received} bytes, more than the {goal} announced; deleted {part}, re-run"
        )
    if goal is not None and received < goal:
        raise _TransferBroken(f"connection closed after {received} of {goal} bytes")
    return received


def _stream_into(
    response: http.client.HTTPResponse, part: Path, offset: int, goal: int | None, progress: bool
) -> int:
    """Append the body to `part` (truncating first when `offset` is 0); return its new size."""
    from tqdm import tqdm

    received = offset
    with open(part, "ab" if offset else "wb") as out, tqdm(
        total=goal,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=ARCHIVE_NAME,
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        try:
            while block := response.read1(_CHUNK):  # whatever has arrived, so a stall loses nothing
                out.write(block)
                received += len(block)
                bar.update(len(block))
        except (http.client.HTTPException, OSError) as exc:
            reason = exc or type(exc).__name__
            raise _TransferBroken(f"connection lost after {received} bytes ({reason})") from None
    return received


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size or None) from a 206 Content-Range header."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        raise _TransferBroken(f"server sent a partial response with a bad Content-Range {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _after_unsatisfiable_range(part: Path, offset: int, content_range: str | None) -> int:
    """HTTP 416 for `bytes=offset-`: the part is complete if it matches the announced size."""
    match = _UNSATISFIED_RANGE.fullmatch((content_range or "").strip())
    if match and int(match.group(1)) == offset:
        return offset
    part.unlink()
    raise _TransferBroken("server refused the resume point; restarting from zero")


def verify_file(path: Path, sha256: str, size: int | None) -> None:
    """Raise UserError (after deleting `path`) unless its size and SHA-256 match."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise UserError(
            f"{path.name} has {actual_size} bytes, expected {size}; deleted it, "
            "re-run to download again"
        )
    actual = sha256_of(path)
    if actual != sha256.lower():
        path.unlink()
        raise UserError(
            f"{path.name} has sha256 {actual}, expected {sha256.lower()}; deleted it, "
            "re-run to download again"
        )


def check_member_name(name: str) -> None:
    """Reject archive member names that could write outside the unpack folder.

    Refused: absolute names, drive letters, ``..`` and empty components (``a//b``, which becomes
    absolute once a prefix is stripped), with either slash; NUL bytes.
    """
    parts = re.split(r"[/\\]", name.rstrip("/"))
    if (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts
            or "" in parts or "\0" in name):
        raise UserError(
            f"archive member {name!r} points outside the dataset folder; refusing to unpack"
        )


def member_target(folder: Path, relative: str) -> Path:
    """Where member `relative` goes under `folder`; UserError unless it resolves inside it."""
    check_member_name(relative)
    target = folder.joinpath(*PurePosixPath(relative).parts)
    base = folder.resolve()
    if not target.resolve().is_relative_to(base) or target.resolve() == base:
        raise UserError(
            f"archive member {relative!r} points outside the dataset folder; refusing to unpack"
        )
    return target


def _dataset_root(names: list[str]) -> str:
    """The member-name prefix of the folder holding the CSV ('' when it sits at the top)."""
    csvs = [name for name in names if PurePosixPath(name).name == CSV_NAME]
    if len(csvs) != 1:
        found = "no" if not csvs else f"{len(csvs)} copies of"
        raise UserError(f"archive has {found} {CSV_NAME}; not a MAESTRO v3 archive")
    return csvs[0][: -len(CSV_NAME)]


def unpack_maestro(archive: Path, dataset_dir: Path) -> int:
    """Unpack the dataset folder of `archive` into `dataset_dir` atomically; return the MIDI count.

    The folder that holds ``maestro-v3.0.0.csv`` becomes `dataset_dir`, whatever it is called
    inside the archive; members outside it are skipped. Every member's CRC is checked on read.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            for info in members:
                check_member_name(info.filename)
            root = _dataset_root([info.filename for info in members])
            wanted = [info for info in members if info.filename.startswith(root)]
            midi_count = sum(info.filename.lower().endswith(MIDI_SUFFIXES) for info in wanted)
            if midi_count == 0:
                raise UserError(
                    f"archive has no .midi files beside {CSV_NAME}; not a MAESTRO archive"
                )
            with atomic_directory(dataset_dir) as tmp:
                for info in wanted:
                    target = member_target(tmp, info.filename[len(root):])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "xb") as dst:  # never over a file
                        shutil.copyfileobj(src, dst, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise UserError(
            f"{archive} is not a valid zip archive ({exc}); delete it and re-run"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot unpack {archive} into {dataset_dir}: {os_error_text(exc)}") from None
    return midi_count


def download_maestro(
    out: Path,
    *,
    url: str = MAESTRO_URL,
    sha256: str = MAESTRO_SHA256,
    keep_archive: bool = False,
    attempts: int = 3,
    timeout: float = 60.0,
    retry_wait: float = 2.0,
    progress: bool = True,
) -> Path:
    """Make ``<out>/maestro-v3.0.0`` hold the unpacked dataset; return that folder.

    Does nothing when it is already unpacked, and does not download when a verified archive
    is already in `out`.
    """
    dataset_dir = out / DATASET_DIR_NAME
    if (dataset_dir / CSV_NAME).is_file():
        print(f"MAESTRO is already unpacked in {dataset_dir}; nothing to do")
        return dataset_dir
    check_writable_dir(out, "--out")
    created = not out.exists()
    try:
        return _download_and_unpack(out, url, sha256, keep_archive, attempts, timeout, retry_wait, progress)
    except OSError as exc:
        raise UserError(f"cannot write to --out {out}: {os_error_text(exc)}") from None
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failure before the first byte leaves no empty folder behind


def _download_and_unpack(
    out: Path, url: str, sha256: str, keep_archive: bool, attempts: int, timeout: float,
    retry_wait: float, progress: bool,
) -> Path:
    dataset_dir = out / DATASET_DIR_NAME
    out.mkdir(parents=True, exist_ok=True)
    size = KNOWN_SIZES.get(sha256.lower())
    archive = out / ARCHIVE_NAME
    if archive.exists():
        print(f"verifying the existing {archive}")
        try:
            verify_file(archive, sha256, size)
        except UserError as exc:
            raise UserError(f"existing archive was wrong: {exc}") from None
    else:
        part = part_path(out)
        print(f"downloading {url} -> {out}")
        fetch_resumable(
            url,
            part,
            expected_size=size,
            attempts=attempts,
            timeout=timeout,
            retry_wait=retry_wait,
            progress=progress,
        )
        verify_file(part, sha256, size)
        os.replace(part, archive)
    print(f"archive verified (sha256 {sha256.lower()}); unpacking")
    midi_count = unpack_maestro(archive, dataset_dir)
    if keep_archive:
        print(f"kept the archive at {archive}")
    else:
        archive.unlink()
    print(f"unpacked {midi_count} MIDI files into {dataset_dir}")
    return dataset_dir
