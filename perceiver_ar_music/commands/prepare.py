"""`perceiver-music prepare`: tokenize a folder of MIDI performances into a prepared-data folder."""

from __future__ import annotations

import argparse
import os

from perceiver_ar_music.runtime.cli_types import bounded_int

HELP = "tokenize a folder of MIDI files (MAESTRO or any collection) into train/validation/test token files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder searched recursively for .mid/.midi files; a maestro-v*.csv/.json "
                             "metadata file in it decides the splits")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="prepared-data folder to create or update incrementally")
    parser.add_argument("--workers", type=bounded_int(1, 1024), default=os.cpu_count() or 1, metavar="N",
                        help="tokenizer processes (default: CPU count, %(default)s here)")
    parser.add_argument("--split-ratios", default="0.9,0.05,0.05", metavar="TRAIN,VAL,TEST",
                        help="split fractions for files without metadata, by a hash of their path "
                             "(default: %(default)s)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH_OR_NAME",
                        help="tokenizer JSON or preset name (default: the performance preset); a different "
                             "tokenizer than the folder's previous one re-tokenizes every file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.data.store_builder import format_summary, parse_split_ratios, prepare

    result = prepare(
        args.data,
        args.out,
        workers=args.workers,
        split_ratios=parse_split_ratios(args.split_ratios),
        tokenizer_spec=args.tokenizer,
        progress=not args.no_progress,
    )
    print(format_summary(result))
    return 0
