#!/usr/bin/env python
"""Tokens/s of the cached decoder with fp32 and with bf16 weights, batch 1 and 4, side by side.

    python scripts/bench_decode_precision.py [--checkpoint checkpoints/default] [--tokens 256] [--rounds 5]

Loads the checkpoint twice (`checkpoint.load_model(dtype=...)`, as `generate` does), then
alternates the variants round by round: each continues the same random `--prompt`-token prompt by
`--tokens` tokens with top-p 0.95 (the prompt's prefill included in the time). Medians of the
rounds are reported, with the bf16 / fp32 speed ratio per batch size. Greedy agreement is not
checked here (tests/test_decoding.py checks the cached against the reference path in bf16).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time

import torch


from perceiver_ar_music.model.checkpoint import load_model  # noqa: E402
from perceiver_ar_music.runtime.devices import cpu_has_fast_bf16  # noqa: E402
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {name: load_model(args.checkpoint, dtype=dtype).model for name, dtype in DTYPES.items()}
    vocab = models["fp32"].config.num_tokens
    prompt = torch.randint(3, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    sampling = SamplingConfig(top_p=0.95)

    def rate(name: str, batch: int) -> float:
        started = time.perf_counter()
        sample_ids(models[name], prompt.expand(batch, -1), args.tokens, sampling, seed=0)
        return batch * args.tokens / (time.perf_counter() - started)

    for name in models:  # warm-up
        rate(name, 1)
    rates: dict[tuple[str, int], list[float]] = {(n, b): [] for b in args.batches for n in models}
    for _ in range(args.rounds):
        for name, batch in rates:
            rates[(name, batch)].append(rate(name, batch))
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"AMX bf16 units: {'yes' if cpu_has_fast_bf16() else 'no'}")
    print(f"{args.tokens} tokens after a {args.prompt}-token prompt, top-p 0.95, median of {args.rounds} alternated rounds")
    for batch in args.batches:
        fp32, bf16 = (statistics.median(rates[(n, batch)]) for n in ("fp32", "bf16"))
        print(f"  batch {batch}: fp32 {fp32:8.1f} tok/s   bf16 {bf16:8.1f} tok/s   bf16/fp32 {bf16 / fp32:5.2f}x")


if __name__ == "__main__":
    main()
