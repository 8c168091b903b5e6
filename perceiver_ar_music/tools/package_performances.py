"""Ten real piano performances from MAESTRO, taken from a package registry (no dataset download).

miditok's source distribution on PyPI ships ten whole MAESTRO performances as test files
(``tests/MIDIs_one_track/Maestro_1.mid`` ... ``Maestro_10.mid``: 2.8 hours, 102k notes, with the
sustain pedal and the pianists' own timing and velocities). This script downloads that archive
(pinned by version and SHA-256), extracts the ten files and writes a MAESTRO-style metadata file
that fixes their split, so ``perceiver-music prepare`` puts the same pieces in the same split on
every machine:

    python scripts/make_package_performances.py --out data/package-maestro --primers out/perf-primers
    perceiver-music prepare --data data/package-maestro --out data/package-maestro-prepared

Split: seven performances train, Maestro_10 validates (it picks the best checkpoint), and
Maestro_1 (6.8 notes/s) and Maestro_3 (14.2 notes/s) are kept for tests and primers only.
``--primers DIR`` also cuts 40 s (30-70 s) of each test performance as a primer, with the pedal
state it starts under: maestro1-30s-70s.mid (6 notes/s) and maestro3-30s-70s.mid (16 notes/s).
MAESTRO is licensed CC BY-NC-SA 4.0 (Hawthorne et al., 2019): so is what is trained on it.
Running it again reuses what is already there.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tarfile
from pathlib import Path

from perceiver_ar_music.data.download import fetch_resumable, sha256_of, verify_file
from perceiver_ar_music.runtime.atomic import atomic_path, write_bytes_atomic
from perceiver_ar_music.runtime.errors import UserError

SDIST_URL = (
    "https://files.pythonhosted.org/packages/e4/5b/"
    "e415ac51aa43536d1af43f4e8ae3a4cb8eddf7d4f19e3e20f22c353b77be/miditok-3.1.0.tar.gz"
)
SDIST_SHA256 = "1f905b9be87a57dac28a86c1c7a7565674a5d2e57b2f650bc2fea97792f6bdef"
MEMBER_DIR = "miditok-3.1.0/tests/MIDIs_one_track/"
SPLITS = {f"Maestro_{i}.mid": "train" for i in (2, 4, 5, 6, 7, 8, 9)}
SPLITS.update({"Maestro_10.mid": "validation", "Maestro_1.mid": "test", "Maestro_3.mid": "test"})
METADATA_NAME = "maestro-v3.0.0.csv"  # the name `prepare` looks for
PRIMER_SPAN_S = (30.0, 70.0)
PRIMER_TAIL_S = 2.0  # notes sounding at the cut end sound on this long at most


def fetch_archive(cache: Path, url: str = SDIST_URL, sha256: str = SDIST_SHA256) -> bytes:
    """The pinned sdist's bytes, from `cache` when it is there and intact, else from `url`
    (`data.download`'s resumable fetch and check, as for MAESTRO itself)."""
    if not (cache.is_file() and sha256_of(cache) == sha256):
        part = cache.with_name(f".{cache.name}.part")
        try:
            fetch_resumable(url, part, progress=False)
            verify_file(part, sha256, None)
        except UserError as exc:
            raise SystemExit(f"error: cannot download {url}: {exc}") from None
        part.replace(cache)
    return cache.read_bytes()


def cut_primer(source: Path, target: Path, start: float, end: float) -> int:
    """Write the notes of `source` that start in [start, end) (and its pedal) to `target`; note count."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(source))
    piano = pretty_midi.Instrument(program=0)
    for instrument in midi.instruments:
        for note in instrument.notes:
            if start <= note.start < end:
                stop = min(note.end, end + PRIMER_TAIL_S)
                piano.notes.append(pretty_midi.Note(note.velocity, note.pitch, note.start - start, stop - start))
        pedal = [c for c in instrument.control_changes if c.number == 64 and c.time < start]
        if pedal:  # the pedal as it stands at the cut
            piano.control_changes.append(pretty_midi.ControlChange(64, pedal[-1].value, 0.0))
        piano.control_changes += [pretty_midi.ControlChange(c.number, c.value, c.time - start)
                                  for c in instrument.control_changes if start <= c.time < end]
    cut = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    cut.instruments.append(piano)
    with atomic_path(target) as tmp:
        cut.write(str(tmp))
    return len(piano.notes)


def extract(archive: bytes, out: Path) -> None:
    """The ten performances from the sdist's bytes into `out`, with the metadata fixing their split."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name in SPLITS:
            member = tar.extractfile(MEMBER_DIR + name)
            if member is None:
                raise SystemExit(f"error: {MEMBER_DIR + name} is missing from the archive")
            target = out / name
            data = member.read()
            if not target.is_file() or target.read_bytes() != data:
                write_bytes_atomic(target, data)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["midi_filename", "split", "source"])
    for name, split in sorted(SPLITS.items()):
        writer.writerow([name, split, f"MAESTRO via miditok 3.1.0 sdist, {MEMBER_DIR}{name}"])
    write_bytes_atomic(out / METADATA_NAME, rows.getvalue().encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/package-maestro"))
    parser.add_argument("--primers", type=Path, help="also cut a 40-s primer from each test performance here")
    args = parser.parse_args(argv)
    out: Path = args.out
    extract(fetch_archive(out / ".cache" / "miditok-3.1.0.tar.gz"), out)
    if args.primers:
        start, end = PRIMER_SPAN_S
        for name, split in sorted(SPLITS.items()):
            if split == "test":
                stem = name.removesuffix(".mid").lower().replace("_", "")
                notes = cut_primer(out / name, args.primers / f"{stem}-{start:.0f}s-{end:.0f}s.mid", start, end)
                print(f"primer {stem}: {notes} notes, {notes / (end - start):.1f} notes/s", file=sys.stderr)
    counts = {split: sum(1 for s in SPLITS.values() if s == split) for split in ("train", "validation", "test")}
    print(f"{len(SPLITS)} performances in {out} ({counts['train']} train, {counts['validation']} validation, "
          f"{counts['test']} test)", file=sys.stderr)
    return 0
