"""`perceiver-music tokenize`: encode one MIDI file, summarize it, optionally decode it back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from perceiver_ar_music.runtime.errors import UserError

HELP = "Encode one MIDI file into performance tokens; with --roundtrip, decode it back and report fidelity."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", type=Path, metavar="FILE.mid", help="MIDI file to encode")
    parser.add_argument(
        "--preset",
        default="performance",
        help="tokenizer preset name (tokenization/<name>.json) or path to a miditok JSON "
        "(default: performance)",
    )
    parser.add_argument(
        "--roundtrip",
        type=Path,
        metavar="OUT.mid",
        help="decode the tokens back into this MIDI file and print the round-trip fidelity",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="OUT.json",
        help="write the ids, their token names and the summary to this JSON file",
    )


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.runtime.atomic import check_writable_file, os_error_text

    for flag, target in (("--roundtrip", args.roundtrip), ("--json", args.json)):
        if target is not None:
            if target.resolve() == args.midi.resolve():
                raise UserError(f"{flag} {target} would overwrite the input")
            check_writable_file(target, flag)  # before the work, not after it
    try:
        return _tokenize(args)
    except OSError as exc:
        raise UserError(f"cannot write the output: {os_error_text(exc)}") from None


def _tokenize(args: argparse.Namespace) -> int:
    """Encode, summarize, optionally decode back and write JSON (outputs already checked)."""
    import numpy as np

    from perceiver_ar_music.runtime.atomic import write_text_atomic
    from perceiver_ar_music.data.midi_load import MidiReadError, performance_notes, read_score
    from perceiver_ar_music.data.tokenizer import load_tokenizer, roundtrip_fidelity

    tokenizer = load_tokenizer(args.preset)
    try:
        notes = performance_notes(read_score(args.midi))
        piece = tokenizer.encode_notes(notes)
    except MidiReadError as exc:
        raise UserError(f"{args.midi}: {exc}") from None

    summary = {
        "file": str(args.midi),
        "num_notes": piece.num_notes,
        "num_tokens": len(piece.ids),
        "seconds": round(piece.seconds, 3),
        "overlaps_dropped": piece.overlaps_dropped,
        "tokenizer_hash": tokenizer.hash,
    }
    print(
        f"{args.midi}: {piece.num_notes} notes, {len(piece.ids)} tokens, {piece.seconds:.2f} s, "
        f"{piece.overlaps_dropped} overlapping same-pitch notes dropped"
    )
    if args.roundtrip:
        tokenizer.decode_to_midi(piece.ids, args.roundtrip)
        fidelity = roundtrip_fidelity(notes, tokenizer.decode_notes(piece.ids), tokenizer.vocab.seconds_per_step)
        summary["roundtrip"] = fidelity
        print(
            f"round trip -> {args.roundtrip}: max onset error {fidelity['max_onset_error_ms']:.1f} ms, "
            f"max velocity error {fidelity['max_velocity_error']}, notes lost {fidelity['notes_lost']} "
            f"({piece.overlaps_dropped} of them overlapping same-pitch notes)"
        )
    if args.json:
        ids = np.asarray(piece.ids).tolist()
        record = {**summary, "ids": ids, "token_names": [tokenizer.vocab.tokens[i] for i in ids]}
        write_text_atomic(args.json, json.dumps(record) + "\n")
        print(f"wrote {args.json}")
    return 0
