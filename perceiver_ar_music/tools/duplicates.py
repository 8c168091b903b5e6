"""Which held-out pieces repeat a training piece, and what the test NLL is without them.

The split hashes each piece's path, so a piece that a corpus holds twice under two paths (music21
lists some Palestrina mass movements twice) can land in training and in test at once: that test
piece is not unseen. For each validation and test piece this finds the longest passage it shares
with the training pieces (``memorization``: pitch sequences, blind to tempo and dynamics), lists
those that share at least ``--share`` of their notes, and, with ``--checkpoint``, scores the test
split with and without them (``evaluate``'s strided method).

    python scripts/split_duplicates.py --data data/music21-prepared data/music21-v1-prepared \\
        --checkpoint checkpoints/default
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path


SHARE = 0.9  # a held-out piece sharing this much of its notes with one training passage is a repeat
HELD_OUT = ("validation", "test")


@dataclass(frozen=True)
class Repeat:
    """A held-out piece and the training piece it repeats."""

    split: str
    path: str
    notes: int
    shared: int
    training_piece: str


def repeats(data: Path, share: float = SHARE) -> dict[str, tuple[list[Repeat], list[bool]]]:
    """Per held-out split: the pieces that share at least `share` of their notes with a training
    passage, and per piece of the split (manifest order) whether it is kept (not a repeat)."""
    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.listening.memorization import ReferenceIndex
    from perceiver_ar_music.data.token_store import PreparedData

    prepared = PreparedData.open(data)
    index = ReferenceIndex.from_prepared(prepared, "train")  # built once for both splits
    result = {}
    for split in HELD_OUT:
        found, kept = [], []
        for entry, ids in zip(prepared.files(split), prepared.pieces(split)):
            notes = ids_to_notes(ids, prepared.vocab)
            match = index.longest_match(notes) if len(notes) else None
            repeat = match is not None and match.notes >= share * len(notes)
            if repeat:
                found.append(Repeat(split, entry["path"], len(notes), match.notes, str(match.name)))
            kept.append(not repeat)
        result[split] = (found, kept)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="prepared corpora")
    parser.add_argument("--checkpoint", type=Path, help="also score the test split with and without the repeats")
    parser.add_argument("--share", type=float, default=SHARE, help=f"share of notes that makes a repeat (default {SHARE})")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model = None
    if args.checkpoint:
        import torch

        from perceiver_ar_music.model.checkpoint import load_model

        torch.set_num_threads(args.threads)
        model = load_model(args.checkpoint).model
    for data in args.data:
        print(f"{data}:")
        by_split = repeats(data, args.share)
        for split, (found, kept) in by_split.items():
            print(f"  {split}: {len(found)} of {len(kept)} pieces repeat a training piece")
            for r in found:
                print(f"    {r.path} ({r.notes} notes): {r.shared} in a row from {r.training_piece}")
        if model is not None:
            from perceiver_ar_music.training.evaluate import evaluate_pieces
            from perceiver_ar_music.data.token_store import PreparedData

            prepared = PreparedData.open(data)
            pieces, entries = prepared.pieces("test"), prepared.files("test")
            for label, keep in (("all test pieces", [True] * len(pieces)), ("without the repeats", by_split["test"][1])):
                result = evaluate_pieces(model, [p for p, k in zip(pieces, keep) if k],
                                         [e for e, k in zip(entries, keep) if k], prepared.vocab, split="test")
                print(f"  {label}: {result.pieces} pieces, {result.nats_per_token:.4f} nats/token, "
                      f"{result.nats_per_note:.2f} nats/note, {result.nats_per_second:.2f} nats/second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
