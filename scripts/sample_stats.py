#!/usr/bin/env python
"""Do a model's samples look like its training music? Statistics of samples vs held-out pieces.

Generates K continuations of a primer (or from nothing) with the cached sampler and compares the
medians of the figures of ``music_stats.FIGURES`` (note density, polyphony, note-length
percentiles and the share over 4 s, pitch range and spread, velocity spread, silence) with those
of the pieces of a prepared split. Used for the bundled model's card.

    python scripts/sample_stats.py --checkpoint checkpoints/default --data data/music21-prepared
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


from perceiver_ar_music.model.checkpoint import load_model  # noqa: E402
from perceiver_ar_music.sampling.constraints import PerformanceGrammar  # noqa: E402
from perceiver_ar_music.data.events import ids_to_notes  # noqa: E402
from perceiver_ar_music.sampling.continuation import continue_ids, sample_notes  # noqa: E402
from perceiver_ar_music.listening.music_stats import (  # noqa: E402
    FIGURE_KEYS, FIGURE_LABELS, format_figure, music_stats, reference_figures,
)
from perceiver_ar_music.data.token_store import PreparedData  # noqa: E402
from perceiver_ar_music.sampling.settings import DEFAULT_TOP_P  # noqa: E402
from perceiver_ar_music.sampling.sampler import SamplingConfig  # noqa: E402
from perceiver_ar_music.data.tokenizer import load_tokenizer  # noqa: E402

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--primer", type=Path, help="MIDI primer (default: start from nothing)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=1500)
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="default: generate's --top-p")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loaded = load_model(args.checkpoint)
    tok = load_tokenizer(loaded.tokenizer_path)
    vocab = tok.vocab
    data = PreparedData.open(args.data, expected_tokenizer_hash=loaded.tokenizer_hash)
    reference = reference_figures(music_stats(ids_to_notes(p, vocab)) for p in data.pieces(args.split)).median
    primer = tok.encode_file(args.primer).ids.astype(np.int64) if args.primer else np.zeros(0, np.int64)
    prompt = np.concatenate(([vocab.bos_id], primer))
    table = {f"{args.split} pieces": reference}
    for constrain in (False, True):
        result = continue_ids(
            loaded.model, prompt, vocab, args.length, args.samples, SamplingConfig(top_p=args.top_p),
            seed=args.seed, rules=PerformanceGrammar(vocab) if constrain else None, progress=False,
        )
        rows = []
        for seq in result.sequences:
            notes, primer_notes, _ = sample_notes(seq, result.prompt_len, vocab)
            if len(notes) > primer_notes:
                rows.append(music_stats(notes[primer_notes:]))
        name = f"samples, top-p {args.top_p}" + (", --constrain" if constrain else "")
        table[name] = reference_figures(rows).median
    print("| median of | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for key in FIGURE_KEYS:
        print(f"| {FIGURE_LABELS[key]} | " + " | ".join(format_figure(key, col[key]) for col in table.values()) + " |")


if __name__ == "__main__":
    main()
