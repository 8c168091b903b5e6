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

GENERATED_GLOB = "sample-[0-9]*.mid"
BOUNDARY_TEXT = "continuation starts"


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
    from perceiver_ar_music.listening.music_stats import reference_figures, sample_report, write_stats_json
    from perceiver_ar_music.data.tokenizer import load_tokenizer

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
        if path.is_dir() and not (path / "manifest.json").exists() and not list(path.glob(GENERATED_GLOB)):
            collections[str(path)] = reference_figures(_collection_stats(path, tokenizer), source=str(path))
        elif path.is_dir() and (path / "manifest.json").exists():
            from perceiver_ar_music.data.token_store import PreparedData

            data = PreparedData.open(path)
            collections[str(path)] = reference_figures(_prepared_stats(data, data.splits), source=str(path))
        else:
            for file in sorted(path.glob(GENERATED_GLOB)) if path.is_dir() else [path]:
                notes, primer_notes, boundary = _read_sample(file, tokenizer)
                memorization = None
                if index is not None:
                    from perceiver_ar_music.listening.memorization import memorization_report

                    memorization = memorization_report(notes, primer_notes, index).as_dict()
                reports[str(file)] = sample_report(notes, primer_notes, boundary, args.window, reference, memorization)

    for name, report in reports.items():
        print(_sample_table(name, report))
    for name, figures in collections.items():
        print(_collection_table(name, figures))
    if reference is not None:
        print(_collection_table(f"reference: {reference.source}", reference))
    if args.json:
        extra = {
            "window_s": args.window,
            "reference": reference.as_dict() if reference else None,
            "collections": {name: figures.as_dict() for name, figures in collections.items()},
        }
        write_stats_json(args.json, reports, extra)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------------------- reading


def _midi_error(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: {exc}")


def _read_sample(path: Path, tokenizer):
    """(notes, primer notes, boundary seconds) of a generated sample or of any MIDI file."""
    import numpy as np

    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.data.midi_load import MidiReadError, read_score

    try:
        score = read_score(path)
    except MidiReadError as exc:
        raise _midi_error(path, exc) from None
    if "continuation" not in {track.name for track in score.tracks}:
        try:
            ids = tokenizer.encode_score(score).ids
        except MidiReadError as exc:
            raise _midi_error(path, exc) from None
        notes = ids_to_notes(ids, tokenizer.vocab)
        return notes, 0, float(notes[:, 1].min()) if len(notes) else 0.0
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(path))
    step = tokenizer.vocab.seconds_per_step
    parts = []
    for name in ("primer", "continuation"):
        rows = [(n.pitch, n.start, n.end, n.velocity) for inst in midi.instruments if inst.name == name for n in inst.notes]
        part = np.array(rows, dtype=np.float64).reshape(-1, 4)
        part[:, 1:3] = np.round(part[:, 1:3] / step) * step  # back onto the grid they were generated on
        parts.append(part[np.lexsort((part[:, 0], part[:, 1]))])
    marks = [event.time for event in midi.text_events if event.text == BOUNDARY_TEXT]
    boundary = round(marks[0] / step) * step if marks else (float(parts[0][:, 2].max()) if len(parts[0]) else 0.0)
    return np.concatenate(parts), len(parts[0]), boundary


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

    return [music_stats(ids_to_notes(piece, data.vocab)) for split in splits for piece in data.pieces(split)]


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


# ----------------------------------------------------------------------------- tables


def _table(rows: list[tuple[str, list[str]]]) -> str:
    from perceiver_ar_music.listening.music_stats import FIGURE_KEYS, FIGURE_LABELS

    header = ["", *(FIGURE_LABELS[key] for key in FIGURE_KEYS)]
    lines = [header, *([label, *cells] for label, cells in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
        for line in lines
    )


def _cells(values) -> list[str]:
    from perceiver_ar_music.listening.music_stats import FIGURE_KEYS, formatted_figures

    return ["-"] * len(FIGURE_KEYS) if values is None else formatted_figures(values)


def _ratio_cells(ratios) -> list[str]:
    from perceiver_ar_music.listening.music_stats import FIGURE_KEYS

    return ["-" if ratios.get(key) is None else f"{ratios[key]:.2f}x" for key in FIGURE_KEYS]


def _sample_table(name: str, report) -> str:
    has_primer = report.primer is not None
    title = f"{name}: " + (
        f"primer {report.primer_notes} notes, continuation from {report.boundary_s:.2f} s"
        if has_primer else "no primer"
    ) + f", {report.continuation.note_count if report.continuation else 0} notes generated"
    rows: list[tuple[str, list[str]]] = []
    if has_primer:
        rows.append(("primer", _cells(report.primer.as_dict())))
    rows.append(("continuation" if has_primer else "piece", _cells(report.continuation.as_dict() if report.continuation else None)))
    if has_primer and report.continuation:
        rows.append(("  / primer", _ratio_cells(report.vs_primer())))
    for window in report.windows:
        rows.append((f"  {window.label()}", _cells(window.stats.as_dict())))
    if len(report.windows) > 1:
        rows.append(("  last / first", _ratio_cells(report.drift)))
    if report.reference is not None:
        rows.append(("reference median", _cells(report.reference.median)))
        for part, comparison in report.vs_reference.items():
            label = part if has_primer else "piece"
            rows.append((f"  {label} / ref", _ratio_cells(comparison.ratio)))
    lines = [title, _table(rows)]
    for part, comparison in report.vs_reference.items():
        if comparison.outside:
            from perceiver_ar_music.listening.music_stats import FIGURE_LABELS

            outside = ", ".join(FIGURE_LABELS[key] for key in comparison.outside)
            lines.append(f"{part if has_primer else 'piece'} outside the reference's 10-90% band: {outside}")
    if report.memorization is not None:
        lines += _memorization_lines(report.memorization, has_primer)
    return "\n".join(lines) + "\n"


def _memorization_lines(memo: dict, has_primer: bool) -> list[str]:
    lines = []
    for part in ("primer", "continuation"):
        match = memo.get(part)
        if match is None:
            continue
        label = part if has_primer else "piece"
        if not match["notes"]:
            lines.append(f"{label}: copies no passage of {memo['min_notes']}+ notes from the reference")
            continue
        lines.append(
            f"{label}: longest passage copied from the reference: {match['notes']} notes, "
            f"{match['seconds']:.1f} s (from {match['query_start_s']:.1f} s), from {match['name']} "
            f"at note {match['piece_note']} ({match['piece_start_s']:.1f} s)"
        )
    if has_primer and memo.get("continuation"):
        replay = " (that passage is also in the primer)" if memo["match_replays_primer"] else ""
        lines[-1] += replay
        replayed = memo["continuation_in_primer"]
        lines.append(
            f"continuation replays at most {replayed} successive notes of the primer" if replayed
            else f"continuation replays no passage of {memo['min_notes']}+ notes of the primer"
        )
    return lines


def _collection_table(name: str, figures) -> str:
    rows = [("median", _cells(figures.median)), ("10th pct", _cells(figures.low)), ("90th pct", _cells(figures.high))]
    return f"{name}: {figures.pieces} pieces\n{_table(rows)}\n"
