#!/usr/bin/env python
"""Store the note guards' limits in a checkpoint trained before `train` stored them itself.

`train` writes `note_limits` (note-duration and polyphony percentiles of its training pieces) into
every checkpoint's meta.json; `generate` and the studio take the guards' defaults from there. This
computes the same figures from the prepared data the checkpoint was trained on and adds them.

    python scripts/store_note_limits.py --checkpoint checkpoints/default --data data/music21-prepared
    python scripts/store_note_limits.py --checkpoint checkpoints/v3p/best --data data/package-maestro-prepared data/music21-prepared
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from perceiver_ar_music.runtime.atomic import write_json_atomic  # noqa: E402
from perceiver_ar_music.model.checkpoint import META_NAME, find_checkpoint, read_json  # noqa: E402
from perceiver_ar_music.sampling.note_limits import note_limits  # noqa: E402
from perceiver_ar_music.data.token_store import PreparedData  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="the prepared data it was trained on (a fine-tune's new data and its --mix-data)")
    parser.add_argument("--split", default="train")
    args = parser.parse_args()

    checkpoint = find_checkpoint(args.checkpoint)
    meta = read_json(checkpoint / META_NAME)
    folders = [PreparedData.open(folder, expected_tokenizer_hash=meta.get("tokenizer_hash")) for folder in args.data]
    limits = note_limits([piece for data in folders for piece in data.pieces(args.split)], folders[0].vocab)
    meta["note_limits"] = limits
    write_json_atomic(checkpoint / META_NAME, meta)
    print(json.dumps(limits, indent=1))


if __name__ == "__main__":
    main()
