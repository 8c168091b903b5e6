"""`perceiver-music evaluate`: negative log-likelihood of a split under a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from perceiver_ar_music.runtime.cli_types import bounded_int
from perceiver_ar_music.runtime.cli_types import PRECISIONS

HELP = "score a split (default test) under a checkpoint: NLL in nats and bits per token, per note and per second"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="a checkpoint folder, or a run folder (its best/, else its latest ckpt-<step>/)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="a prepared folder, or a MIDI folder (prepared on the fly with the checkpoint's tokenizer "
                             "into perceiver-music's cache, ~/.cache/perceiver-music or $PERCEIVER_MUSIC_CACHE)")
    parser.add_argument("--prepared-cache", metavar="DIR", help="where to prepare a MIDI --data folder instead")
    parser.add_argument("--split", default="test", help="split to score (default: test)")
    parser.add_argument("--exact", action="store_true",
                        help="score every target with its own full-context window (one forward per token: slow); "
                             "default: the strided approximation")
    parser.add_argument("--skip-repeats", action="store_true",
                        help="leave out the split's files that are token for token a training file (the manifest's "
                             "held_out_repeats, named by prepare): they are not unseen")
    parser.add_argument("--max-pieces", type=bounded_int(1, 10**9), metavar="N", help="score only the split's first N pieces")
    parser.add_argument("--batch-size", type=bounded_int(1, 1 << 16), default=8, metavar="N", help="windows per forward (default: 8)")
    parser.add_argument("--device", default="auto", help="auto (the GPU if any, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast of the forwards: auto (the default: bf16 on CUDA and on CPUs with AMX bf16 "
                             "units, else fp32), bf16 or fp32")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.runtime.atomic import check_writable_file, os_error_text, write_json_atomic
    from perceiver_ar_music.model.checkpoint import load_model
    from perceiver_ar_music.runtime.devices import describe_precision, pick_device
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.training.evaluate import evaluate_pieces, format_evaluation
    from perceiver_ar_music.data.store_builder import ensure_prepared
    from perceiver_ar_music.data.token_store import PreparedData

    if args.json:
        check_writable_file(args.json, "--json")  # before the scoring, not after it
    device = pick_device(args.device)
    precision = describe_precision(device, args.precision)  # before loading: a bad choice is a UserError
    loaded = load_model(args.checkpoint, device=device)
    prepared = ensure_prepared(args.data, args.prepared_cache, tokenizer=str(loaded.tokenizer_path))
    data = PreparedData.open(prepared, expected_tokenizer_hash=loaded.tokenizer_hash)
    pieces, entries = data.pieces(args.split), data.files(args.split)
    repeats = {r["path"] for r in data.manifest.get("held_out_repeats", [])} if args.split != "train" else set()
    repeated = sum(entry["path"] in repeats for entry in entries)
    if args.skip_repeats and repeated:
        kept = [i for i, entry in enumerate(entries) if entry["path"] not in repeats]
        pieces, entries = [pieces[i] for i in kept], [entries[i] for i in kept]
    if args.max_pieces is not None:
        pieces, entries = pieces[: args.max_pieces], entries[: args.max_pieces]
    result = evaluate_pieces(loaded.model, pieces, entries, data.vocab, split=args.split,
                             method="exact" if args.exact else "strided", batch_size=args.batch_size, device=device,
                             precision=args.precision)
    step = loaded.meta.get("step")
    print(f"checkpoint {loaded.path}" + (f" (step {step})" if step is not None else "") + f" on {device}"
          + f", {precision}")
    print(format_evaluation(result))
    if repeated:
        print(f"note: {repeated} of the split's files are token for token training files; "
              + ("left out (--skip-repeats)" if args.skip_repeats else "scored (--skip-repeats leaves them out)"))
    if args.json:
        try:
            write_json_atomic(args.json, {"checkpoint": str(loaded.path), "step": step, "data": str(data.root),
                                          "repeats_of_training": repeated, "repeats_left_out": bool(args.skip_repeats and repeated),
                                          "precision": precision,
                                          **result.to_dict()})
        except OSError as exc:
            raise UserError(f"cannot write --json {args.json}: {os_error_text(exc)}") from None
        print(f"wrote {args.json}")
    return 0
