"""The studio's output folder: takes and uploaded primers as plain files, found again by scanning.

Every file has a name the studio made: ``take-0007.mid`` / ``.png`` / ``.ogg`` (the audio) and
``take-0007.json`` (its details, written last, so a take is listed only once it is complete),
``primer-0003.mid`` for an upload. Files are looked up by name only (`TakeStore.file`): a name
must match `FILE_NAME` and be a regular file directly in the folder, so a request can never
reach a path outside it. A take's files are served (and usable as a primer) only once its details
file exists: the files of a take cut short (the studio killed while writing it) stay on disk,
unlisted and unused, and numbering goes on after them. Upload folders (``.upload-*``) left by a
killed studio are removed when the folder is opened.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from perceiver_ar_music.runtime.atomic import write_bytes_atomic, write_json_atomic
from perceiver_ar_music.runtime.errors import UserError

FILE_NAME = re.compile(r"(take|primer)-[0-9]{4,9}\.(mid|png|json|ogg|flac|wav)")
PRIMER_NAME = re.compile(r"(take|primer)-[0-9]{4,9}\.mid")
NUMBERED = re.compile(r"(take|primer)-([0-9]{4,9})\.")
UPLOAD_PREFIX = ".upload-"  # the studio's own temporary upload folders
DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024 * 1024  # a MIDI file of an hour of dense piano is ~0.5 MB


class TakeStore:
    """Names, writes and lists the files of one output folder (created if needed)."""

    def __init__(self, folder: Path, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = max_upload_bytes
        self.lock = threading.Lock()
        self.reserved: dict[str, int] = {"take": 0, "primer": 0}
        self.remove_leftovers()

    def remove_leftovers(self) -> None:
        """Remove the temporary upload folders of a studio that was killed (never a user's file)."""
        for path in self.folder.glob(UPLOAD_PREFIX + "*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

    def file(self, name: str) -> Path | None:
        """The regular file `name` directly in the folder, or None (bad name, missing, a link, or
        a file of a take whose details were never written)."""
        if not FILE_NAME.fullmatch(name):
            return None
        path = self.folder / name
        if name.startswith("take-") and not _regular(self.folder / f"{name.split('.')[0]}.json"):
            return None
        return path if _regular(path) else None

    def primer_file(self, name: str) -> Path:
        """A take's or an upload's MIDI file to use as a primer, or a UserError."""
        path = self.file(name) if PRIMER_NAME.fullmatch(name) else None
        if path is None:
            raise UserError(f"no such primer: {name!r}")
        return path

    def reserve(self, kind: str, count: int = 1) -> list[str]:
        """`count` fresh stems ``<kind>-NNNN``, numbered after every file of that kind in the folder."""
        with self.lock:
            used = [int(m.group(2)) for p in self.folder.iterdir() if (m := NUMBERED.match(p.name)) and m.group(1) == kind]
            first = max([self.reserved[kind], *used]) + 1
            self.reserved[kind] = first + count - 1
            return [f"{kind}-{n:04d}" for n in range(first, first + count)]

    def takes(self) -> list[dict]:
        """The details of every complete take, oldest first (unreadable ones are skipped)."""
        found = []
        for path in self.folder.glob("take-*.json"):
            if not FILE_NAME.fullmatch(path.name):
                continue
            try:
                take = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(take, dict) and take.get("name") == path.stem:
                found.append(take)
        return sorted(found, key=lambda take: take["name"])

    def save_take(self, take: dict) -> None:
        """Write a take's details (its files are already written): it is listed from now on."""
        write_json_atomic(self.folder / f"{take['name']}.json", take)

    def save_upload(self, data: bytes, check: Callable[[Path], None]) -> str:
        """Keep an uploaded MIDI file as ``primer-NNNN.mid`` once `check(path)` accepts it (it
        raises a UserError for a file it refuses); returns the name. Nothing is kept otherwise."""
        check_upload_bytes(data, self.max_upload_bytes)
        with tempfile.TemporaryDirectory(prefix=UPLOAD_PREFIX, dir=self.folder) as tmp:
            path = Path(tmp) / "upload.mid"
            path.write_bytes(data)
            check(path)
        name = self.reserve("primer")[0] + ".mid"
        write_bytes_atomic(self.folder / name, data)
        return name


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def check_upload_bytes(data: bytes, limit: int) -> None:
    """A UserError unless `data` looks like a Standard MIDI File no larger than `limit` bytes."""
    if len(data) > limit:
        raise UserError(f"the file is too large ({len(data) / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB)")
    if not data:
        raise UserError("the file is empty")
    if not data.startswith(b"MThd"):
        raise UserError("not a MIDI file (it does not start with a MIDI header)")
