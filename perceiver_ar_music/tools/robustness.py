"""How a checkpoint copes with music that is not at the corpus' pitch and pace: validation NLL per
note on the validation pieces as they are, transposed, and played slower and faster.

Augmentation (transposition, time stretch) costs fit to the corpus as it is, and should buy
robustness to primers in other keys and tempi: this puts both on one table. The "played" column
plays each piece as the performance-like augmentation draws it (`augment.perform`, fixed seeds):
how far a model is from music that is played rather than written; "played, no jitter" the same
without the onset jitter, whose random timing (`jitter_nats`) no model can predict. The score is nats per
note, which does not depend on how many time shifts a tempo needs. The transforms are the
training augmentations' own functions (`augment.transpose`, `augment.time_stretch`), applied to
whole pieces; a transposition that would push a piece off the keyboard leaves it out of that
column (the count is printed).

    python scripts/eval_robustness.py --data data/music21-prepared \\
        --checkpoint checkpoints/default checkpoints/ablate-base checkpoints/ablate-noaug
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


TRANSFORMS = ("as is", "transpose -5", "transpose +5", "transpose +2", "tempo x0.9", "tempo x1.1", "tempo x0.8",
              "played", "played, no jitter")
PLAYED_SEED = 0  # the "played" column: each piece played as AugmentConfig's defaults draw it, seed (this, index)


def transformed(pieces, entries, name: str, vocab):
    """The pieces and their manifest entries under one transform (pieces that do not fit: left out)."""
    from perceiver_ar_music.training.augment import AugmentConfig, perform, time_stretch, transpose, transpose_bounds
    from perceiver_ar_music.data.events import music_clock

    if name == "as is":
        return list(pieces), list(entries)
    if name.startswith("played"):  # performance-like: tempo drift, onset jitter, pedal-like holds, a dynamic arc
        config = AugmentConfig(perform_windows=1.0, **({"onset_jitter": 0.0} if "no jitter" in name else {}))
        played = [perform(ids, config.sample_performance(vocab, np.random.default_rng((PLAYED_SEED, i))), vocab)
                  for i, ids in enumerate(pieces)]
        return played, [{**entry, "seconds": float(music_clock(ids, vocab)[-1]) if len(ids) else 0.0}
                        for ids, entry in zip(played, entries)]
    kind, value = name.split(" ")
    out_pieces, out_entries = [], []
    for ids, entry in zip(pieces, entries):
        if kind == "transpose":
            semitones = int(value)
            low, high = transpose_bounds(ids, vocab, abs(semitones))
            if not low <= semitones <= high:
                continue
            out_pieces.append(transpose(ids, semitones, vocab))
            out_entries.append(entry)
        else:  # "tempo xF": played F times as fast, so each time is divided by F
            speed = float(value[1:])
            out_pieces.append(time_stretch(ids, 1.0 / speed, vocab))
            out_entries.append({**entry, "seconds": entry["seconds"] / speed})
    return out_pieces, out_entries


def jitter_nats(std_steps: float, cut: float = 3.0, phases: int = 200) -> float:
    """The information one note's onset jitter adds, in nats: the entropy of a normal draw of
    `std_steps` grid steps (cut at `cut` std, as `augment.perform` draws it) rounded to the grid,
    averaged over where between two grid steps the note falls. No model can predict a random draw,
    so a played piece costs at least about this much per note more than the piece as written (less
    only what the played times give away about each other; the chords' shared time, at most)."""
    if std_steps <= 0:
        return 0.0
    from math import erf, log, sqrt

    def cdf(x: float) -> float:  # of the cut normal, in std units
        clipped = min(max(x, -cut), cut)
        return (erf(clipped / sqrt(2)) - erf(-cut / sqrt(2))) / (2 * erf(cut / sqrt(2)))

    total = 0.0
    reach = int(cut * std_steps) + 2
    for phase in (np.arange(phases) + 0.5) / phases:
        probabilities = [cdf((k + 0.5 - phase) / std_steps) - cdf((k - 0.5 - phase) / std_steps)
                         for k in range(-reach, reach + 1)]
        total -= sum(p * log(p) for p in probabilities if p > 0)
    return total / phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a prepared corpus")
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-pieces", type=int, help="only the split's first N pieces (a quick look)")
    args = parser.parse_args()

    import torch

    from perceiver_ar_music.model.checkpoint import load_model
    from perceiver_ar_music.training.evaluate import evaluate_pieces
    from perceiver_ar_music.data.token_store import PreparedData

    torch.set_num_threads(args.threads)
    data = PreparedData.open(args.data)
    pieces, entries = data.pieces(args.split)[: args.max_pieces], data.files(args.split)[: args.max_pieces]
    columns = {name: transformed(pieces, entries, name, data.vocab) for name in TRANSFORMS}
    print(f"{args.split} pieces per column: " + ", ".join(f"{name} {len(p)}" for name, (p, _) in columns.items()))
    from perceiver_ar_music.training.augment import AugmentConfig

    jitter_s = AugmentConfig().onset_jitter
    print(f"the played onset jitter ({jitter_s * 1000:g} ms) alone adds {jitter_nats(jitter_s / data.vocab.seconds_per_step):.2f} "
          f"nats/note of random timing that no model can predict")
    print("checkpoint | " + " | ".join(TRANSFORMS) + "   (nats/note)")
    for checkpoint in args.checkpoint:
        model = load_model(checkpoint).model
        cells = []
        for name in TRANSFORMS:
            result = evaluate_pieces(model, *columns[name], data.vocab, split=args.split)
            cells.append(f"{result.nats_per_note:.3f}")
        print(f"{checkpoint} | " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
