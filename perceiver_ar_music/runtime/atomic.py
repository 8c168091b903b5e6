"""Atomic file and directory writes: a run killed at any moment leaves the old file intact."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    Folders it creates for `target` are removed again when the write fails (a full disk leaves
    no empty folder behind)."""
    target = Path(target)
    created = _make_parents(target.parent)
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        created = []
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        for folder in created:  # innermost first; only if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `target` atomically."""
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _directory_beside(target: Path, suffix: str) -> Path:
    """A fresh hidden directory in `target`'s folder (created), with the usual permissions."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target`.

    An existing `target` is moved aside first and removed only after the new one is in place,
    so at every instant either the old or the new complete directory exists under a known name.
    """
    target = Path(target)
    tmp = _directory_beside(target, ".tmp")
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def staged_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success its files join `target`.

    For outputs written into a folder that may already hold other files (which are kept): a
    failure leaves `target` as it was (not even created), success moves every new file in,
    each by an atomic rename (a file of the same name is replaced).
    """
    target = Path(target)
    tmp = _directory_beside(target, ".partial")
    try:
        yield tmp
        _fsync_dir(tmp)
        if not target.exists():
            os.replace(tmp, target)
        else:
            for item in sorted(tmp.iterdir()):
                os.replace(item, target / item.name)
            _fsync_dir(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def os_error_text(exc: OSError) -> str:
    """One line for a file-system error: its reason and the path it concerns."""
    reason = exc.strerror or exc.__class__.__name__
    return f"{reason}: {exc.filename}" if exc.filename is not None else reason


def check_writable_dir(folder: str | os.PathLike[str], what: str) -> Path:
    """Check, without creating anything, that `folder` exists and takes new files or can be
    created; else a one-line UserError naming `what` (e.g. "--out").

    Call it before long work so that an unwritable output fails at once, not after the work,
    and leaves no empty folder behind.
    """
    from perceiver_ar_music.runtime.errors import UserError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is not a folder" if existing == folder else f"is under {existing}, which is a file"
        raise UserError(f"{what} {folder} {where}")
    if existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to {what} {folder}: cannot create folders in {existing}")
        return folder
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write to {what} {folder}: {os_error_text(exc)}") from None
    return folder


def check_writable_file(target: str | os.PathLike[str], what: str) -> Path:
    """Check that a file can be written (atomically) at `target`, without creating anything;
    else a one-line UserError naming `what`. Refuses a folder where the file should go."""
    from perceiver_ar_music.runtime.errors import UserError

    target = Path(target)
    if target.is_dir():
        raise UserError(f"{what} {target} is a folder, not a file")
    check_writable_dir(target.parent, f"the folder of {what}")
    return target
