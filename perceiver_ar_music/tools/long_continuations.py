"""Do long continuations stay music? Windowed statistics of 8,192-token continuations, guards off/on.

Continues each primer for `--length` tokens with the cached sampler (and once with the slow
reference path, guards off, to tell the model's drift from the cache's), for every seed, with the
note guards off and on, and prints per sample: the primer's figures, the continuation in windows
of `--window` seconds (notes/s, mean and max polyphony, share of notes over 4 s, longest note),
the drift (last window / first), the guards' targets (issue 11) and, with `--reference`, the
longest passage copied from the training data. Also measures the guards' cost: tokens/s with
and without them on one primer, alternated in one run.

    python scripts/bench_long_continuations.py --reference data/music21-prepared --json out/long.json

Default primers: the bundled chorale (examples/primer.mid), a synthetic 2-minute performance with
sustain pedal from the tests' MIDI factory, and a longer piece given with `--long-primer` (e.g. a
Joplin rag of music21's corpus: data/music21-midi/joplin/...).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from perceiver_ar_music.tools import REPO as ROOT

from perceiver_ar_music.model.checkpoint import load_model
from perceiver_ar_music.sampling.continuation import (
    continue_ids, load_primer, sample_notes, sampling_rules,
)
from perceiver_ar_music.sampling.note_limits import NoteLimits
from perceiver_ar_music.listening.music_stats import LONG_NOTE_S, full_windows, median_or_none, sample_report
from perceiver_ar_music.sampling.settings import DEFAULT_TOP_P
from perceiver_ar_music.sampling.sampler import SamplingConfig
from perceiver_ar_music.data.tokenizer import load_tokenizer


MODES = {"off": (False, False), "guards": (True, False), "guards+grammar": (True, True)}  # (guards, grammar)


def synthetic_primer(folder: Path) -> Path:
    """A 2-minute synthetic performance with sustain pedal (perceiver_ar_music/tools/midi_factory.py)."""
    from perceiver_ar_music.tools import midi_factory

    path = folder / "synthetic-pedal.mid"
    midi_factory.write_performance(path, seed=7, num_notes=900, tempo_changes=False, pedal=True)
    return path


def window_table(report, max_note_seconds: float | None) -> list[str]:
    """Lines: the primer, then each window of the continuation."""
    def row(name: str, stats) -> str:
        return (f"  {name:>10} | {stats.notes_per_second:5.2f} | {stats.mean_polyphony:5.2f} | {stats.max_polyphony:3d} | "
                f"{100 * stats.long_note_fraction:5.1f} | {stats.note_length_max_s:6.2f}")

    lines = [f"  {'':>10} | notes/s | poly mean | max | % > {LONG_NOTE_S:g} s | longest (s)"]
    if report.primer is not None:
        lines.append(row("primer", report.primer))
    for w in report.windows:
        lines.append(row(w.label(), w.stats))
    return lines


def targets(report, max_note_seconds: float | None, max_polyphony: int | None) -> dict[str, bool]:
    """Issue 11's targets for one continuation (every full window)."""
    windows = [w.stats for w in full_windows(report.windows, report.window_s) or report.windows]
    primer_poly = report.primer.mean_polyphony if report.primer else None
    drift = report.drift
    result = {
        "max polyphony <= 16": all(w.max_polyphony <= 16 for w in windows),
        "<= 1% of notes over 4 s": all(w.long_note_fraction <= 0.01 for w in windows),
        "mean polyphony <= 2x primer": primer_poly is None or all(w.mean_polyphony <= 2 * primer_poly for w in windows),
        "no drift (last/first within 1.5x)": all(
            drift[k] is None or 1 / 1.5 <= drift[k] <= 1.5 for k in ("notes_per_second", "mean_polyphony")),
    }
    if max_note_seconds:
        result[f"no note over D = {max_note_seconds:g} s"] = all(w.note_length_max_s <= max_note_seconds + 1e-6 for w in windows)
    if max_polyphony:
        result[f"max polyphony <= P = {max_polyphony}"] = all(w.max_polyphony <= max_polyphony for w in windows)
    return result


def mode_summary(samples: list[dict]) -> list[dict]:
    """Per primer and rules (cached runs): the median over seeds of each continuation's notes/s,
    mean polyphony, music length and drift, and the share of all their notes over 4 s. Many seeds
    make a comparison of rules that one seed's sample cannot: samples of one model differ a lot."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for sample in samples:
        if sample["cache"] and sample["report"]["continuation"]:
            groups.setdefault((Path(sample["primer"]).stem, sample["mode"]), []).append(sample["report"])
    rows = []
    for (primer, mode), reports in groups.items():
        parts = [r["continuation"] for r in reports]
        notes = sum(c["note_count"] for c in parts)
        rows.append({
            "primer": primer, "mode": mode, "samples": len(reports),
            "music_s": median_or_none(c["duration_s"] for c in parts),
            "notes_per_second": median_or_none(c["notes_per_second"] for c in parts),
            "mean_polyphony": median_or_none(c["mean_polyphony"] for c in parts),
            "long_note_fraction": sum(c["long_note_fraction"] * c["note_count"] for c in parts) / max(notes, 1),
            "drift_notes_per_second": median_or_none(r["drift"]["notes_per_second"] for r in reports),
            "drift_mean_polyphony": median_or_none(r["drift"]["mean_polyphony"] for r in reports),
        })
    return rows


def summary_table(rows: list[dict]) -> list[str]:
    """The lines of `mode_summary`'s table."""
    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = ["primer | rules | samples | music (s) | notes/s | voices | % notes > 4 s | drift notes/s | drift voices"]
    for r in rows:
        lines.append(f"{r['primer']} | {r['mode']} | {r['samples']} | {fmt(r['music_s'], '.0f')} | "
                     f"{fmt(r['notes_per_second'], '.2f')} | {fmt(r['mean_polyphony'], '.2f')} | "
                     f"{100 * r['long_note_fraction']:.2f} | {fmt(r['drift_notes_per_second'], '.2f')} | "
                     f"{fmt(r['drift_mean_polyphony'], '.2f')}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    parser.add_argument("--primer", type=Path, action="append", help="primers (default: see above)")
    parser.add_argument("--long-primer", type=Path, help="a multi-minute piece added to the default primers")
    parser.add_argument("--primer-seconds", type=float, default=120.0, help="keep each primer's first S seconds")
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="default: generate's --top-p")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--reference", type=Path, help="prepared training data: report copied passages")
    parser.add_argument("--no-cache-primer", type=int, default=0, help="index of the primer also run with --no-cache")
    parser.add_argument("--skip-no-cache", action="store_true")
    parser.add_argument("--modes", nargs="+", default=["off", "guards"], choices=list(MODES),
                        help="sampling rules to compare: none, the note guards, guards and the grammar")
    parser.add_argument("--speed-tokens", type=int, default=2048, help="tokens per run of the guards' cost check (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    parser.add_argument("--speed-repeats", type=int, default=7)
    parser.add_argument("--speed-only", action="store_true", help="only the guards' cost check")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.checkpoint)
    tokenizer = load_tokenizer(loaded.tokenizer_path)
    vocab = tokenizer.vocab
    defaults = NoteLimits.from_meta(loaded.meta)
    max_note_seconds, max_polyphony = defaults.max_note_seconds, defaults.max_polyphony
    print(f"checkpoint {loaded.path} (step {loaded.meta.get('step')}); guards: notes <= {max_note_seconds:g} s, "
          f"polyphony <= {max_polyphony} ({'from its training data' if 'note_limits' in loaded.meta else 'fallbacks'})")
    index = None
    if args.reference:
        from perceiver_ar_music.listening.memorization import ReferenceIndex
        from perceiver_ar_music.data.token_store import PreparedData

        index = ReferenceIndex.from_prepared(PreparedData.open(args.reference), "train")

    tmp = Path(tempfile.mkdtemp(prefix="bench-long-"))
    primers = args.primer or [ROOT / "examples" / "primer.mid", synthetic_primer(tmp)]
    if args.long_primer:
        primers.append(args.long_primer)
    sampling = SamplingConfig(top_p=args.top_p)
    results = {"checkpoint": str(loaded.path), "max_note_seconds": max_note_seconds, "max_polyphony": max_polyphony,
               "length": args.length, "top_p": args.top_p, "window_s": args.window, "samples": []}

    runs = [] if args.speed_only else [(p, seed, mode, True) for p in primers for seed in args.seeds for mode in args.modes]
    if not args.skip_no_cache and not args.speed_only:
        runs.append((primers[args.no_cache_primer], args.seeds[0], "off", False))
    for primer, seed, mode, use_cache in runs:
        guards, grammar = MODES[mode]
        ids = load_primer(tokenizer, primer, args.primer_seconds)
        prompt = np.concatenate(([vocab.bos_id], ids)).astype(np.int64)
        limits = (max_note_seconds, max_polyphony) if guards else (None, None)
        rules = sampling_rules(vocab, "cpu", constrain=grammar, max_note_seconds=limits[0], max_polyphony=limits[1])
        start = time.perf_counter()
        out = continue_ids(loaded.model, prompt, vocab, args.length, 1, sampling, seed=seed, rules=rules,
                           use_cache=use_cache, progress=False)
        elapsed = time.perf_counter() - start
        notes, primer_notes, boundary = sample_notes(out.sequences[0], out.prompt_len, vocab, limits[0])
        memo = None
        if index is not None:
            from perceiver_ar_music.listening.memorization import memorization_report

            memo = memorization_report(notes, primer_notes, index).as_dict()
        report = sample_report(notes, primer_notes, boundary, args.window, memorization=memo)
        checks = targets(report, *limits)
        name = f"{primer.stem}, seed {seed}, rules: {mode}" + ("" if use_cache else ", --no-cache")
        print(f"\n{name}: {len(out.sequences[0]) - out.prompt_len} tokens, "
              f"{report.continuation.duration_s if report.continuation else 0:.0f} s of music, {elapsed:.0f} s")
        print("\n".join(window_table(report, limits[0])))
        drift = report.drift
        print(f"  drift last/first window: notes/s {drift['notes_per_second'] or float('nan'):.2f}, "
              f"polyphony {drift['mean_polyphony'] or float('nan'):.2f}")
        if memo is not None:
            print(f"  copied from the training data: {json.dumps(memo, default=str)[:300]}")
        print("  targets: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
        results["samples"].append({"primer": str(primer), "seed": seed, "mode": mode, "cache": use_cache,
                                   "seconds": elapsed, "targets": checks, "report": report.as_dict()})

    if results["samples"]:
        results["summary"] = mode_summary(results["samples"])
        print("\nmedians over seeds (long notes: share of all notes)\n" + "\n".join(summary_table(results["summary"])))

    if args.speed_tokens:
        # The guards' cost: the same primer and seed with and without them, alternated. Their limits
        # are set so that they never bind, so both runs sample the very same tokens and only the
        # guards' own work differs (a binding guard changes the music, not the model's cost).
        ids = load_primer(tokenizer, primers[0], args.primer_seconds)
        prompt = np.concatenate(([vocab.bos_id], ids)).astype(np.int64)
        rates: dict[str, list[float]] = {"off": [], "on": []}
        outputs = {}
        for _ in range(args.speed_repeats):
            for label, limits in (("off", (None, None)), ("on", (1e6, 128))):
                rules = sampling_rules(vocab, "cpu", constrain=False, max_note_seconds=limits[0], max_polyphony=limits[1])
                out = continue_ids(loaded.model, prompt, vocab, args.speed_tokens, 1, sampling, seed=0, rules=rules,
                                   progress=False)
                rates[label].append(out.tokens_per_second)
                outputs[label] = out.sequences[0]
        assert np.array_equal(outputs["off"], outputs["on"]), "non-binding guards changed the tokens"
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        print(f"\nguards' cost, {args.speed_tokens} tokens, batch 1, median of {args.speed_repeats} alternated runs: "
              f"{off:.0f} tokens/s off, {on:.0f} on ({100 * (1 - on / off):+.1f}% slower)")
        results["speed"] = {"tokens": args.speed_tokens, "off": rates["off"], "on": rates["on"]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
