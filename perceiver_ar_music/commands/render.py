"""`perceiver-music render`: MIDI file -> FLAC, Ogg Vorbis or 16-bit WAV through FluidSynth."""

from __future__ import annotations

import argparse
from pathlib import Path

from perceiver_ar_music.runtime.cli_types import bounded_int, finite_float
from perceiver_ar_music.runtime.errors import UserError

HELP = "Render a MIDI file to audio (FLAC, Ogg Vorbis or WAV) with FluidSynth and a General MIDI soundfont."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceiver_ar_music.listening.render import AUDIO_FORMATS, DEFAULT_AUDIO_FORMAT, DEFAULT_SAMPLE_RATE, DEFAULT_TAIL_SECONDS

    parser.add_argument("midi", type=Path, metavar="FILE.mid", help="MIDI file to render")
    parser.add_argument(
        "--out", type=Path, metavar="OUT",
        help="output audio; its suffix (.flac, .ogg, .wav) picks the format "
        "(default: FILE.<format> beside the input)",
    )
    parser.add_argument(
        "--audio-format", choices=list(AUDIO_FORMATS), metavar="{" + ",".join(AUDIO_FORMATS) + "}",
        help=f"format when --out is not given (default: {DEFAULT_AUDIO_FORMAT}, compressed, "
        "played by Chromium and Firefox)",
    )
    parser.add_argument(
        "--soundfont", type=Path, metavar="SF2",
        help="SoundFont 2 file (default: a system GM soundfont, else the one inside pretty_midi)",
    )
    parser.add_argument("--sample-rate", type=bounded_int(8_000, 192_000), default=DEFAULT_SAMPLE_RATE,
                        metavar="HZ", help=f"default: {DEFAULT_SAMPLE_RATE}")
    parser.add_argument(
        "--tail", type=finite_float(0, 60), default=DEFAULT_TAIL_SECONDS, metavar="SECONDS",
        help=f"seconds of audio after the last event, so the final notes ring out (default: {DEFAULT_TAIL_SECONDS})",
    )


def output_path(midi: Path, out: Path | None, audio_format: str | None) -> Path:
    """Where the audio goes: --out (its suffix must agree with an explicit --audio-format), else
    FILE.<format> beside the input."""
    from perceiver_ar_music.listening.render import DEFAULT_AUDIO_FORMAT, output_format

    if out is None:
        return midi.with_suffix("." + (audio_format or DEFAULT_AUDIO_FORMAT))
    named = output_format(out)
    if audio_format is not None and named != audio_format:
        raise UserError(f"--out {out} is a .{named} file but --audio-format is {audio_format}")
    return out


def run(args: argparse.Namespace) -> int:
    from perceiver_ar_music.listening.render import render_midi

    out = output_path(args.midi, args.out, args.audio_format)
    if out.resolve() == args.midi.resolve():
        raise UserError(f"the output would overwrite the input: {out}")
    result = render_midi(
        args.midi, out, soundfont=args.soundfont, sample_rate=args.sample_rate, tail_seconds=args.tail
    )
    print(f"{result.path}: {result.seconds:.1f} s at {result.sample_rate} Hz, soundfont {result.soundfont}")
    return 0
