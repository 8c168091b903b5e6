#!/usr/bin/env python
"""Benchmark our Perceiver AR against the seed's port (perceiver-ar-pytorch 0.0.10), side by side.

Same config, same process, same inputs: training step time (forward + backward + AdamW) and
generation tokens/s (ours: cached decoder with resets; the port: a full forward per token, so it is
timed on fewer tokens and reported per token). Runs unchanged on CPU and CUDA (bf16 autocast on
CUDA). The port is optional: `pip install perceiver-ar-pytorch==0.0.10` (6 KB, needs einops).

    python scripts/bench_model.py                      # the issue's CPU config
    python scripts/bench_model.py --json out/bench.json --gen-tokens 1024 --port-gen-tokens 16
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F


from perceiver_ar_music.runtime.devices import autocast  # noqa: E402
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, lm_loss  # noqa: E402
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--latents", type=int, default=1024)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim-head", type=int, default=64)
    p.add_argument("--vocab", type=int, default=391)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=3, help="timed steps (after one warm-up)")
    p.add_argument("--gen-tokens", type=int, default=1024, help="tokens ours generates")
    p.add_argument("--gen-batch", type=int, default=1)
    p.add_argument("--port-gen-tokens", type=int, default=8, help="tokens the port generates (slow)")
    p.add_argument("--no-port", action="store_true", help="skip the seed's port")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], None], repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def train_step_fn(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = dict(num_tokens=args.vocab, dim=args.dim, depth=args.depth, heads=args.heads, dim_head=args.dim_head, max_seq_len=args.context)
    ours = PerceiverAR(**shape, num_latents=args.latents).to(device)
    tokens = torch.randint(3, args.vocab, (args.batch, args.context + 1), device=device)
    results: dict = {
        "config": vars(args) | {"json": str(args.json) if args.json else None},
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ours_params": ours.num_params(),
    }

    def ours_loss() -> torch.Tensor:
        with autocast(device):
            logits = ours(tokens[:, :-1])
        return lm_loss(logits, tokens[:, -args.latents :])[0]

    ours.train()
    results["ours_train_step_s"] = statistics.median(time_calls(train_step_fn(ours, ours_loss), args.train_steps, device))

    port = None
    if not args.no_port:
        try:
            from perceiver_ar_pytorch import PerceiverAR as PortPerceiverAR
        except ImportError:
            print("seed port not installed (pip install perceiver-ar-pytorch==0.0.10): skipping it")
        else:
            port = PortPerceiverAR(**shape, cross_attn_seq_len=args.context - args.latents).to(device)
            results["port_params"] = sum(p.numel() for p in port.parameters())

            def port_loss() -> torch.Tensor:
                with autocast(device):
                    logits = port(tokens[:, :-1])
                return F.cross_entropy(logits.float().transpose(1, 2), tokens[:, -args.latents :])

            port.train()
            results["port_train_step_s"] = statistics.median(time_calls(train_step_fn(port, port_loss), args.train_steps, device))

    # Generation: start from a full context of tokens, continue.
    prompt = tokens[: 1, : args.context].expand(args.gen_batch, -1).contiguous()
    sampling = SamplingConfig(top_k=32)
    # Generation runs bf16 weights on CUDA, as `perceiver-music generate` does (autocast would
    # re-cast every weight at every decode step).
    gen_model = copy.deepcopy(ours).to(torch.bfloat16) if device.type == "cuda" else ours
    gen_model.eval()

    def ours_generate() -> None:
        sample_ids(gen_model, prompt, args.gen_tokens, sampling, seed=0)

    gen_s = statistics.median(time_calls(ours_generate, 1, device))
    results["ours_gen_tokens_per_s"] = args.gen_tokens * args.gen_batch / gen_s
    if port is not None:
        port.eval()

        @torch.no_grad()
        def port_generate() -> None:
            out = prompt
            for _ in range(args.port_gen_tokens):
                with autocast(device):
                    logits = port(out[:, -args.context :])[:, -1]
                out = torch.cat((out, torch.multinomial(logits.float().softmax(-1), 1)), dim=1)

        port_s = statistics.median(time_calls(port_generate, 1, device))
        results["port_gen_tokens_per_s"] = args.port_gen_tokens * args.gen_batch / port_s
        results["train_time_ratio_ours_over_port"] = results["ours_train_step_s"] / results["port_train_step_s"]
        results["gen_speedup_ours_over_port"] = results["ours_gen_tokens_per_s"] / results["port_gen_tokens_per_s"]

    rows = [
        ("device", results["device"]),
        ("torch / threads", f"{results['torch']} / {results['threads']}"),
        ("config", f"context {args.context}, latents {args.latents}, dim {args.dim}, depth {args.depth}, heads {args.heads}x{args.dim_head}, batch {args.batch}"),
        ("ours: train step", f"{results['ours_train_step_s']:.3f} s"),
        ("ours: generate", f"{results['ours_gen_tokens_per_s']:.1f} tok/s ({args.gen_tokens} tokens, batch {args.gen_batch})"),
    ]
    if port is not None:
        rows += [
            ("port: train step", f"{results['port_train_step_s']:.3f} s"),
            ("port: generate", f"{results['port_gen_tokens_per_s']:.2f} tok/s ({args.port_gen_tokens} tokens)"),
            ("train time ours/port", f"{results['train_time_ratio_ours_over_port']:.2f}x"),
            ("generation speed ours/port", f"{results['gen_speedup_ours_over_port']:.0f}x"),
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
