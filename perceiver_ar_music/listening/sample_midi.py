"""The sample MIDI format: one generated sample as a MIDI file, written and read back here.

A sample file (``sample-NN.mid`` in a generate output folder) holds two piano tracks named
``primer`` and ``continuation`` and, when there is a primer, a text event `BOUNDARY_TEXT` at the
second the continuation starts. Notes are rows (pitch, start s, end s, velocity), as
`events.ids_to_notes` gives them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from perceiver_ar_music.data.events import END, PITCH, START
from perceiver_ar_music.runtime.atomic import atomic_path
from perceiver_ar_music.runtime.errors import UserError

if TYPE_CHECKING:
    from perceiver_ar_music.data.tokenizer import PerformanceTokenizer

SAMPLE_GLOB = "sample-[0-9]*.mid"  # the sample files of a generate output folder
BOUNDARY_TEXT = "continuation starts"
TRACKS = ("primer", "continuation")


def write_sample_midi(notes: np.ndarray, primer_notes: int, boundary_s: float, path: str | os.PathLike[str]) -> None:
    """Write notes (N, 4), the first `primer_notes` of them the primer, as a sample file.

    Notes are written with the times they have (no note is lengthened: a longer note would sound
    beside notes the guards counted without it); a note of zero length is left out."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    for name, part in zip(TRACKS, (notes[:primer_notes], notes[primer_notes:])):
        track = pretty_midi.Instrument(program=0, name=name)
        for pitch, start, end, velocity in part[part[:, END] > part[:, START]]:
            track.notes.append(pretty_midi.Note(int(velocity), int(pitch), float(start), float(end)))
        midi.instruments.append(track)
    if primer_notes:
        midi.text_events.append(pretty_midi.Text(BOUNDARY_TEXT, float(boundary_s)))
    with atomic_path(Path(path)) as tmp:
        midi.write(str(tmp))


def read_sample_midi(path: Path, tokenizer: "PerformanceTokenizer") -> tuple[np.ndarray, int, float]:
    """(notes, primer notes, boundary seconds) of a sample file, or of any MIDI file.

    A sample file's times go back onto the 10 ms grid they were generated on. Any other MIDI
    file is read as the tokenizer reads it (pedal folded, 10 ms grid), as a sample without a
    primer. An unreadable file is a UserError."""
    from perceiver_ar_music.data.events import ids_to_notes
    from perceiver_ar_music.data.midi_load import MidiReadError, read_score

    try:
        score = read_score(path)
        if TRACKS[1] not in {track.name for track in score.tracks}:
            notes = ids_to_notes(tokenizer.encode_score(score).ids, tokenizer.vocab)
            return notes, 0, float(notes[:, START].min()) if len(notes) else 0.0
    except MidiReadError as exc:
        raise UserError(f"{path}: {exc}") from None
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(path))
    step = tokenizer.vocab.seconds_per_step
    parts = []
    for name in TRACKS:
        rows = [(n.pitch, n.start, n.end, n.velocity) for inst in midi.instruments if inst.name == name for n in inst.notes]
        part = np.array(rows, dtype=np.float64).reshape(-1, 4)
        part[:, [START, END]] = np.round(part[:, [START, END]] / step) * step  # back onto the grid
        parts.append(part[np.lexsort((part[:, PITCH], part[:, START]))])
    marks = [event.time for event in midi.text_events if event.text == BOUNDARY_TEXT]
    boundary = round(marks[0] / step) * step if marks else (float(parts[0][:, END].max()) if len(parts[0]) else 0.0)
    return np.concatenate(parts), len(parts[0]), boundary
