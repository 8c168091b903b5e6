#!/usr/bin/env python
"""bf16 autocast against fp32, the two checks of issue 25:

1. scoring: the bundled model's NLL on a prepared split (strided, as `evaluate` scores) in fp32
   and under bf16 autocast; the gap in nats/token (target: within 0.005);
2. training: short runs of the bundled recipe (flags from scripts/train_bundled_model.sh) in
   fp32 with several seeds and in bf16 with some of the same seeds; the training loss (mean over
   the last quarter of the steps) and the final validation NLL of each, so the bf16 runs can be
   read against the fp32 seed-to-seed spread, and each bf16 run against the fp32 run of its seed.

    python scripts/check_bf16_numerics.py --data data/m21-prepared --threads 2 [--steps 120] [--json out/bf16.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shlex
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from perceiver_ar_music.model.checkpoint import load_model  # noqa: E402
from perceiver_ar_music.training.evaluate import evaluate_pieces  # noqa: E402
from perceiver_ar_music.training.presets import RunConfig  # noqa: E402
from perceiver_ar_music.data.token_store import PreparedData  # noqa: E402
from perceiver_ar_music.training.train import METRICS_NAME, TrainRun, train  # noqa: E402

from perceiver_ar_music.tools.bundled_recipe import bundled_flags, recipe_configs

CPU = torch.device("cpu")


def scoring_gap(checkpoint: str, data: PreparedData, split: str) -> dict[str, float]:
    """nats/token and nats/note of `split` under the checkpoint in fp32 and in bf16 autocast."""
    model = load_model(checkpoint).model
    pieces, entries = data.pieces(split), data.files(split)
    out: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        result = evaluate_pieces(model, pieces, entries, data.vocab, split=split, precision=precision)
        out[f"{precision}_nats_per_token"] = result.nats_per_token
        out[f"{precision}_nats_per_note"] = result.nats_per_note
    out["gap_nats_per_token"] = out["bf16_nats_per_token"] - out["fp32_nats_per_token"]
    return out


def short_run(data: PreparedData, precision: str, seed: int, steps: int) -> dict:
    """One run of the bundled recipe for `steps` steps: its loss curve and final validation NLL."""
    cfg, tc = recipe_configs(["--data", str(data.root), *bundled_flags()], len(data.vocab))
    tc = replace(tc, precision=precision, seed=seed, max_steps=steps, eval_every=steps, save_every=steps, log_every=1)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
        run_dir = Path(folder) / "run"
        result = train(TrainRun(run_dir, RunConfig("numerics", cfg, tc), data, CPU, progress=False))
        rows = [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]
    if result.step != steps or result.best_val_nats is None:
        raise RuntimeError(f"the {precision} run of seed {seed} stopped at step {result.step} of {steps} "
                           f"(signal {result.stopped_by_signal}, validation {result.best_val_nats})")
    losses = [row["loss"] for row in rows if "loss" in row]
    tail = losses[-max(1, steps // 4):]
    return {"precision": precision, "seed": seed, "losses": losses, "tail_loss": statistics.fmean(tail),
            "val_nats": result.best_val_nats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared folder (e.g. from the music21 corpus)")
    p.add_argument("--checkpoint", default="checkpoints/default")
    p.add_argument("--split", default="test")
    p.add_argument("--steps", type=int, default=120, help="steps per training run (default 120)")
    p.add_argument("--fp32-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bf16-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--skip-training", action="store_true", help="only the scoring check")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = PreparedData.open(args.data)
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    scoring = scoring_gap(args.checkpoint, data, args.split)
    print(f"scoring {args.checkpoint} on {args.split} ({len(data.pieces(args.split))} pieces, strided): "
          f"fp32 {scoring['fp32_nats_per_token']:.5f}, bf16 {scoring['bf16_nats_per_token']:.5f} nats/token, "
          f"gap {scoring['gap_nats_per_token']:+.5f} (per note: fp32 {scoring['fp32_nats_per_note']:.4f}, "
          f"bf16 {scoring['bf16_nats_per_note']:.4f})")
    runs = []
    if not args.skip_training:
        plan = [("fp32", s) for s in args.fp32_seeds] + [("bf16", s) for s in args.bf16_seeds]
        for precision, seed in plan:
            run = short_run(data, precision, seed, args.steps)
            runs.append(run)
            print(f"  {precision} seed {seed}: training loss over the last {max(1, args.steps // 4)} steps "
                  f"{run['tail_loss']:.4f}, validation {run['val_nats']:.4f} nats/token", flush=True)
        fp32 = [r for r in runs if r["precision"] == "fp32"]
        for key, label in (("tail_loss", "training loss (last quarter)"), ("val_nats", "validation NLL")):
            values = [r[key] for r in fp32]
            print(f"fp32 {label}: {min(values):.4f}-{max(values):.4f} over seeds {args.fp32_seeds} "
                  f"(spread {max(values) - min(values):.4f})")
            for run in (r for r in runs if r["precision"] == "bf16"):
                twin = next((r for r in fp32 if r["seed"] == run["seed"]), None)
                versus = f", {run[key] - twin[key]:+.4f} vs fp32 seed {run['seed']}" if twin else ""
                print(f"  bf16 seed {run['seed']}: {run[key]:.4f}{versus}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "threads": torch.get_num_threads(),
                                         "scoring": scoring, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
