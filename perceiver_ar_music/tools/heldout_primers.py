"""Primers the bundled model never trained on, cut from its own corpus' held-out pieces.

Writes the first `--seconds` of each piece below (every track kept, notes cut at the end) to
`--out`, after checking in the prepared folder's manifest that none is in the train split:

- joplin/maple_leaf_rag (test split): ragtime piano, about 18 notes/s;
- schumann_clara/polonaise_op1n1 (test): romantic piano, about 12 notes/s;
- mozart/k155-movement3 (validation): a string quartet, four tracks, about 11 notes/s;
- haydn/opus1no1-movement4 (validation): a string quartet, about 5 notes/s.

Far from the chorales and masses that make up most of the corpus: a check of texture-keeping on
music like the primers users bring (dense piano, ensembles, several tracks).

    python scripts/make_heldout_primers.py --midi data/music21-midi --data data/music21-prepared --out out/heldout-primers
    python scripts/bench_texture.py --primer out/heldout-primers/joplin-maple_leaf_rag.mid --primer ... --length 8192 --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PIECES = (
    "joplin/maple_leaf_rag.mid",
    "schumann_clara/polonaise_op1n1.mid",
    "mozart/k155-movement3.mid",
    "haydn/opus1no1-movement4.mid",
)


def cut(source: Path, target: Path, seconds: float) -> int:
    """Write the first `seconds` of `source` to `target` (notes starting later dropped, longer
    ones cut, every track and its program kept); returns the number of notes written."""
    import pretty_midi

    from perceiver_ar_music.runtime.atomic import atomic_path

    midi = pretty_midi.PrettyMIDI(str(source))
    kept = 0
    for instrument in midi.instruments:
        instrument.notes = [note for note in instrument.notes if note.start < seconds]
        for note in instrument.notes:
            note.end = min(note.end, seconds)
        instrument.control_changes = [c for c in instrument.control_changes if c.time < seconds]
        instrument.pitch_bends = [b for b in instrument.pitch_bends if b.time < seconds]
        kept += len(instrument.notes)
    midi.instruments = [instrument for instrument in midi.instruments if instrument.notes]
    with atomic_path(target) as partial:
        midi.write(str(partial))
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--midi", type=Path, default=Path("data/music21-midi"), help="the corpus' MIDI folder")
    parser.add_argument("--data", type=Path, default=Path("data/music21-prepared"),
                        help="its prepared folder (the manifest says each piece's split)")
    parser.add_argument("--out", type=Path, default=Path("out/heldout-primers"))
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        splits = {f["path"]: f["split"] for f in json.loads((args.data / "manifest.json").read_text())["files"]}
    except (OSError, ValueError, KeyError) as error:
        print(f"error: cannot read {args.data / 'manifest.json'}: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for piece in PIECES:
        split = splits.get(piece)
        if split not in ("validation", "test"):
            print(f"error: {piece} is {'not in the corpus' if split is None else 'in the ' + split + ' split'}",
                  file=sys.stderr)
            return 2
        target = args.out / piece.replace("/", "-")
        notes = cut(args.midi / piece, target, args.seconds)
        print(f"{target}: {notes} notes in the first {args.seconds:g} s ({split} split)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
