"""Judge a checkpoint as a bundled model: test NLL, and what its samples sound like, by the numbers.

Runs the package's own commands (so the card can quote them) and summarises their JSON:

1. ``evaluate --split test`` on the prepared corpus and on the first bundled models' corpus (the
   eleven composers and the first 300 Palestrina pieces of ``corpus.tsv``, linked into
   ``<midi>-v1`` and prepared once: the split hashes the path, so its test pieces are the ones
   the first models' cards were scored on, a subset of today's);
2. ``generate --no-guards --no-texture`` of K samples of ``--seconds`` of music (the model's own
   draws: no guards, no texture-keeping), from nothing and continuing the Quickstart's primer;
3. ``stats`` of both against the validation pieces (figures) and the training pieces
   (memorisation: the longest passage a sample copies from them).

It then checks the bundled model's targets (issue 12): notes per second and mean polyphony within
25% of the validation medians, at most 1% of notes over 4 s, no drift (the last full 30 s window
within 25% of the first, in density and polyphony), and writes ``summary.json`` and
``summary.md`` to ``--out``. With several seeds (``--seed 0 1``) the samples of all of them are
pooled; every figure comes with a 90% bootstrap interval over the samples, so a target missed by
a hair can be told from noise. The validation pieces give the yardsticks: their medians, their
own drift and how much they share with the training pieces (real music repeats formulas too).
The continuations are also set beside the validation pieces of the primer's own collection
(``--primer-collection``, Bach for the Quickstart's chorale), since the corpus' medians are
mostly Palestrina's; the issue's targets stay as they are.

    python scripts/judge_model.py --checkpoint checkpoints/default --data data/music21-prepared \\
        --midi data/music21-midi --out out/judge/default
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from perceiver_ar_music.tools import REPO as ROOT
TOLERANCE = 0.25  # density and polyphony: within 25% of the validation medians, and over time
MAX_LONG_NOTES = 0.01  # share of notes over 4 s
BOOTSTRAP_DRAWS = 2000  # resamples of the samples for each figure's interval
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval
PRIMER = ROOT / "examples" / "primer.mid"
PRIMER_COLLECTION = "bach"  # the primer is BWV 365, a Bach chorale: its style's yardstick is Bach's validation pieces
from perceiver_ar_music.tools.music21_corpus import COMPOSERS

from perceiver_ar_music.runtime.atomic import write_text_atomic
from perceiver_ar_music.listening.music_stats import RESTRIKE_GAP_S, median_or_none

FIRST_COMPOSERS = tuple(COMPOSERS[:11])  # the first bundled models' corpus (the list's first eleven), with
FIRST_PALESTRINA = 300  # the first 300 Palestrina pieces in corpus order


def first_corpus(midi: Path, log: list[str]) -> Path:
    """Prepare (once) the first bundled models' corpus from the MIDI folder's ``corpus.tsv``."""
    view, prepared = midi.with_name(midi.name + "-v1"), midi.with_name(midi.name.replace("-midi", "") + "-v1-prepared")
    rows = [line.split("\t") for line in (midi / "corpus.tsv").read_text().splitlines()]
    palestrina = sorted(path for name, path in rows if name.startswith("palestrina/"))[:FIRST_PALESTRINA]
    keep = {name for name, path in rows if name.split("/")[0] in FIRST_COMPOSERS or path in palestrina}
    for link in view.rglob("*.mid") if view.exists() else []:  # pieces the corpus no longer has
        if str(link.relative_to(view)) not in keep:
            link.unlink()
    for name in sorted(keep):
        link = view / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((midi / name).resolve())
    run(["prepare", "--data", str(view), "--out", str(prepared), "--no-progress"], log)
    return prepared


def run(args: list[str], log: list[str]) -> None:
    """Run one perceiver-music command (same interpreter), echo and record it."""
    line = "perceiver-music " + shlex.join(args)
    print(f"$ {line}", flush=True)
    log.append(line)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "perceiver_ar_music", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    print(f"  ({time.monotonic() - start:.0f} s)", flush=True)


def set_summary(train_stats: list[dict], validation_stats: list[dict]) -> dict:
    """Figures of one set of samples (from nothing, or one primer's continuations), pooled over
    the `stats` JSON of each seed (against the training pieces, and against the validation
    pieces), each with its bootstrap interval (`intervals`)."""
    import numpy as np

    reference = validation_stats[0]["details"]["reference"]["median"]
    samples = [s for stats in validation_stats for s in stats["samples"].values()]
    continuations = [s["continuation"] for s in samples if s["continuation"]]
    notes = np.array([c["note_count"] for c in continuations], dtype=float)
    long_notes = np.array([c["long_note_fraction"] * c["note_count"] for c in continuations])
    drifts = [s["drift"] for s in samples]
    vs_primer = [s["continuation_vs_primer"] for s in samples if s["primer"] and s["continuation"]]
    memo = [s["memorization"] or {} for stats in train_stats for s in stats["samples"].values()]
    copied = [(m.get("continuation") or {}).get("notes", 0) for m in memo]
    copied_s = [(m.get("continuation") or {}).get("seconds", 0.0) for m in memo]
    per_sample = {  # the figures that are medians over samples, and what they are medians of
        "notes_per_second": [c["notes_per_second"] for c in continuations],
        "mean_polyphony": [c["mean_polyphony"] for c in continuations],
        "note_length_mean_s": [c["note_length_mean_s"] for c in continuations],
        "max_polyphony": [c["max_polyphony"] for c in continuations],
        "restrike_fraction": [c.get("restrike_fraction") for c in continuations],  # (stats before it: None)
        "drift_notes_per_second": [d["notes_per_second"] for d in drifts],
        "drift_mean_polyphony": [d["mean_polyphony"] for d in drifts],
        "vs_primer_notes_per_second": [v["notes_per_second"] for v in vs_primer],
        "vs_primer_mean_polyphony": [v["mean_polyphony"] for v in vs_primer],
        "median_copy_notes": copied,
    }
    out: dict = {"samples": len(continuations)}
    out.update({key: median_or_none(values) for key, values in per_sample.items()})
    out["long_note_fraction"] = float(long_notes.sum() / notes.sum()) if notes.sum() else 0.0
    out.update({
        "copy_notes_per_sample": copied,
        "longest_copy_notes": max(copied, default=0),
        "longest_copy_seconds": max(copied_s, default=0.0),
        "reference_notes_per_second": reference["notes_per_second"],
        "reference_mean_polyphony": reference["mean_polyphony"],
    })
    intervals = {key: bootstrap_interval(values, np.median) for key, values in per_sample.items()}
    intervals["long_note_fraction"] = bootstrap_interval(
        np.stack([long_notes, notes], axis=1), lambda rows: rows[:, 0].sum() / max(rows[:, 1].sum(), 1.0))
    out["intervals"] = {key: value for key, value in intervals.items() if value is not None}
    out["checks"] = {
        "density": abs(out["notes_per_second"] / out["reference_notes_per_second"] - 1) <= TOLERANCE,
        "polyphony": abs(out["mean_polyphony"] / out["reference_mean_polyphony"] - 1) <= TOLERANCE,
        "long_notes": out["long_note_fraction"] <= MAX_LONG_NOTES,
        "no_drift": all(v is not None and abs(v - 1) <= TOLERANCE
                        for v in (out["drift_notes_per_second"], out["drift_mean_polyphony"])),
    }
    return out


def bootstrap_interval(values, statistic) -> list[float] | None:
    """The INTERVAL percentiles of `statistic` over BOOTSTRAP_DRAWS resamples (with replacement,
    fixed seed) of `values` (one entry or row per sample; None entries dropped); None for fewer
    than two samples."""
    import numpy as np

    if not isinstance(values, np.ndarray):
        values = [v for v in values if v is not None]
    rows = np.asarray(values, dtype=float)
    if len(rows) < 2:
        return None
    picks = np.random.default_rng(0).integers(0, len(rows), size=(BOOTSTRAP_DRAWS, len(rows)))
    draws = np.array([statistic(rows[pick]) for pick in picks])
    low, high = np.percentile(draws, INTERVAL)
    return [float(low), float(high)]


def validation_openings(data: Path, seconds: float):
    """Per validation piece with notes: its notes cut to its first `seconds` (ends clipped there)
    and whether it lasts that long. The yardsticks' one reading of the validation pieces."""
    import numpy as np

    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.data.token_store import PreparedData

    prepared = PreparedData.open(data)
    for ids in prepared.pieces("validation"):
        notes = ids_to_notes(ids, prepared.vocab)
        if not len(notes):
            continue
        long_enough = bool(notes[:, 2].max() >= seconds)
        notes = notes[notes[:, 1] < seconds]
        notes[:, 2] = np.minimum(notes[:, 2], seconds)
        yield notes, long_enough


def validation_drift(data: Path, seconds: float, window_s: float = 30.0) -> dict:
    """The drift target's yardstick: the same last/first-window ratios over the first `seconds` of
    every validation piece at least that long (real music thickens too: voices enter one by one)."""
    from perceiver_ar_music.listening.music_stats import drift, windowed_stats

    ratios = [drift(windowed_stats(notes, window_s, start_s=float(notes[:, 1].min())), window_s)
              for notes, long_enough in validation_openings(data, seconds) if long_enough]
    return {"pieces": len(ratios), "seconds": seconds,
            "notes_per_second": median_or_none(r["notes_per_second"] for r in ratios),
            "mean_polyphony": median_or_none(r["mean_polyphony"] for r in ratios)}


def validation_copying(data: Path, seconds: float) -> dict:
    """The copy rows' yardstick: the longest passage that the first `seconds` of each validation
    piece shares with the training pieces (unseen pieces share cadences and formulas too)."""
    from perceiver_ar_music.listening.memorization import ReferenceIndex
    from perceiver_ar_music.data.token_store import PreparedData

    index = ReferenceIndex.from_prepared(PreparedData.open(data), "train")
    lengths = [index.longest_match(notes).notes for notes, _ in validation_openings(data, seconds)]
    return {"pieces": len(lengths), "seconds": seconds, "median_notes": median_or_none(lengths),
            "max_notes": max(lengths, default=None)}


def validation_collection(data: Path, collection: str) -> dict:
    """A second yardstick for the continuations: the medians of the validation pieces of one
    collection (the MIDI folder the primer's style comes from, e.g. ``bach``). The corpus' overall
    medians are mostly Palestrina's, and a continuation should keep its primer's style."""
    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.listening.music_stats import music_stats, reference_figures
    from perceiver_ar_music.data.token_store import PreparedData

    prepared = PreparedData.open(data)
    stats = [music_stats(ids_to_notes(ids, prepared.vocab))
             for ids, entry in zip(prepared.pieces("validation"), prepared.files("validation"))
             if entry["path"].split("/")[0] == collection]
    stats = [s for s in stats if s.note_count]
    if not stats:
        return {"collection": collection, "pieces": 0}
    medians = reference_figures(stats, source=collection).median
    return {"collection": collection, "pieces": len(stats), "notes_per_second": medians["notes_per_second"],
            "mean_polyphony": medians["mean_polyphony"]}


def collection_line(style: dict, figures: dict) -> str:
    """The continuations against the primer's collection (`validation_collection`), in words."""
    ratios = {key: figures[key] / style[key] for key in ("notes_per_second", "mean_polyphony") if figures.get(key)}
    verdict = ", ".join(f"{name} {'within' if abs(ratios[key] - 1) <= TOLERANCE else 'outside'} {TOLERANCE:.0%}"
                        for name, key in (("density", "notes_per_second"), ("polyphony", "mean_polyphony")))
    return (f"\nAgainst the validation pieces of the primer's collection ({style['collection']}, {style['pieces']} "
            f"pieces: median {style['notes_per_second']:.2f} notes/s and {style['mean_polyphony']:.2f} voices), the "
            f"continuations play {ratios['notes_per_second']:.2f} times their density and "
            f"{ratios['mean_polyphony']:.2f} times their polyphony ({verdict}).")


def markdown(summary: dict) -> str:
    """The card's table: one column per set of samples, the validation medians beside them."""
    lines = [f"Checkpoint `{summary['checkpoint']}`" + (f", sampling `{summary['sampling']}`" if summary.get("sampling") else ""), ""]
    for name, result in summary["test"].items():
        lines.append(f"- test on `{name}`: {result['nats_per_token']:.4f} nats/token, "
                     f"{result['nats_per_note']:.2f} nats/note, {result['nats_per_second']:.2f} nats/second "
                     f"({result['targets']} tokens, {result['pieces']} pieces)")
    sets = summary["sets"]
    first = next(iter(sets.values()))
    lines += ["", "| | validation pieces (median) | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    drift_ref = summary.get("validation_drift") or {}
    copy_ref = summary.get("validation_copying") or {}
    references = {  # the reference column: the validation pieces' medians, own drift and copying
        "notes_per_second": first["reference_notes_per_second"],
        "mean_polyphony": first["reference_mean_polyphony"],
        "drift_notes_per_second": drift_ref.get("notes_per_second"),
        "drift_mean_polyphony": drift_ref.get("mean_polyphony"),
        "median_copy_notes": copy_ref.get("median_notes"),
        "longest_copy_notes": copy_ref.get("max_notes"),
    }
    rows = [
        ("notes per second", "notes_per_second", "{:.2f}"),
        ("mean polyphony", "mean_polyphony", "{:.2f}"),
        ("max polyphony", "max_polyphony", "{:.0f}"),
        ("mean note length (s)", "note_length_mean_s", "{:.2f}"),
        ("notes over 4 s", "long_note_fraction", "{:.1%}"),
        (f"re-struck notes (a pitch again within {RESTRIKE_GAP_S:g} s of its release)", "restrike_fraction", "{:.0%}"),
        ("drift, notes/s (last 30 s / first)", "drift_notes_per_second", "{:.2f}"),
        ("drift, polyphony (last 30 s / first)", "drift_mean_polyphony", "{:.2f}"),
        ("notes/s, continuation / primer", "vs_primer_notes_per_second", "{:.2f}"),
        ("polyphony, continuation / primer", "vs_primer_mean_polyphony", "{:.2f}"),
        ("passage copied from training, median per sample (notes)", "median_copy_notes", "{:g}"),
        ("longest passage copied from training (notes)", "longest_copy_notes", "{:d}"),
        ("longest passage copied from training (s)", "longest_copy_seconds", "{:.1f}"),
    ]

    def cell(figures: dict, key: str, fmt: str) -> str:
        if figures.get(key) is None:
            return "-"
        interval = (figures.get("intervals") or {}).get(key)
        text = fmt.format(figures[key])
        return text + (f" ({fmt.format(interval[0])}-{fmt.format(interval[1])})" if interval else "")

    for label, key, fmt in rows:
        reference = "" if references.get(key) is None else fmt.format(references[key])
        lines.append(f"| {label} | {reference} | " + " | ".join(cell(s, key, fmt) for s in sets.values()) + " |")
    checks = " | ".join(", ".join(k for k, ok in s["checks"].items() if not ok) or "all met" for s in sets.values())
    lines.append(f"| targets missed | | {checks} |")
    for name, s in sets.items():
        if s.get("copy_notes_per_sample"):
            lines.append(f"\nLongest passage each sample copies from training ({name}, notes): "
                         + ", ".join(map(str, s["copy_notes_per_sample"])) + ".")
    if summary.get("seeds"):
        lines.append(f"\nSeeds {', '.join(map(str, summary['seeds']))}, pooled: "
                     + ", ".join(f"{s['samples']} samples {name}" for name, s in sets.items())
                     + ". In brackets: 90% bootstrap intervals over the samples.")
    if summary.get("validation_drift"):
        d = summary["validation_drift"]
        lines.append(f"\nThe drift rows' reference: the same ratios over the first {d['seconds']:g} s of the "
                     f"{d['pieces']} validation pieces that long (median).")
    style, continuations = summary.get("primer_collection") or {}, sets.get("primer continuations")
    if style.get("pieces") and continuations:
        lines.append(collection_line(style, continuations))
    if copy_ref:
        lines.append(f"\nThe copy rows' reference: the longest passage the first {copy_ref['seconds']:g} s of "
                     f"each of the {copy_ref['pieces']} validation pieces shares with the training pieces "
                     "(median, and the longest of all).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the prepared corpus (test, validation, train)")
    parser.add_argument("--midi", type=Path, help="the corpus' MIDI folder (with corpus.tsv): also score the "
                        "test pieces of the first bundled models' corpus")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--primer-seconds", type=float, default=10.0)
    parser.add_argument("--primer-collection", default=PRIMER_COLLECTION, metavar="FOLDER",
                        help="the corpus folder of the primer's style: its validation pieces are a second yardstick "
                        f"for the continuations (default {PRIMER_COLLECTION}: the primer is a Bach chorale)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="one or more seeds; the samples of all of them are pooled (default 0)")
    parser.add_argument("--sampling", default="", metavar="ARGS",
                        help="extra generate arguments for every sample, e.g. \"--temperature 0.9 --top-p 0.9\"")
    parser.add_argument("--no-test", action="store_true", help="skip the test NLL (a sampling study)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = str(args.checkpoint)
    log: list[str] = []
    summary: dict = {"checkpoint": ckpt, "sampling": args.sampling, "seeds": args.seed, "commands": log,
                     "test": {}, "sets": {}}
    for data in [] if args.no_test else [args.data] + ([first_corpus(args.midi, log)] if args.midi else []):
        target = out / f"test-{data.name}.json"
        run(["evaluate", "--checkpoint", ckpt, "--data", str(data), "--split", "test", "--json", str(target)], log)
        result = json.loads(target.read_text())
        summary["test"][str(data)] = {key: result.get(key) for key in
                                      ("nats_per_token", "nats_per_note", "nats_per_second", "targets", "pieces")}
    common = ["--checkpoint", ckpt, "--seconds", f"{args.seconds:g}", "--length", "100000",
              "--num-samples", str(args.samples), "--no-guards", "--no-texture", "--no-audio", "--no-progress",
              *shlex.split(args.sampling)]
    primer = ["--primer", str(PRIMER), "--primer-seconds", f"{args.primer_seconds:g}"]
    summary["validation_drift"] = validation_drift(args.data, args.seconds)
    summary["validation_copying"] = validation_copying(args.data, args.seconds)
    summary["primer_collection"] = validation_collection(args.data, args.primer_collection)
    for name, extra in (("from nothing", []), ("primer continuations", primer)):
        stats: dict[str, list[dict]] = {"validation": [], "train": []}
        for seed in args.seed:  # one folder per seed (one seed: the set's own name)
            folder = out / (name.replace(" ", "-") + ("" if len(args.seed) == 1 else f"-seed{seed}"))
            command = ["generate", *common, "--seed", str(seed), *extra, "--out", str(folder)]
            made_by = folder / "judge-command.txt"
            if (folder / "stats.json").exists() and made_by.exists() and made_by.read_text() == shlex.join(command):
                log.append("perceiver-music " + shlex.join(command))  # samples of an earlier run, same command: kept
            else:
                run(command, log)
                write_text_atomic(made_by, shlex.join(command))
            for split in ("validation", "train"):
                target = out / f"stats-{folder.name}-{split}.json"
                run(["stats", str(folder), "--reference", str(args.data), "--split", split, "--window", "30",
                     "--json", str(target)], log)
                stats[split].append(json.loads(target.read_text()))
        summary["sets"][name] = set_summary(stats["train"], stats["validation"])
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    table = markdown(summary)
    write_text_atomic(out / "summary.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
