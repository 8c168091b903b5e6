"""Write examples/primer.mid: a public-domain Bach chorale from music21's corpus, as piano.

J. S. Bach's four-part chorale BWV 365 (music21 corpus ``bach/bwv365``), all voices merged
into one piano track at 72 quarter notes per minute (about 30 s), each voice at its own
velocity, notes slightly detached. Deterministic: the same bytes on every run.

    python scripts/make_example_primer.py [--out examples/primer.mid]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from perceiver_ar_music.tools import REPO as ROOT

# A test piece of the bundled model's corpus (the split hashes `bach/bwv365.mid`), so the Quickstart
# continues music the model has not seen, as a user's own primer would be. (Until 2026-12-03 it was
# BWV 66.6, a training piece.)
CHORALE = "bach/bwv365"
QUARTERS_PER_MINUTE = 72
TICKS_PER_QUARTER = 480
ARTICULATION = 0.92  # sounding fraction of each written duration
VOICE_VELOCITY = {"Soprano": 82, "Alto": 60, "Tenor": 58, "Bass": 70}


def chorale_notes() -> list[tuple[int, int, int, int]]:
    """(start_tick, end_tick, pitch, velocity) of every voice, one note per key at a time."""
    from music21 import corpus

    score = corpus.parse(CHORALE).stripTies()
    notes: dict[tuple[int, int], tuple[int, int]] = {}  # (start, pitch) -> (end, velocity)
    for part in score.parts:
        velocity = VOICE_VELOCITY.get(part.partName, 64)
        for element in part.flatten().notes:
            start = round(float(element.offset) * TICKS_PER_QUARTER)
            length = round(float(element.quarterLength) * TICKS_PER_QUARTER * ARTICULATION)
            for pitch in element.pitches:
                key = (start, pitch.midi)
                end, loudest = notes.get(key, (0, 0))
                notes[key] = (max(end, start + length), max(loudest, velocity))
    ordered = sorted((start, end, pitch, velocity) for (start, pitch), (end, velocity) in notes.items())
    # A voice doubling the pitch another voice still holds re-strikes that key.
    next_start: dict[int, int] = {}
    clipped = []
    for start, end, pitch, velocity in reversed(ordered):
        clipped.append((start, min(end, next_start.get(pitch, end)), pitch, velocity))
        next_start[pitch] = start
    return sorted(clipped)


def primer_bytes() -> bytes:
    """The primer as a type-0 MIDI file."""
    import mido

    mid = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_QUARTER)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=f"Bach BWV {CHORALE.removeprefix('bach/bwv')} (piano)", time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(QUARTERS_PER_MINUTE), time=0))
    track.append(mido.Message("program_change", program=0, time=0))
    events = []
    for start, end, pitch, velocity in chorale_notes():
        events.append((start, 1, mido.Message("note_on", note=pitch, velocity=velocity)))
        events.append((end, 0, mido.Message("note_off", note=pitch, velocity=0)))
    now = 0
    for tick, _, message in sorted(events, key=lambda event: (event[0], event[1], event[2].note)):
        track.append(message.copy(time=tick - now))
        now = tick
    mid.tracks.append(track)
    buffer = io.BytesIO()
    mid.save(file=buffer)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "primer.mid")
    args = parser.parse_args()
    from perceiver_ar_music.runtime.atomic import write_bytes_atomic

    data = primer_bytes()
    write_bytes_atomic(args.out, data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
