#!/usr/bin/env python
"""`train`'s step on the bundled model's shape against the model's own step and the seed port's
bare step, side by side in one process (the machine may be shared: rounds alternate the variants
and the medians are reported).

- port: the seed's port (perceiver-ar-pytorch 0.0.10, `pip install -e '.[bench]'`) at the same
  shape: forward, cross-entropy, backward, AdamW on random full windows, fp32 (it cannot run
  under bf16 autocast: its mask value overflows bf16).
- model: our model's own step in each precision: forward, loss, backward, AdamW (the training
  loop's optimizer), random full windows.
- step, data (`--breakdown`): the loop's step function (z-loss, clipping, real padded windows)
  on batches drawn beforehand, and the drawing of one batch (windows, augmentation, collation).
- loop: the `train` loop itself (`train.train` with the bundled recipe's flags, read from
  scripts/train_bundled_model.sh) on prepared data: the wall time between steps, data,
  augmentation, clipping, logging and all, leaving out the steps that validate or save.

    python scripts/bench_train_loop.py --data data/m21-prepared --threads 2
    python scripts/bench_train_loop.py --data data/m21-prepared --precisions fp32 --breakdown --json out/loop.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from perceiver_ar_music.runtime.devices import autocast, describe_precision  # noqa: E402
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig, lm_loss  # noqa: E402
from perceiver_ar_music.training.presets import RunConfig, TrainConfig  # noqa: E402
from perceiver_ar_music.data.token_store import PreparedData  # noqa: E402
from perceiver_ar_music.runtime.distributed import DistInfo  # noqa: E402
from perceiver_ar_music.training.train import TrainRun, make_optimizer, optimizer_step, train, train_loader  # noqa: E402

from perceiver_ar_music.tools.bundled_recipe import bundled_flags, recipe_configs

CPU = torch.device("cpu")


def model_step_fn(cfg: PerceiverARConfig, tc: TrainConfig, precision: str, batch: int) -> Callable[[], None]:
    """Our model's own step: forward, loss, backward, AdamW (no data, no clipping, no z-loss)."""
    model = PerceiverAR(cfg).train()
    optimizer = make_optimizer(model, tc, CPU)
    tokens = torch.randint(3, cfg.num_tokens, (batch, cfg.max_seq_len + 1))

    def step() -> None:
        with autocast(CPU, precision):
            logits = model(tokens[:, :-1])
        loss = lm_loss(logits, tokens[:, -logits.shape[1]:])[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_step_fn(data: PreparedData, cfg: PerceiverARConfig, tc: TrainConfig) -> Callable[[], None]:
    """The loop's step function (`train.optimizer_step`: z-loss, clipping, the padding masks of
    real windows) on training batches drawn beforehand: the loop without its data and bookkeeping."""
    model = PerceiverAR(cfg).train()
    optimizer = make_optimizer(model, tc, CPU)
    loader = iter(train_loader(data, cfg, tc, DistInfo(), 0, 0, CPU))
    batches = [next(loader) for _ in range(8)]
    drawn = itertools.cycle(batches)

    def step() -> None:
        optimizer_step(model, optimizer, [next(drawn)], tc, tc.lr, data.vocab.pad_id, CPU)

    return step


def data_fn(data: PreparedData, cfg: PerceiverARConfig, tc: TrainConfig) -> Callable[[], None]:
    """Drawing one training batch (windows, augmentation, collation), as the loop does."""
    loader = iter(train_loader(data, cfg, tc, DistInfo(), 0, 0, CPU))
    return lambda: next(loader)


def port_step_fn(cfg: PerceiverARConfig, batch: int) -> Callable[[], None] | None:
    """The seed port's bare step at the same shape, or None if it is not installed."""
    try:
        from perceiver_ar_pytorch import PerceiverAR as Port
    except ImportError:
        return None
    port = Port(num_tokens=cfg.num_tokens, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head,
                max_seq_len=cfg.max_seq_len, cross_attn_seq_len=cfg.max_seq_len - cfg.num_latents).train()
    optimizer = torch.optim.AdamW(port.parameters(), lr=1e-4)
    tokens = torch.randint(3, cfg.num_tokens, (batch, cfg.max_seq_len + 1))

    def step() -> None:
        logits = port(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().transpose(1, 2), tokens[:, -cfg.num_latents:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step: Callable[[], None], steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def loop_times(data: PreparedData, cfg: PerceiverARConfig, tc: TrainConfig, steps: int, workdir: Path) -> list[float]:
    """`steps` wall times between consecutive steps of a `train` run of `steps` + 2 steps (the first
    step and the last, which validates and saves, are left out)."""
    total = steps + 2
    config = RunConfig("bench", cfg, replace(tc, max_steps=total, eval_every=total, save_every=total))
    stamps: list[float] = []
    with tempfile.TemporaryDirectory(dir=workdir) as run_dir, contextlib.redirect_stdout(io.StringIO()):
        train(TrainRun(Path(run_dir) / "run", config, data, CPU, progress=False),
              on_step=lambda _step: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])][:-1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a prepared folder (e.g. from the music21 corpus)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=5, help="rounds; each runs every variant (default 5)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant and round (default 4)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-port", action="store_true", help="leave the seed's port out")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the loop's step function on batches drawn beforehand ('step') and the drawing "
                        "of a batch ('data'): what the loop adds to the model's own step, in parts")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = bundled_flags()
    data = PreparedData.open(args.data)
    cfg, tc = recipe_configs(["--data", str(args.data), *flags], len(data.vocab))
    torch.manual_seed(0)
    variants: dict[str, Callable[[], list[float]]] = {}
    port = None if args.no_port else port_step_fn(cfg, tc.batch_size)
    if port is not None:
        variants["port fp32"] = lambda: timed(port, args.steps)
    for precision in args.precisions:
        step = model_step_fn(cfg, tc, precision, tc.batch_size)
        variants[f"model {precision}"] = lambda step=step: timed(step, args.steps)
        loop_tc = replace(tc, precision=precision)
        if args.breakdown:
            step = train_step_fn(data, cfg, loop_tc)
            variants[f"step {precision}"] = lambda step=step: timed(step, args.steps)
        variants[f"loop {precision}"] = lambda loop_tc=loop_tc: loop_times(data, cfg, loop_tc, args.steps, Path(tempfile.gettempdir()))
    if args.breakdown:
        draw = data_fn(data, cfg, tc)
        variants["data"] = lambda: timed(draw, args.steps)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name] += fn()
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; auto precision here: "
          f"{describe_precision(CPU)}")
    print(f"shape: batch {tc.batch_size}, context {cfg.max_seq_len}, {cfg.num_latents} latents, width {cfg.dim}, "
          f"{cfg.depth} layers ({sum(p.numel() for p in PerceiverAR(cfg).parameters()) / 1e6:.1f}M); "
          f"flags: {shlex.join(flags)}")
    print(f"{args.rounds} rounds x {args.steps} steps per variant, alternated; median s/step")
    for name, value in median.items():
        print(f"  {name:<12}{value:8.3f} s   (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    ratios = {}
    for precision in args.precisions:
        ratios[f"loop {precision} / model {precision}"] = median[f"loop {precision}"] / median[f"model {precision}"]
        if args.breakdown:
            ratios[f"step {precision} / model {precision}"] = median[f"step {precision}"] / median[f"model {precision}"]
        if port is not None:
            ratios[f"loop {precision} / port fp32"] = median[f"loop {precision}"] / median["port fp32"]
    if "fp32" in args.precisions and "bf16" in args.precisions:
        ratios["model bf16 / model fp32"] = median["model bf16"] / median["model fp32"]
    for name, value in ratios.items():
        print(f"  {name:<28}{value:6.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "threads": torch.get_num_threads(), "flags": flags,
                                         "seconds": times, "median_s": median, "ratios": ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
