"""Write public-domain pieces from music21's bundled corpus as MIDI files (offline training data).

The bundled default model is trained on this: no download needed, only the `music21` package.
Pieces are taken in a fixed order, so the corpus is reproducible; existing files are kept, so an
interrupted run resumes. Unparseable pieces are skipped with a one-line note.

    python scripts/make_music21_corpus.py --out data/music21-midi [--palestrina 1318] [--workers 2]

`corpus.tsv` in the output folder lists every piece written (MIDI path, music21 corpus path).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path


# Every polyphonic collection of the corpus (the folk-song collections are single melodies: left
# out). Bach (433, mostly chorales) and Palestrina (1,318 mass movements) are its core; the string
# quartets of Beethoven, Haydn, Mozart and Schumann and the keyboard pieces add other textures.
# The first eleven were the whole corpus of the first bundled models: their file names, and so
# their train/validation/test split, are unchanged.
COMPOSERS = [
    "bach", "handel", "chopin", "joplin", "schubert", "cpebach", "weber", "verdi",
    "monteverdi", "josquin", "trecento",
    "beethoven", "haydn", "mozart", "schumann_robert", "schumann_clara", "schoenberg", "beach",
    "corelli", "ciconia", "luca", "lusitano", "liliuokalani", "johnson_j_r", "webern",
]
PALESTRINA_PIECES = 1318
TIMEOUT_S = 180  # a piece that takes longer to convert is skipped (a string quartet takes ~30 s)
# Some conversions leave notes hanging (ties across repeats): a string quartet movement with 20-37
# notes sounding at most onsets. No piece of the corpus sounds more than 12 notes at 90% of its
# onsets when converted cleanly, so one that does is skipped.
MAX_P90_SOUNDING = 12


def corpus_paths(palestrina: int) -> list[tuple[str, str]]:
    """(composer, corpus path) pairs in a fixed order."""
    from music21 import corpus

    pairs = []
    for composer in COMPOSERS:
        pairs += [(composer, str(p)) for p in sorted(corpus.getComposer(composer), key=str)]
    pairs += [("palestrina", str(p)) for p in sorted(corpus.getComposer("palestrina"), key=str)[:palestrina]]
    return pairs


def unique_jobs(pairs: list[tuple[str, str]], out: Path) -> list[tuple[str, str, str]]:
    """One job per target file: a piece stored twice (`.krn` and `.mxl`) is converted once."""
    jobs: dict[str, tuple[str, str, str]] = {}
    for composer, path in pairs:
        target = str(out / target_name(composer, path))
        jobs.setdefault(target, (composer, path, target))
    return list(jobs.values())


def target_name(composer: str, path: str) -> str:
    stem = Path(path).name
    for suffix in (".mxl", ".xml", ".musicxml", ".krn", ".abc", ".mid", ".midi", ".md", ".mei"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    parent = Path(path).parent.name
    return f"{composer}/{parent}-{stem}.mid" if parent != composer else f"{composer}/{stem}.mid"


def convert(job: tuple[str, str, str]) -> str | None:
    """Convert one piece; returns an error line or None. The file appears (atomically) only once
    it has passed the stuck-notes check: a piece whose conversion or check fails or times out
    leaves nothing behind, so a later run tries it again."""
    composer, path, out = job
    target = Path(out)
    if target.exists():
        return None
    signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(TIMEOUT_S)
    try:
        with tempfile.TemporaryDirectory(prefix="music21-corpus-") as work:
            from music21 import converter

            score = converter.parse(path)
            if hasattr(score, "mergeScores"):  # an Opus: the .abc pieces store one voice per tune
                score = score.mergeScores()
            converted = Path(work) / target.name
            score.write("midi", fp=str(converted))
            problem = stuck_notes(converted)
            if problem:
                return f"skipped {composer} {Path(path).name}: {problem}"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(converted, tmp)
            os.replace(tmp, target)
    except Exception as exc:  # music21 raises many kinds; one line each, keep going
        return f"skipped {composer} {Path(path).name}: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        signal.alarm(0)
    return None


def load_checkers() -> None:
    """Import what `convert` needs once per worker, before any piece's alarm can go off: an
    import cut short by the alarm leaves torch half-initialised, and every later piece of that
    worker would then fail its check."""
    from music21 import converter  # noqa: F401

    from perceiver_ar_music.data import events, tokenizer  # noqa: F401

    tokenizer.load_tokenizer()


def stuck_notes(midi_path: Path) -> str | None:
    """Why a converted file has hanging notes (more than MAX_P90_SOUNDING sound at 90% of its
    onsets, read as the model will read it: tokenized, then decoded by the one note decoder), or None."""
    import numpy as np

    from perceiver_ar_music.data.events import END, START, ids_to_note_steps
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    try:
        notes = ids_to_note_steps(tokenizer.encode_file(midi_path).ids, tokenizer.vocab)
    except Exception:  # an unreadable file is prepare's to report
        return None
    if not len(notes):
        return None
    start, end = notes[:, START], notes[:, END]
    sounding = np.searchsorted(np.sort(start), start, "right") - np.searchsorted(np.sort(end), start, "right")
    p90 = float(np.percentile(sounding, 90))
    return f"stuck notes: {p90:.0f} sound at 90% of onsets (> {MAX_P90_SOUNDING})" if p90 > MAX_P90_SOUNDING else None


def _timed_out(signum, frame) -> None:
    raise TimeoutError(f"conversion took longer than {TIMEOUT_S} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--palestrina", type=int, default=PALESTRINA_PIECES,
                        help="how many Palestrina pieces, in corpus order (the first bundled models: 300)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--recheck", action="store_true",
                        help="also check files converted by an earlier run for stuck notes (and delete those)")
    args = parser.parse_args()
    jobs = unique_jobs(corpus_paths(args.palestrina), args.out)
    if args.recheck:
        for composer, path, out in jobs:
            problem = Path(out).exists() and stuck_notes(Path(out))
            if problem:
                Path(out).unlink()
                print(f"removed {composer} {Path(path).name}: {problem}", file=sys.stderr)
        jobs = [job for job in jobs if Path(job[2]).exists()]  # rechecked: not converted again
    with multiprocessing.Pool(args.workers, initializer=load_checkers) as pool:
        errors = [e for e in pool.imap_unordered(convert, jobs, chunksize=4) if e]
    for line in errors:
        print(line, file=sys.stderr)
    listed = [(out, path) for _, path, out in jobs if Path(out).exists()]
    written = len(listed)
    root = str(args.out) + os.sep
    manifest = "".join(f"{out.removeprefix(root)}\t{path.split('/corpus/')[-1]}\n" for out, path in listed)
    (args.out / "corpus.tsv").write_text(manifest)
    print(f"{written} MIDI files in {args.out} ({len(errors)} skipped)")
    return 0 if written else 2


if __name__ == "__main__":
    sys.exit(main())
