#!/usr/bin/env python
"""Ten real piano performances from MAESTRO, taken from a package registry (no dataset download).

miditok's source distribution on PyPI ships ten whole MAESTRO performances as test files
(``tests/MIDIs_one_track/Maestro_1.mid`` ... ``Maestro_10.mid``: 2.8 hours, 102k notes, with the
sustain pedal and the pianists' own timing and velocities). This script downloads that archive
(pinned by version and SHA-256), extracts the ten files and writes a MAESTRO-style metadata file
that fixes their split, so ``perceiver-music prepare`` puts the same pieces in the same split on
every machine:

    python scripts/make_package_performances.py --out data/package-maestro
    perceiver-music prepare --data data/package-maestro --out data/package-maestro-prepared

Split: seven performances train, Maestro_10 validates (it picks the best checkpoint), and
Maestro_1 (6.8 notes/s) and Maestro_3 (14.2 notes/s) are kept for tests and primers only.
MAESTRO is licensed CC BY-NC-SA 4.0 (Hawthorne et al., 2019): so is what is trained on it.
Running it again reuses what is already there.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

SDIST_URL = (
    "https://files.pythonhosted.org/packages/e4/5b/"
    "e415ac51aa43536d1af43f4e8ae3a4cb8eddf7d4f19e3e20f22c353b77be/miditok-3.1.0.tar.gz"
)
SDIST_SHA256 = "1f905b9be87a57dac28a86c1c7a7565674a5d2e57b2f650bc2fea97792f6bdef"
MEMBER_DIR = "miditok-3.1.0/tests/MIDIs_one_track/"
SPLITS = {f"Maestro_{i}.mid": "train" for i in (2, 4, 5, 6, 7, 8, 9)}
SPLITS.update({"Maestro_10.mid": "validation", "Maestro_1.mid": "test", "Maestro_3.mid": "test"})
METADATA_NAME = "maestro-v3.0.0.csv"  # the name `prepare` looks for


def fetch_archive(cache: Path) -> bytes:
    """The pinned sdist's bytes, from `cache` when it is there and intact."""
    if cache.is_file():
        data = cache.read_bytes()
        if hashlib.sha256(data).hexdigest() == SDIST_SHA256:
            return data
    with urllib.request.urlopen(SDIST_URL, timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"error: {SDIST_URL} has SHA-256 {digest}, expected {SDIST_SHA256}")
    write_atomic(cache, data)
    return data


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/package-maestro"))
    args = parser.parse_args(argv)
    out: Path = args.out
    archive = fetch_archive(out / ".cache" / "miditok-3.1.0.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name in SPLITS:
            member = tar.extractfile(MEMBER_DIR + name)
            if member is None:
                raise SystemExit(f"error: {MEMBER_DIR + name} is missing from the archive")
            target = out / name
            data = member.read()
            if not target.is_file() or target.read_bytes() != data:
                write_atomic(target, data)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["midi_filename", "split", "source"])
    for name, split in sorted(SPLITS.items()):
        writer.writerow([name, split, f"MAESTRO via miditok 3.1.0 sdist, {MEMBER_DIR}{name}"])
    write_atomic(out / METADATA_NAME, rows.getvalue().encode())
    counts = {split: sum(1 for s in SPLITS.values() if s == split) for split in ("train", "validation", "test")}
    print(f"{len(SPLITS)} performances in {out} ({counts['train']} train, {counts['validation']} validation, "
          f"{counts['test']} test)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
