#!/usr/bin/env python
"""Tokens/s of the cached decoder's modes on a checkpoint (default: the bundled model), on CPU.

    python scripts/bench_decoder_modes.py [--checkpoint checkpoints/default] [--tokens 1024] [--threads 1]

Continues a random prompt of `--prompt` tokens by `--tokens` tokens with top-p 0.95 at batch 1 and
4, for the sliced eager step (`dynamic`), the fixed-shape step (`static`) and the compiled
fixed-shape step (`generate --compile`). The first compiled call's time (compilation included)
is printed too: it depends on whether torch's on-disk compile cache already holds the step.
"""

from __future__ import annotations

import argparse
import time

import torch


from perceiver_ar_music.model.checkpoint import load_model  # noqa: E402
from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint).model
    prompt = torch.randint(3, model.config.num_tokens, (1, args.prompt), generator=torch.Generator().manual_seed(0))
    sampling = SamplingConfig(top_p=0.95)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    sample_ids(model, prompt, 32, sampling, seed=0, compile_decoder=True)
    print(f"first compiled call (32 tokens, compilation included): {time.perf_counter() - start:.1f} s")
    for mode, compiled in (("dynamic", False), ("static", False), ("static", True)):
        for batch in (1, 4):
            p = prompt.expand(batch, -1).contiguous()
            sample_ids(model, p, 32, sampling, seed=0, decode_mode=mode, compile_decoder=compiled)  # warm-up
            start = time.perf_counter()
            sample_ids(model, p, args.tokens, sampling, seed=0, decode_mode=mode, compile_decoder=compiled)
            rate = args.tokens * batch / (time.perf_counter() - start)
            print(f"{mode}{' + compile' if compiled else ''}, batch {batch}: {rate:.0f} tok/s")


if __name__ == "__main__":
    main()
