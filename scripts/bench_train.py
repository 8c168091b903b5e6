#!/usr/bin/env python
"""Training throughput of each preset: the training loop's own optimizer step (forward, backward,
gradient clipping, fused AdamW; `--precision`, as `train` takes it: auto is bf16 autocast + TF32 on
CUDA and on CPUs with AMX, fp32 elsewhere; optionally torch.compile) on random full-length windows,
timed after warm-up. (`bench_train_loop.py` times the whole `train` loop against this step.)

Reported per preset: seconds per optimizer step, *scored target tokens/s* (batch x num_latents
per step: the tokens the loss is computed on) and *input tokens/s* (batch x max_seq_len).
Runs unchanged on CPU and CUDA.

    python scripts/bench_train.py                          # all presets; CPU: batch 1 for maestro/small
    python scripts/bench_train.py --presets small --compile --steps 20 --json out/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch


from perceiver_ar_music.runtime.devices import allow_tf32, describe_precision, pick_device  # noqa: E402
from perceiver_ar_music.model.perceiver_ar import PerceiverAR  # noqa: E402
from perceiver_ar_music.training.presets import PRECISIONS, PRESETS, resolve  # noqa: E402
from perceiver_ar_music.training.train import make_optimizer, optimizer_step  # noqa: E402

PAD_ID = 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "maestro"], choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, help="windows per step (default: the preset's; 1 for maestro/small on CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default: 10 for tiny or on CUDA, 2 otherwise)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 1, 3 with --compile)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="as train's --precision (default auto)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    text = f"{platform.platform()}, {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preset(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    big_on_cpu = device.type == "cpu" and name != "tiny"
    batch = args.batch_size or (1 if big_on_cpu else PRESETS[name].train.batch_size)
    cfg, tc = resolve(name, {}, {"batch_size": batch, "grad_accum": 1, "precision": args.precision})
    steps = args.steps or (2 if big_on_cpu else 10)
    warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    torch.manual_seed(0)
    model = PerceiverAR(cfg).to(device)
    optimizer = make_optimizer(model, tc, device)
    step_model = torch.compile(model) if args.compile else model
    step_model.train()

    def batches():
        tokens = torch.randint(3, cfg.num_tokens, (batch, cfg.max_seq_len + 1))
        return [{"tokens": tokens, "target_mask": torch.ones(batch, cfg.max_seq_len, dtype=torch.bool)}]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        optimizer_step(step_model, optimizer, batches(), tc, tc.lr, PAD_ID, device)
    sync(device)
    times = []
    for _ in range(steps):
        micro = batches()
        started = time.perf_counter()
        stats = optimizer_step(step_model, optimizer, micro, tc, tc.lr, PAD_ID, device)
        sync(device)
        times.append(time.perf_counter() - started)
    seconds = sum(times) / len(times)
    result = {
        "preset": name, "params_m": round(model.num_params() / 1e6, 2), "batch": batch,
        "max_seq_len": cfg.max_seq_len, "num_latents": cfg.num_latents, "steps": steps,
        "seconds_per_step": seconds,
        "target_tokens_per_s": batch * cfg.num_latents / seconds,
        "input_tokens_per_s": batch * cfg.max_seq_len / seconds,
        "final_loss": float(stats.nats),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    allow_tf32(device)
    precision = describe_precision(device, args.precision) + (", TF32" if device.type == "cuda" else "") + ", fused AdamW"
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {machine(device)}")
    print(f"device: {device} ({precision}{', compiled' if args.compile else ''}); random full windows, no padding")
    print("tokens/s: 'scored' counts the target tokens the loss is computed on (batch x num_latents per step), "
          "'input' the context tokens (batch x max_seq_len)")
    print(f"{'preset':<9}{'params':>9}{'batch':>7}{'context':>9}{'latents':>9}{'s/step':>10}"
          f"{'scored tok/s':>14}{'input tok/s':>13}" + ("  peak GiB" if device.type == "cuda" else ""))
    results = []
    for name in args.presets:
        r = bench_preset(name, args, device)
        results.append(r)
        print(f"{name:<9}{r['params_m']:>8.1f}M{r['batch']:>7}{r['max_seq_len']:>9}{r['num_latents']:>9}"
              f"{r['seconds_per_step']:>10.3f}{r['target_tokens_per_s']:>14,.0f}{r['input_tokens_per_s']:>13,.0f}"
              + (f"{r['peak_memory_gib']:>10.1f}" if "peak_memory_gib" in r else ""), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": sys.argv, "machine": machine(device), "device": str(device),
                                         "compile": args.compile, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
