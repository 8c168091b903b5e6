#!/usr/bin/env python
"""Write public-domain pieces from music21's bundled corpus as MIDI files (offline training data).

The bundled default model is trained on this: no download needed, only the `music21` package.
Pieces are taken in a fixed order, so the corpus is reproducible; existing files are kept, so an
interrupted run resumes. Unparseable pieces are skipped with a one-line note.

    python scripts/make_music21_corpus.py --out data/music21-midi [--palestrina 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
from pathlib import Path

# Composers with few pieces: all of them. Bach (433, mostly chorales) is the core of the corpus.
# (The string quartets of Beethoven, Mozart and Haydn are left out: slow to convert, not piano.)
COMPOSERS = [
    "bach", "handel", "chopin", "joplin", "schubert", "cpebach", "weber", "verdi",
    "monteverdi", "josquin", "trecento",
]
TIMEOUT_S = 60  # a piece that takes longer to convert is skipped


def corpus_paths(palestrina: int) -> list[tuple[str, str]]:
    """(composer, corpus path) pairs in a fixed order."""
    from music21 import corpus

    pairs = []
    for composer in COMPOSERS:
        pairs += [(composer, str(p)) for p in sorted(corpus.getComposer(composer), key=str)]
    pairs += [("palestrina", str(p)) for p in sorted(corpus.getComposer("palestrina"), key=str)[:palestrina]]
    return pairs


def target_name(composer: str, path: str) -> str:
    stem = Path(path).name
    for suffix in (".mxl", ".xml", ".musicxml", ".krn", ".abc", ".mid", ".midi", ".md", ".mei"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    parent = Path(path).parent.name
    return f"{composer}/{parent}-{stem}.mid" if parent != composer else f"{composer}/{stem}.mid"


def convert(job: tuple[str, str, str]) -> str | None:
    """Convert one piece; returns an error line or None."""
    composer, path, out = job
    target = Path(out)
    if target.exists():
        return None
    signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(TIMEOUT_S)
    try:
        from music21 import converter

        score = converter.parse(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        score.write("midi", fp=str(tmp))
        os.replace(tmp, target)
    except Exception as exc:  # music21 raises many kinds; one line each, keep going
        return f"skipped {composer} {Path(path).name}: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        signal.alarm(0)
    return None


def _timed_out(signum, frame) -> None:
    raise TimeoutError(f"conversion took longer than {TIMEOUT_S} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--palestrina", type=int, default=300, help="how many Palestrina pieces (of 1318)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    jobs = [(c, p, str(args.out / target_name(c, p))) for c, p in corpus_paths(args.palestrina)]
    with multiprocessing.Pool(args.workers) as pool:
        errors = [e for e in pool.imap_unordered(convert, jobs, chunksize=4) if e]
    for line in errors:
        print(line, file=sys.stderr)
    written = sum(1 for _, _, out in jobs if Path(out).exists())
    print(f"{written} MIDI files in {args.out} ({len(errors)} skipped)")
    return 0 if written else 2


if __name__ == "__main__":
    sys.exit(main())
