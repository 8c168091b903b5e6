#!/usr/bin/env python
"""Benchmark `perceiver-music prepare` on a synthetic MAESTRO-sized corpus.

Builds (once, cached) a corpus of performances shaped like MAESTRO's: one piano track, ~5,500
notes, ~10 minutes, sustain pedal. Then it prepares the corpus from scratch, re-runs it (every
file unchanged, so reused), and times the stages of tokenizing one file in this process. It
prints files/s, notes/s and tokens/s and extrapolates to the whole of MAESTRO v3 (1,276 files,
~7.04M notes).

    .venv/bin/python scripts/bench_prepare.py                      # 64 files, all CPU cores
    .venv/bin/python scripts/bench_prepare.py --files 64 --workers 2 --corpus /tmp/corpus
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAESTRO_FILES = 1276
MAESTRO_NOTES = 7_040_000
TARGET_SECONDS = 60.0


def build_corpus(folder: Path, files: int, notes: int) -> list[Path]:
    """The cached synthetic corpus: missing files are generated, each written atomically."""
    from perceiver_ar_music.tools.midi_factory import write_maestro_like

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"performance_{index:04d}_{notes}notes.mid" for index in range(files)]
    missing = [path for path in paths if not path.exists()]
    for count, path in enumerate(missing, 1):
        print(f"\rgenerating corpus: {count}/{len(missing)}", end="", file=sys.stderr, flush=True)
        tmp = path.with_name(f".{path.name}.tmp.mid")
        write_maestro_like(tmp, seed=int(path.name.split("_")[1]), num_notes=notes)
        os.replace(tmp, path)
    if missing:
        print(file=sys.stderr)
    return paths


def stage_times(paths: list[Path]) -> dict[str, float]:
    """Seconds per file spent in each stage of tokenizing, in this process (no workers)."""
    from perceiver_ar_music.data.midi_load import performance_notes, read_score
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    totals = {"parse (symusic)": 0.0, "notes + pedal": 0.0, "quantize": 0.0, "encode": 0.0, "sha256": 0.0}

    for path in paths:
        t0 = time.perf_counter()
        score = read_score(path)
        t1 = time.perf_counter()
        notes = performance_notes(score)
        t2 = time.perf_counter()
        grid = tokenizer.quantize(notes)
        t3 = time.perf_counter()
        tokenizer.encode_grid(grid)
        t4 = time.perf_counter()
        hashlib.sha256(path.read_bytes()).hexdigest()
        t5 = time.perf_counter()
        for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[name] += seconds
    return {name: seconds / len(paths) for name, seconds in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "perceiver-music-bench-corpus",
                        help="where the synthetic corpus is cached (default: %(default)s)")
    parser.add_argument("--files", type=int, default=64, help="corpus size in files (default: %(default)s)")
    parser.add_argument("--notes", type=int, default=5500, help="notes per file (default: %(default)s, MAESTRO's mean)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="default: %(default)s (CPU count)")
    args = parser.parse_args()

    paths = build_corpus(args.corpus, args.files, args.notes)
    out = Path(tempfile.mkdtemp(prefix="bench-prepared-"))
    try:
        command = [sys.executable, "-m", "perceiver_ar_music", "prepare", "--data", str(args.corpus),
                   "--out", str(out / "cli"), "--workers", str(args.workers), "--no-progress"]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        end_to_end = time.perf_counter() - started

        started = time.perf_counter()
        from perceiver_ar_music.data.store_builder import prepare
        from perceiver_ar_music.data.tokenizer import load_tokenizer

        load_tokenizer()
        startup = time.perf_counter() - started
        started = time.perf_counter()
        result = prepare(args.corpus, out / "api", workers=args.workers, progress=False)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        rerun = prepare(args.corpus, out / "api", workers=args.workers, progress=False)
        warm = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    totals = result.manifest["totals"]
    assert result.tokenized == len(paths) and rerun.reused == len(paths)

    files_per_s = totals["num_files"] / cold
    notes_per_s = totals["num_notes"] / cold
    fixed = max(end_to_end - cold, startup)  # interpreter, imports, tokenizer, worker start
    maestro = fixed + max(MAESTRO_FILES / files_per_s, MAESTRO_NOTES / notes_per_s)
    print(f"corpus: {totals['num_files']} files, {totals['num_notes']:,} notes, {totals['num_tokens']:,} tokens, "
          f"{totals['hours']:.2f} hours ({args.corpus})")
    print(f"end to end, 'perceiver-music prepare --workers {args.workers}' in a new process: {end_to_end:.2f} s")
    print(f"  fixed cost (interpreter, imports, tokenizer load: {startup:.2f} s in-process): {fixed:.2f} s")
    print(f"in-process prepare, {args.workers} workers on {os.cpu_count()} CPUs: {cold:.2f} s = "
          f"{files_per_s:.1f} files/s, {notes_per_s:,.0f} notes/s, {totals['num_tokens'] / cold:,.0f} tokens/s")
    print(f"re-run, all {rerun.reused} files unchanged (reused): {warm:.2f} s")
    print(f"extrapolated MAESTRO v3 ({MAESTRO_FILES} files, {MAESTRO_NOTES / 1e6:.2f}M notes): {maestro:.1f} s "
          f"(target < {TARGET_SECONDS:.0f} s: {'met' if maestro < TARGET_SECONDS else 'NOT met'})")
    stages = stage_times(paths[: min(8, len(paths))])
    per_file = sum(stages.values())
    print(f"one file in one process: {per_file * 1000:.1f} ms = "
          + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
