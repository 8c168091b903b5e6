"""Size and rendering time of each audio format (`render.AUDIO_FORMATS`) for a 4-minute piano MIDI.

The MIDI is the bundled example primer (a Bach chorale) played over and over until it lasts
4 minutes. Each format is rendered `--repeats` times with `render.render_midi` (FluidSynth +
encoding + the atomic write); the best time is kept. Prints a Markdown table for
docs/benchmarks.md.

    .venv/bin/python scripts/bench_audio_formats.py [--seconds 240] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pretty_midi

from perceiver_ar_music.listening.render import AUDIO_FORMATS, DEFAULT_AUDIO_FORMAT, render_midi

ROOT = Path(__file__).resolve().parents[1]


def long_midi(source: Path, seconds: float, out: Path) -> float:
    """`source` repeated back to back until it lasts `seconds`; returns the length written."""
    piece = pretty_midi.PrettyMIDI(str(source))
    notes = [note for inst in piece.instruments if not inst.is_drum for note in inst.notes]
    span = max(note.end for note in notes) + 0.5
    piano = pretty_midi.Instrument(program=0)
    offset = 0.0
    while offset < seconds:
        for note in notes:
            if offset + note.start < seconds:
                end = min(offset + note.end, seconds)
                piano.notes.append(pretty_midi.Note(note.velocity, note.pitch, offset + note.start, end))
        offset += span
    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    midi.instruments.append(piano)
    midi.write(str(out))
    return midi.get_end_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--primer", type=Path, default=ROOT / "examples" / "primer.mid")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        midi = Path(tmp) / "long.mid"
        length = long_midi(args.primer, args.seconds, midi)
        rows = []
        for fmt in AUDIO_FORMATS:
            out = Path(tmp) / f"long.{fmt}"
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = render_midi(midi, out)
                best = min(best, time.perf_counter() - start)
            rows.append((fmt, out.stat().st_size, best, result.seconds))
    print(f"{length:.0f} s of MIDI ({args.primer.name} repeated), 44.1 kHz stereo, "
          f"best of {args.repeats}, {platform.processor() or platform.machine()}, soundfont {result.soundfont.name}\n")
    print("| format | size | vs WAV | rendering time | audio |")
    print("|---|---|---|---|---|")
    wav = dict((fmt, size) for fmt, size, _, _ in rows)["wav"]
    for fmt, size, seconds, audio in rows:
        name = fmt + (" (default)" if fmt == DEFAULT_AUDIO_FORMAT else "")
        print(f"| {name} | {size / 1e6:.1f} MB | {size / wav:.0%} | {seconds:.2f} s | {audio:.1f} s |")


if __name__ == "__main__":
    main()
