"""`perceiver-music download-maestro`: fetch, verify and unpack the MAESTRO v3 MIDI archive."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from perceiver_ar_music.runtime.cli_types import finite_float
from perceiver_ar_music.data.download import MAESTRO_SHA256, MAESTRO_URL, download_maestro
from perceiver_ar_music.runtime.errors import UserError

HELP = "Download, verify and unpack the MAESTRO v3 MIDI-only archive (about 56 MiB); resumable."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("maestro"),
        help="folder to unpack into; gets maestro-v3.0.0/ (default: maestro)",
    )
    parser.add_argument(
        "--url",
        default=MAESTRO_URL,
        help="archive URL, e.g. a mirror (default: the official Magenta storage)",
    )
    parser.add_argument(
        "--sha256",
        default=MAESTRO_SHA256,
        help="expected SHA-256 of the archive, for a mirror or another file (default: the "
        "published v3.0.0 MIDI zip's)",
    )
    parser.add_argument(
        "--keep-archive",
        action="store_true",
        help="keep <out>/maestro-v3.0.0-midi.zip after unpacking (default: delete it)",
    )
    parser.add_argument(
        "--timeout",
        type=finite_float(min=0, max=86_400, min_inclusive=False),
        default=60.0,
        help="seconds to wait on a silent connection before giving up (default: 60)",
    )


def run(args: argparse.Namespace) -> int:
    sha256 = args.sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise UserError(f"--sha256 must be 64 hex digits, got {args.sha256!r}")
    if not re.match(r"https?://", args.url):
        raise UserError(f"--url must be an http:// or https:// URL, got {args.url!r}")
    download_maestro(
        args.out,
        url=args.url,
        sha256=sha256,
        keep_archive=args.keep_archive,
        timeout=args.timeout,
    )
    print(f"next: perceiver-music prepare --data {args.out} --out {args.out / 'prepared'}")
    return 0
