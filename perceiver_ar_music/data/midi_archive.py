"""MIDI files out of a zip archive, taken with limits checked before the work.

An archive from a stranger can be a zip bomb (a few kilobytes that inflate to gigabytes, or
headers that lie about the sizes), can name paths outside the folder it is unpacked into
(``../../.bashrc``, ``/etc/passwd``), or can hold links. So:

- the number of members and every member's declared size are checked before anything is read;
- each member is inflated in chunks and dropped as soon as it passes its limit, whatever its
  header said, and the archive as a whole has a limit on what it may inflate to;
- no path of the archive is used: a MIDI member is written under a fresh flat name made from its
  file name, inside the destination folder only; links, folders, encrypted members, nested
  archives and files that are not MIDI are skipped, each with its reason;
- a member's bytes must start like a Standard MIDI File.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from perceiver_ar_music.runtime.atomic import write_bytes_atomic
from perceiver_ar_music.runtime.errors import UserError

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")
MAX_MEMBERS = 5000  # entries in one archive (folders and skipped files included)
MAX_MEMBER_BYTES = 2 * 1024 * 1024  # one MIDI file (an hour of dense piano is about 0.5 MB)
MAX_TOTAL_BYTES = 256 * 1024 * 1024  # everything one archive may inflate to
CHUNK = 64 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first bytes (the second: an empty archive)
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")
MAX_NAME = 80


@dataclass
class Unpacked:
    """What an archive gave: the MIDI files written and the members skipped, with reasons."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)
    inflated_bytes: int = 0


def is_zip(head: bytes) -> bool:
    """Whether these first bytes are those of a zip archive."""
    return head[:4] in ZIP_MAGIC


def flat_name(member: str, taken: set[str]) -> str:
    """A safe file name for an archive member: its last path part (either slash), unusual
    characters replaced, shortened, a MIDI suffix, and numbered if `taken` has it (then added)."""
    base = re.split(r"[\\/]", member)[-1]
    stem, dot, suffix = base.rpartition(".")
    stem = _UNSAFE.sub("_", stem if dot else base).strip(" .") or "piece"
    stem = stem[:MAX_NAME]
    name, number = f"{stem}.mid", 1
    while name.lower() in taken:
        number += 1
        name = f"{stem}-{number}.mid"
    taken.add(name.lower())
    return name


def unpack_midi(archive: Path | BinaryIO, dest: Path, *, taken: set[str] | None = None,
                max_members: int = MAX_MEMBERS, max_member_bytes: int = MAX_MEMBER_BYTES,
                max_total_bytes: int = MAX_TOTAL_BYTES) -> Unpacked:
    """Write the MIDI members of a zip archive into the folder `dest` under flat names (see the
    module docstring); `taken`: lower-case names already in `dest` (updated). A UserError (one
    line) for an archive that cannot be read or breaks a limit; files written before a limit
    broke stay (the caller unpacks into a folder of its own and drops it on error)."""
    taken = set() if taken is None else taken
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > max_members:
                raise UserError(f"the archive has {len(members)} entries; the limit is {max_members}")
            declared = sum(info.file_size for info in members if _is_midi_name(info.filename))
            if declared > max_total_bytes:
                raise UserError(f"the archive's MIDI files would inflate to {_mb(declared)}; "
                                f"the limit is {_mb(max_total_bytes)}")
            out = Unpacked()
            for info in members:
                reason = _skip_reason(info, max_member_bytes)
                if reason is not None:
                    if reason:  # (folders are skipped silently)
                        out.skipped.append((info.filename, reason))
                    continue
                data = _inflate(zf, info, max_member_bytes, max_total_bytes - out.inflated_bytes)
                out.inflated_bytes += len(data)
                if not data.startswith(b"MThd"):
                    out.skipped.append((info.filename, "not a MIDI file (no MIDI header)"))
                    continue
                path = dest / flat_name(info.filename, taken)
                write_bytes_atomic(path, data)
                out.files.append(path)
            return out
    except zipfile.BadZipFile as exc:
        raise UserError(f"not a readable zip archive ({exc})") from None
    except zipfile.LargeZipFile:
        raise UserError("the archive is a ZIP64 archive larger than this tool reads") from None


def _is_midi_name(name: str) -> bool:
    return PurePosixPath(name.replace("\\", "/")).suffix.lower() in MIDI_SUFFIXES


def _skip_reason(info: zipfile.ZipInfo, max_member_bytes: int) -> str | None:
    """Why a member is not taken ("" for a folder, which needs no word), or None to take it."""
    name = info.filename
    if info.is_dir():
        return ""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a link (links in archives are never followed)"
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "__MACOSX" or parts[-1].startswith("."):
        return "a hidden or system file"
    if name.lower().endswith(".zip"):
        return "an archive inside the archive (not opened)"
    if not _is_midi_name(name):
        return "not a MIDI file (by its name)"
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.file_size > max_member_bytes:
        return f"too large ({info.file_size / 2**20:.1f} MB; the limit is {_mb(max_member_bytes)})"
    return None


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_member_bytes: int, budget: int) -> bytes:
    """A member's bytes, read in chunks and refused as soon as they pass a limit (its header's
    size is not trusted)."""
    chunks, size = [], 0
    try:
        with zf.open(info) as handle:
            while chunk := handle.read(CHUNK):
                size += len(chunk)
                if size > max_member_bytes:
                    raise UserError(f"{_shown(info.filename)} inflates past {_mb(max_member_bytes)} "
                                    "(its header said less): the archive is refused")
                if size > budget:
                    raise UserError("the archive inflates past its limit (a zip bomb?): it is refused")
                chunks.append(chunk)
    except NotImplementedError as exc:  # a compression method zipfile does not read
        raise UserError(f"{_shown(info.filename)}: {exc}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:  # a damaged member (bad CRC, bad data)
        raise UserError(f"{_shown(info.filename)} is damaged ({exc})") from None
    return b"".join(chunks)


def _mb(size: float) -> str:
    return f"{size / 2**20:.3g} MB"


def _shown(name: str) -> str:
    """A member's name as an error shows it: printable and short."""
    text = "".join(c if c.isprintable() else "?" for c in name)
    return repr(text[:100])
