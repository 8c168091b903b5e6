"""Render a MIDI file to 16-bit WAV or FLAC audio with FluidSynth and a General MIDI soundfont.

The file is read with symusic (in seconds) and played into pyfluidsynth event by event: notes
with their velocities, every control change (so the sustain pedal is FluidSynth's own) and pitch
bends, each track on its own channel with its program (drum tracks on the percussion bank).
FluidSynth writes float samples, so the result is peak-normalized (to ``PEAK_DBFS``) in the one
rounding to 16 bits. A tail of silence after the last event lets the final notes ring out.

Without FluidSynth's shared library (or the pyfluidsynth binding) ``render_midi`` raises
``AudioUnavailable``: a one-line ``UserError`` that says how to install it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_ar_music.atomic import atomic_path
from perceiver_ar_music.errors import UserError
from perceiver_ar_music.midi_load import MidiReadError, read_score

DEFAULT_SAMPLE_RATE = 44_100
DEFAULT_TAIL_SECONDS = 1.5
PEAK_DBFS = -1.0
MIN_NOTE_SECONDS = 0.005  # a zero-length note still sounds (and its note-off follows its note-on)
POLYPHONY = 512  # voices; a pedalled piano passage can exceed FluidSynth's default 256
DRUM_CHANNEL = 9
DRUM_BANK = 128
AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}

# Standard places of a General MIDI soundfont, best piano first; the first that exists wins.
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)

# Event kinds, in the order they apply at one instant: releases, then controls, then new notes.
NOTE_OFF, CONTROL, PITCH_BEND, NOTE_ON = range(4)


class AudioUnavailable(UserError):
    """FluidSynth cannot be loaded, so no audio can be rendered (MIDI and images still can)."""

    exit_code = 3


@dataclass(frozen=True)
class RenderedAudio:
    """What ``render_midi`` wrote."""

    path: Path
    seconds: float
    sample_rate: int
    soundfont: Path


def load_fluidsynth():
    """The pyfluidsynth module, or AudioUnavailable with an install hint."""
    try:
        return importlib.import_module("fluidsynth")
    except ModuleNotFoundError as exc:
        if exc.name != "fluidsynth":
            raise
        raise AudioUnavailable(
            "the pyfluidsynth package is missing, so no audio was rendered: pip install pyfluidsynth"
        ) from None
    except (ImportError, OSError):
        raise AudioUnavailable(
            "FluidSynth's library is missing, so no audio was rendered: install it with "
            "'sudo apt-get install libfluidsynth3' (Debian/Ubuntu) or 'brew install fluid-synth' (macOS)"
        ) from None


def bundled_soundfont() -> Path | None:
    """The small GM soundfont (TimGM6mb) shipped inside the pretty_midi package, if present."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).with_name("TimGM6mb.sf2")
    return path if path.is_file() else None


def default_soundfont() -> Path:
    """The first system GM soundfont found, else pretty_midi's bundled one."""
    for candidate in SYSTEM_SOUNDFONTS:
        if Path(candidate).is_file():
            return Path(candidate)
    bundled = bundled_soundfont()
    if bundled is None:
        raise UserError("no General MIDI soundfont found: pass one with --soundfont FILE.sf2")
    return bundled


def check_soundfont(path: str | os.PathLike[str]) -> Path:
    """`path` if it is a readable SoundFont 2 file (RIFF 'sfbk' header), else a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"soundfont not found: {path}")
    if not path.is_file():
        raise UserError(f"soundfont is not a file: {path}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError as exc:
        raise UserError(f"cannot read soundfont {path} ({exc.strerror})") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise UserError(f"not a SoundFont 2 file (no RIFF sfbk header): {path}")
    return path


def output_format(path: str | os.PathLike[str]) -> str:
    """The soundfile format name for an output path ending in .wav or .flac."""
    suffix = Path(path).suffix.lower()
    if suffix not in AUDIO_FORMATS:
        raise UserError(f"audio output must end in .wav or .flac: {path}")
    return AUDIO_FORMATS[suffix]


def score_events(score) -> tuple[np.ndarray, list[tuple[int, int, bool]]]:
    """All events of a symusic ScoreSecond as a time-ordered (E, 5) float array of rows
    ``time, kind, channel, a, b`` and the ``(channel, program, is_drum)`` of every used channel.

    Melodic tracks get channels 0, 1, ... skipping the drum channel 9 (wrapping after 255);
    drum tracks share channel 9.
    """
    columns: list[np.ndarray] = []
    programs: dict[int, tuple[int, int, bool]] = {}
    melodic_channels = [c for c in range(256) if c != DRUM_CHANNEL]
    next_melodic = 0
    for track in score.tracks:
        if not (len(track.notes) or len(track.controls) or len(track.pitch_bends)):
            continue
        if track.is_drum:
            channel = DRUM_CHANNEL
        else:
            channel = melodic_channels[next_melodic % len(melodic_channels)]
            next_melodic += 1
        programs.setdefault(channel, (channel, int(track.program), bool(track.is_drum)))
        columns.extend(_track_events(track, channel))
    if not columns:
        return np.zeros((0, 5)), []
    events = np.concatenate(columns)
    order = np.lexsort((events[:, 1], events[:, 0]))
    return events[order], list(programs.values())


def _rows(time, kind: int, channel: int, a, b) -> np.ndarray:
    time = np.asarray(time, dtype=np.float64)
    rows = np.empty((len(time), 5), dtype=np.float64)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4] = time, kind, channel, a, b
    return rows


def _track_events(track, channel: int) -> list[np.ndarray]:
    events = []
    if len(track.notes):
        notes = track.notes.numpy()
        pitch = notes["pitch"].astype(np.int64)
        velocity = notes["velocity"].astype(np.int64)
        valid = (pitch >= 0) & (pitch <= 127) & (velocity > 0)
        start = notes["time"].astype(np.float64)[valid]
        end = np.maximum(start + notes["duration"].astype(np.float64)[valid], start + MIN_NOTE_SECONDS)
        pitch, velocity = pitch[valid], np.minimum(velocity[valid], 127)
        events += [_rows(start, NOTE_ON, channel, pitch, velocity), _rows(end, NOTE_OFF, channel, pitch, 0)]
    if len(track.controls):
        controls = track.controls.numpy()
        number, value = controls["number"].astype(np.int64), controls["value"].astype(np.int64)
        valid = (number >= 0) & (number <= 127) & (value >= 0) & (value <= 127)
        events.append(_rows(controls["time"][valid], CONTROL, channel, number[valid], value[valid]))
    if len(track.pitch_bends):
        bends = track.pitch_bends.numpy()
        events.append(_rows(bends["time"], PITCH_BEND, channel, bends["value"], 0))
    return events


def synthesize(score, soundfont: Path, sample_rate: int, tail_seconds: float) -> np.ndarray:
    """Stereo float32 samples, shape (frames, 2), of a symusic ScoreSecond played by FluidSynth.

    Length: the last event's time plus ``tail_seconds``.
    """
    events, programs = score_events(score)
    if not len(events) or not (events[:, 1] == NOTE_ON).any():
        raise UserError("the MIDI file has no notes to render")
    fluidsynth = load_fluidsynth()
    frames = int(round(float(events[:, 0].max()) * sample_rate)) + int(round(tail_seconds * sample_rate))
    out = np.zeros((frames, 2), dtype=np.float32)
    synth = fluidsynth.Synth(gain=0.2, samplerate=float(sample_rate), **{"synth.polyphony": POLYPHONY})
    try:
        write = _float_writer(fluidsynth, synth, out)
        sfid = synth.sfload(str(soundfont))
        if sfid < 0:
            raise UserError(f"FluidSynth could not load the soundfont: {soundfont}")
        for channel, program, is_drum in programs:
            bank = DRUM_BANK if is_drum else 0
            if synth.program_select(channel, sfid, bank, program) < 0:
                synth.program_select(channel, sfid, bank, 0)
        position = 0
        for time, kind, channel, a, b in events:
            frame = min(int(round(time * sample_rate)), frames)
            if frame > position:
                write(position, frame - position)
                position = frame
            _send(synth, int(kind), int(channel), int(a), int(b))
        write(position, frames - position)
    finally:
        synth.delete()
    return out


def _send(synth, kind: int, channel: int, a: int, b: int) -> None:
    if kind == NOTE_ON:
        synth.noteon(channel, a, b)
    elif kind == NOTE_OFF:
        synth.noteoff(channel, a)
    elif kind == CONTROL:
        synth.cc(channel, a, b)
    else:
        synth.pitch_bend(channel, a)


def _float_writer(fluidsynth, synth, out: np.ndarray):
    """A function ``write(start, count)`` that renders `count` frames into ``out[start:]``."""
    from ctypes import c_int, c_void_p

    write_float = fluidsynth.cfunc(
        "fluid_synth_write_float", c_int,
        ("synth", c_void_p, 1), ("len", c_int, 1),
        ("lout", c_void_p, 1), ("loff", c_int, 1), ("lincr", c_int, 1),
        ("rout", c_void_p, 1), ("roff", c_int, 1), ("rincr", c_int, 1),
    )
    if write_float is None:
        raise AudioUnavailable("this FluidSynth library has no fluid_synth_write_float: install FluidSynth 2")
    pointer = out.ctypes.data

    def write(start: int, count: int) -> None:
        if count > 0:
            write_float(synth.synth, count, pointer, 2 * start, 2, pointer, 2 * start + 1, 2)

    return write


def to_pcm16(samples: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Float samples scaled so the largest magnitude lands on ``peak_dbfs``, rounded to int16
    (silence stays silence). Scales `samples` in place on the way."""
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > 0:
        samples *= np.float32(10 ** (peak_dbfs / 20) * 32767 / peak)
    return np.rint(samples, out=samples).astype(np.int16)


def render_midi(
    midi_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    soundfont: str | os.PathLike[str] | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    tail_seconds: float = DEFAULT_TAIL_SECONDS,
) -> RenderedAudio:
    """Render `midi_path` to `out_path` (16-bit WAV, or FLAC when it ends in .flac), atomically."""
    import soundfile

    fmt = output_format(out_path)
    if not 8_000 <= sample_rate <= 192_000:
        raise UserError(f"sample rate must be between 8000 and 192000 Hz, got {sample_rate}")
    if not 0 <= tail_seconds <= 60:
        raise UserError(f"tail must be between 0 and 60 seconds, got {tail_seconds}")
    sf2 = check_soundfont(soundfont) if soundfont is not None else default_soundfont()
    try:
        score = read_score(midi_path)
    except MidiReadError as exc:
        raise UserError(f"{midi_path}: {exc}") from None
    samples = to_pcm16(synthesize(score, sf2, sample_rate, tail_seconds))
    with atomic_path(out_path) as tmp:
        soundfile.write(tmp, samples, sample_rate, subtype="PCM_16", format=fmt)
    return RenderedAudio(Path(out_path), len(samples) / sample_rate, sample_rate, sf2)
