#!/usr/bin/env python
"""How much do cache resets cost? Teacher-forced NLL through the cached decoder vs the exact model.

The exact model scores every token from a full forward over its own last `max_seq_len` tokens.
The cached decoder (what `generate` uses) keeps latent activations between resets and rebuilds
the latent stack with N' latents when its cache of N is full; past the context, its window slides.
This script teacher-forces held-out pieces (longer than the context, so resets and sliding both
happen) through both paths and reports nats/token and the relative gap for each N'.

    python scripts/measure_reset_gap.py --checkpoint checkpoints/default --data data/music21-prepared
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


from perceiver_ar_music.model.checkpoint import load_model  # noqa: E402
from perceiver_ar_music.sampling.decoding import CachedDecoder  # noqa: E402
from perceiver_ar_music.training.evaluate import exact_nll  # noqa: E402
from perceiver_ar_music.data.token_store import PreparedData  # noqa: E402


@torch.no_grad()
def cached_nll(model, crops: np.ndarray, bos: int, eos: int, reset_latents: int) -> tuple[float, int]:
    """(total nats, targets) of equal-length crops (b, T) framed as BOS + crop + EOS, as one batch."""
    framed = np.concatenate([np.full((len(crops), 1), bos), crops, np.full((len(crops), 1), eos)], axis=1)
    tokens = torch.from_numpy(framed.astype(np.int64))
    decoder = CachedDecoder(model, reset_latents)
    logits = decoder.prefill(tokens[:, :1])
    total = 0.0
    for t in range(1, tokens.shape[1]):
        total += float(F.cross_entropy(logits.float(), tokens[:, t], reduction="sum"))
        if t < tokens.shape[1] - 1:
            logits = decoder.step(tokens[:, t])
    return total, tokens.numel() - len(crops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--length", type=int, default=2500, help="tokens scored per piece (pieces are cropped)")
    parser.add_argument("--max-pieces", type=int, default=4)
    parser.add_argument("--reset-latents", type=int, nargs="*", help="N' values (default: N/2 and N/4)")
    parser.add_argument("--batch-size", type=int, default=32, help="exact path windows per forward")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    model, cfg = loaded.model, loaded.config
    data = PreparedData.open(args.data, expected_tokenizer_hash=loaded.tokenizer_hash)
    long_pieces = [p for p in data.pieces(args.split) if len(p) >= args.length]
    if not long_pieces:
        raise SystemExit(f"no {args.split} piece has {args.length} tokens; lower --length")
    crops = np.stack([np.asarray(p[: args.length], dtype=np.int64) for p in long_pieces[: args.max_pieces]])
    vocab = data.vocab
    print(f"model: context {cfg.max_seq_len}, {cfg.num_latents} latents; {len(crops)} pieces x {args.length} tokens "
          f"(+EOS) from '{args.split}'", flush=True)

    start = time.perf_counter()
    exact_total, count = exact_nll(model, list(crops), vocab, args.batch_size, torch.device("cpu"))
    exact = exact_total / count
    rows = [{"path": "exact", "reset_latents": None, "nats": exact, "gap_rel": 0.0, "seconds": time.perf_counter() - start}]
    for n_prime in args.reset_latents or [cfg.num_latents // 2, cfg.num_latents // 4]:
        start = time.perf_counter()
        total, cached_count = cached_nll(model, crops, vocab.bos_id, vocab.eos_id, n_prime)
        assert cached_count == count
        nats = total / count
        rows.append({"path": "cached", "reset_latents": n_prime, "nats": nats, "gap_rel": nats / exact - 1,
                     "seconds": time.perf_counter() - start})
    print(f"{'path':<8} {'N_prime':>8} {'nats/token':>11} {'bits/token':>11} {'gap':>8} {'time':>8}")
    for row in rows:
        n_prime = "-" if row["reset_latents"] is None else str(row["reset_latents"])
        print(f"{row['path']:<8} {n_prime:>8} {row['nats']:>11.4f} {row['nats'] / math.log(2):>11.4f} "
              f"{100 * row['gap_rel']:>7.2f}% {row['seconds']:>7.1f}s")
    if args.json:
        args.json.write_text(json.dumps({"targets": count, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
