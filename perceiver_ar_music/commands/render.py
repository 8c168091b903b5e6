"""`perceiver-music render`: MIDI file -> 16-bit WAV or FLAC through FluidSynth."""

from __future__ import annotations

import argparse
from pathlib import Path

from perceiver_ar_music.errors import UserError

HELP = "Render a MIDI file to WAV (or FLAC) audio with FluidSynth and a General MIDI soundfont."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("midi", type=Path, metavar="FILE.mid", help="MIDI file to render")
    parser.add_argument(
        "--out", type=Path, metavar="OUT.wav",
        help="output audio, .wav or .flac (default: FILE.wav beside the input)",
    )
    parser.add_argument(
        "--soundfont", type=Path, metavar="SF2",
        help="SoundFont 2 file (default: a system GM soundfont, else the one inside pretty_midi)",
    )
    parser.add_argument("--sample-rate", type=int, default=44_100, metavar="HZ", help="default: 44100")
    parser.add_argument(
        "--tail", type=float, default=1.5, metavar="SECONDS",
        help="seconds of audio after the last event, so the final notes ring out (default: 1.5)",
    )


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.render import render_midi

    out = args.out if args.out is not None else args.midi.with_suffix(".wav")
    if out.resolve() == args.midi.resolve():
        raise UserError(f"the output would overwrite the input: {out}")
    result = render_midi(
        args.midi, out, soundfont=args.soundfont, sample_rate=args.sample_rate, tail_seconds=args.tail
    )
    print(f"{result.path}: {result.seconds:.1f} s at {result.sample_rate} Hz, soundfont {result.soundfont}")
    return 0
