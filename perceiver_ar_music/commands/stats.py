"""`perceiver-music stats`: statistics of MIDI files, generated samples and data folders.

Each PATH is one of:

- a generate output folder (it holds ``sample-NN.mid``) or one such file: the primer and
  continuation tracks side by side, and the continuation in windows from the boundary marker;
- any other MIDI file: the whole piece, read as the tokenizer reads it (pedal folded, 10 ms grid),
  reported as a sample without a primer;
- a prepared folder (``manifest.json``; every split) or a folder of MIDI files: the median and
  10th-90th percentile band of each figure over its pieces.

``--reference`` adds the same figures for reference data and how far each sample is from them
(``music_stats.compare``); a prepared reference also gives memorisation: the longest passage each
primer and continuation shares with the reference split (``memorization``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from perceiver_ar_music.runtime.errors import UserError

HELP = "Statistics of MIDI files, generated samples or data folders, windowed, against reference data."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="MIDI files, generate output folders, prepared or raw MIDI data folders")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="reference data: a prepared folder (figures of --split and memorisation) "
                        "or a folder of MIDI files (figures only)")
    parser.add_argument("--split", default="train", help="split of a prepared --reference (default: train)")
    parser.add_argument("--window", type=float, default=30.0, metavar="S",
                        help="window length in seconds for continuations (default: 30)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure to this JSON file")


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.data.tokenizer import load_tokenizer
    from perceiver_ar_music.listening.music_stats import reference_figures, sample_report, write_stats_json
    from perceiver_ar_music.listening.sample_midi import SAMPLE_GLOB, read_sample_midi
    from perceiver_ar_music.listening.stats_tables import collection_table, sample_table

    if not (math.isfinite(args.window) and args.window > 0):
        raise UserError(f"--window must be a positive number of seconds, not {args.window:g}")
    for path in [*args.paths, *([args.reference] if args.reference else [])]:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
    reference, index = None, None
    tokenizer_source = None
    if args.reference is not None and (args.reference / "manifest.json").exists():
        reference, index, tokenizer_source = _prepared_reference(args.reference, args.split)
    tokenizer = load_tokenizer(tokenizer_source) if tokenizer_source else load_tokenizer()
    if args.reference is not None and reference is None:
        if not args.reference.is_dir():
            raise UserError(f"--reference {args.reference}: not a folder (a prepared folder or a folder of MIDI files)")
        reference = reference_figures(_collection_stats(args.reference, tokenizer), source=str(args.reference))

    reports, collections = {}, {}
    for path in args.paths:
        if path.is_dir() and not (path / "manifest.json").exists() and not list(path.glob(SAMPLE_GLOB)):
            collections[str(path)] = reference_figures(_collection_stats(path, tokenizer), source=str(path))
        elif path.is_dir() and (path / "manifest.json").exists():
            from perceiver_ar_music.data.token_store import PreparedData

            data = PreparedData.open(path)
            collections[str(path)] = reference_figures(_prepared_stats(data, data.splits), source=str(path))
        else:
            for file in sorted(path.glob(SAMPLE_GLOB)) if path.is_dir() else [path]:
                notes, primer_notes, boundary = read_sample_midi(file, tokenizer)
                memorization = None
                if index is not None:
                    from perceiver_ar_music.listening.memorization import memorization_report

                    memorization = memorization_report(notes, primer_notes, index).as_dict()
                reports[str(file)] = sample_report(notes, primer_notes, boundary, args.window, reference, memorization)

    for name, report in reports.items():
        print(sample_table(name, report))
    for name, figures in collections.items():
        print(collection_table(name, figures))
    if reference is not None:
        print(collection_table(f"reference: {reference.source}", reference))
    if args.json:
        extra = {
            "window_s": args.window,
            "reference": reference.as_dict() if reference else None,
            "collections": {name: figures.as_dict() for name, figures in collections.items()},
        }
        write_stats_json(args.json, reports, extra)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- folders


def _collection_stats(folder: Path, tokenizer):
    """MusicStats of every readable MIDI file under `folder` (unreadable ones: a warning)."""
    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.data.midi_load import MidiReadError
    from perceiver_ar_music.listening.music_stats import music_stats
    from perceiver_ar_music.data.store_builder import find_midi_files

    files = find_midi_files(folder)
    if not files:
        raise UserError(f"{folder}: no MIDI files (.mid/.midi) in this folder")
    stats = []
    for name in files:
        try:
            stats.append(music_stats(ids_to_notes(tokenizer.encode_file(folder / name).ids, tokenizer.vocab)))
        except MidiReadError as exc:
            print(f"warning: skipping {folder / name}: {exc}", file=sys.stderr)
    if not stats:
        raise UserError(f"{folder}: none of its {len(files)} MIDI files could be read")
    return stats


def _prepared_stats(data, splits):
    """MusicStats of every piece of `splits` of a prepared folder."""
    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.listening.music_stats import music_stats

    return [music_stats(ids_to_notes(piece, data.vocab)) for _, piece in data.whole_pieces(splits)]


def _prepared_reference(folder: Path, split: str):
    """(figures, memorisation index, tokenizer path) of a prepared reference split, reading each
    piece's notes once for both."""
    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.listening.memorization import ReferenceIndex
    from perceiver_ar_music.listening.music_stats import music_stats, reference_figures
    from perceiver_ar_music.data.token_store import PreparedData

    data = PreparedData.open(folder)
    stats = []

    def pieces():
        for piece in data.pieces(split):
            notes = ids_to_notes(piece, data.vocab)
            stats.append(music_stats(notes))
            yield notes

    names = [entry["path"] for entry in data.files(split)]
    index = ReferenceIndex(pieces(), names)
    figures = reference_figures(stats, source=f"{folder}, split {split}")
    return figures, index, data.tokenizer_path
