"""Write music21's Essen folk songs (single melodies, bundled with music21) as MIDI files: a style
the bundled model never saw, for measuring fine-tuning (issue 26).

Songs are taken in a fixed order (the ``essenFolksong`` collections sorted by name, each
collection's songs in its own order) until ``--songs`` are written; every fifth song goes to
``heldout/``, the rest to ``train/``, so 250 songs make 200 to fine-tune on and 50 held out.
Songs with fewer than ``MIN_NOTES`` notes, or that music21 cannot convert, are skipped. Existing
files are kept (a second run writes the same files); ``corpus.tsv`` lists every song written.

    python scripts/make_folk_corpus.py --out data/folk --songs 250
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MIN_NOTES = 8
HELD_OUT_EVERY = 5  # song k (0-based) is held out when k % 5 == 4


def collections() -> list[Path]:
    """The Essen folk-song files of music21's corpus (each holds many songs), sorted by name."""
    from music21 import corpus

    return sorted((Path(p) for p in corpus.getPaths() if "essenFolksong" in str(p)), key=lambda p: p.name)


def write_songs(out: Path, songs: int) -> list[tuple[str, str]]:
    """Write the first `songs` usable songs; (MIDI path relative to `out`, source) of each."""
    from music21 import converter

    written: list[tuple[str, str]] = []
    for path in collections():
        opus = converter.parse(path)
        for number, score in enumerate(getattr(opus, "scores", [opus])):
            if len(written) == songs:
                return written
            if len(score.flatten().notes) < MIN_NOTES:
                continue
            folder = "heldout" if len(written) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"
            rel = f"{folder}/{path.stem}-{number:03d}.mid"
            target = out / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp")
                try:
                    score.write("midi", fp=str(tmp))
                except Exception as exc:  # music21 raises many kinds; one line each, keep going
                    print(f"skipped {path.name} song {number}: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
                    tmp.unlink(missing_ok=True)
                    continue
                os.replace(tmp, target)
            written.append((rel, f"essenFolksong/{path.name}#{number}"))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--songs", type=int, default=250, help="songs to write (default 250: 200 train, 50 held out)")
    args = parser.parse_args()
    if args.songs < 2:
        print("error: --songs must be >= 2", file=sys.stderr)
        return 2
    written = write_songs(args.out, args.songs)
    tmp = args.out / "corpus.tsv.tmp"
    tmp.write_text("".join(f"{rel}\t{source}\n" for rel, source in written))
    os.replace(tmp, args.out / "corpus.tsv")
    held = sum(rel.startswith("heldout/") for rel, _ in written)
    print(f"{len(written)} songs in {args.out}: {len(written) - held} in train/, {held} in heldout/")
    return 0 if len(written) == args.songs else 1


if __name__ == "__main__":
    sys.exit(main())
