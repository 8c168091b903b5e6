"""Render a MIDI file to audio (FLAC, Ogg Vorbis or 16-bit WAV) with FluidSynth and a GM soundfont.

The file is played into pyfluidsynth message by message as a MIDI player would (mido merges the
tracks and times them through the tempo map): notes with their velocities on their own channels,
program changes, pitch bends and every control change, so the sustain pedal is FluidSynth's own
even when it sits in a track without notes; channel 10 plays drums.
FluidSynth writes float samples, so the result is peak-normalized (to ``PEAK_DBFS``) in the one
rounding to 16 bits. A tail after the last event lets the final notes ring out. The output's
suffix picks the format (``AUDIO_FORMATS``); ``DEFAULT_AUDIO_FORMAT`` is a compressed one that
Chromium and Firefox play (sizes and times per format: docs/benchmarks.md).

Without FluidSynth's shared library (or the pyfluidsynth binding) ``render_midi`` raises
``AudioUnavailable``: a one-line ``UserError`` that says how to install it.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perceiver_ar_music.runtime.atomic import atomic_path, check_writable_file
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.midi_load import MidiReadError, read_score

DEFAULT_SAMPLE_RATE = 44_100
DEFAULT_TAIL_SECONDS = 1.5
PEAK_DBFS = -1.0
SILENCE = 1e-5  # a float peak below this is FluidSynth's noise floor, not music
MAX_SECONDS = 4 * 3600  # 4 hours of float stereo at 44.1 kHz is 5 GB in memory
POLYPHONY = 512  # voices; a pedalled piano passage can exceed FluidSynth's default 256
# Format name (also the file suffix) -> soundfile (format, subtype).
AUDIO_FORMATS: dict[str, tuple[str, str]] = {
    "flac": ("FLAC", "PCM_16"),  # lossless, about half a WAV's size for piano
    "ogg": ("OGG", "VORBIS"),  # lossy, about a tenth of a WAV's size
    "wav": ("WAV", "PCM_16"),
}
DEFAULT_AUDIO_FORMAT = "ogg"
WRITE_BLOCK_FRAMES = 65_536
FULL_DISK_BYTES = 1 << 20  # a failed write with less free space than this was a full disk

# Standard places of a General MIDI soundfont, best piano first; the first that exists wins.
# FluidR3_GM (Debian fluid-soundfont-gm, which scripts/setup.sh installs) first: a sampled Yamaha
# grand (40 samples, 9 velocity ranges, 3.25 s at middle C) that loads in 0.2 s. MuseScore General
# (.sf3) has truer dynamics (soft notes darker) but takes ~11 s to load per render, so it is not
# chosen by default (--soundfont takes it); TimGM6mb (one 0.5 s looped sample per ~10 keys) last.
# The measurements: docs/benchmarks.md, "Soundfonts for the piano".
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)

PLAYED = {"note_on", "note_off", "control_change", "program_change", "pitchwheel"}


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
    """The audio format (a key of ``AUDIO_FORMATS``) an output path's suffix names."""
    name = Path(path).suffix.lower().lstrip(".")
    if name not in AUDIO_FORMATS:
        raise UserError(f"audio output must end in {', '.join('.' + f for f in AUDIO_FORMATS)}: {path}")
    return name


def read_events(path: str | os.PathLike[str]) -> list[tuple[float, object]]:
    """The channel messages of a MIDI file that FluidSynth plays, as (seconds, mido message) in
    playback order; a UserError (one line) for files that cannot be read or have no notes."""
    import mido

    try:
        read_score(path)  # symusic's checks give the clearest reasons for bad files
    except MidiReadError as exc:
        raise UserError(f"{path}: {exc}") from None
    events, now = [], 0.0
    try:
        for message in mido.MidiFile(path, clip=True):  # tracks merged, delta times in seconds
            now += message.time
            if message.type in PLAYED:
                events.append((now, message))
    except Exception as exc:  # mido's parser raises many types on files symusic tolerates
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"{path}: unreadable MIDI ({detail})") from None
    if not any(message.type == "note_on" and message.velocity > 0 for _, message in events):
        raise UserError(f"{path}: no notes to render")
    if events[-1][0] > MAX_SECONDS:
        raise UserError(f"{path}: too long to render ({events[-1][0]:.0f} s, the limit is {MAX_SECONDS} s)")
    return events


def synthesize(events: list[tuple[float, object]], soundfont: Path, sample_rate: int, tail_seconds: float) -> np.ndarray:
    """Stereo float32 samples, shape (frames, 2), of `events` (see ``read_events``) played by
    FluidSynth; the length is the last event's time plus ``tail_seconds``."""
    fluidsynth = load_fluidsynth()
    frames = round(events[-1][0] * sample_rate) + round(tail_seconds * sample_rate)
    out = np.zeros((frames, 2), dtype=np.float32)
    synth = fluidsynth.Synth(gain=0.2, samplerate=float(sample_rate), **{"synth.polyphony": POLYPHONY})
    try:
        write = _float_writer(fluidsynth, synth, out)
        if synth.sfload(str(soundfont), update_midi_preset=1) < 0:  # 1: every channel gets a preset
            raise UserError(f"FluidSynth could not load the soundfont: {soundfont}")
        position = 0
        for seconds, message in events:
            frame = min(round(seconds * sample_rate), frames)
            write(position, frame - position)
            position = frame
            _send(synth, message)
        write(position, frames - position)
    finally:
        synth.delete()
    return out


def render_notes(
    notes: list[tuple[int, int]], soundfont: Path, *, hold_seconds: float, tail_seconds: float,
    sample_rate: int = DEFAULT_SAMPLE_RATE, program: int = 0,
) -> list[np.ndarray]:
    """Each (pitch, velocity) note played alone by one FluidSynth: struck, held `hold_seconds`,
    released, and `tail_seconds` of its release; stereo float32 (frames, 2) each, at one gain
    (velocity layers keep their levels). The studio's page plays these (`studio.piano`)."""
    fluidsynth = load_fluidsynth()
    hold, tail = round(hold_seconds * sample_rate), round(tail_seconds * sample_rate)
    synth = fluidsynth.Synth(gain=0.2, samplerate=float(sample_rate))
    out = []
    try:
        if synth.sfload(str(soundfont), update_midi_preset=1) < 0:
            raise UserError(f"FluidSynth could not load the soundfont: {soundfont}")
        synth.program_change(0, program)
        for pitch, velocity in notes:
            samples = np.zeros((hold + tail, 2), dtype=np.float32)
            write = _float_writer(fluidsynth, synth, samples)
            synth.noteon(0, pitch, velocity)
            write(0, hold)
            synth.noteoff(0, pitch)
            write(hold, tail)
            synth.cc(0, 120, 0)  # all sound off: the next note starts in silence
            scratch = np.zeros((sample_rate // 10, 2), dtype=np.float32)
            _float_writer(fluidsynth, synth, scratch)(0, len(scratch))
            out.append(samples)
    finally:
        synth.delete()
    return out


def _send(synth, message) -> None:
    if message.type == "note_on":
        synth.noteon(message.channel, message.note, message.velocity)  # velocity 0 is a release
    elif message.type == "note_off":
        synth.noteoff(message.channel, message.note)
    elif message.type == "control_change":
        synth.cc(message.channel, message.control, message.value)
    elif message.type == "program_change":
        synth.program_change(message.channel, message.program)
    elif message.type == "pitchwheel":
        synth.pitch_bend(message.channel, message.pitch)


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


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int, audio_format: str) -> None:
    """Write (frames, channels) samples in `audio_format` (a key of ``AUDIO_FORMATS``), block by
    block: libsndfile 1.2's Vorbis encoder crashes on a few minutes of audio written in one call."""
    import soundfile

    container, subtype = AUDIO_FORMATS[audio_format]
    try:
        with soundfile.SoundFile(path, "w", sample_rate, samples.shape[1], subtype=subtype, format=container) as out:
            for start in range(0, len(samples), WRITE_BLOCK_FRAMES):
                out.write(samples[start : start + WRITE_BLOCK_FRAMES])
    except soundfile.LibsndfileError as exc:  # its "System error." hides the reason: find it
        raise _write_error(Path(path), exc) from None


def _write_error(path: Path, exc: Exception) -> OSError:
    """The OSError behind a failed libsndfile write: a full disk when the folder has (almost) no
    space left, else libsndfile's own message."""
    try:
        full = shutil.disk_usage(path.parent).free < FULL_DISK_BYTES
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"cannot write audio ({str(exc).strip()})", str(path))


def render_midi(
    midi_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    soundfont: str | os.PathLike[str] | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    tail_seconds: float = DEFAULT_TAIL_SECONDS,
) -> RenderedAudio:
    """Render `midi_path` to `out_path` atomically, in the format its suffix names (``output_format``)."""
    audio_format = output_format(out_path)
    if not 8_000 <= sample_rate <= 192_000:
        raise UserError(f"sample rate must be between 8000 and 192000 Hz, got {sample_rate}")
    if not 0 <= tail_seconds <= 60:
        raise UserError(f"tail must be between 0 and 60 seconds, got {tail_seconds}")
    sf2 = check_soundfont(soundfont) if soundfont is not None else default_soundfont()
    check_writable_file(out_path, "the audio output")
    samples = synthesize(read_events(midi_path), sf2, sample_rate, tail_seconds)
    if float(np.abs(samples).max()) < SILENCE:
        raise UserError(f"FluidSynth rendered silence: does {sf2} have the instruments the file uses?")
    samples = to_pcm16(samples)
    try:
        with atomic_path(out_path) as tmp:
            write_audio(tmp, samples, sample_rate, audio_format)
    except OSError as exc:  # name the file the user asked for, not its temporary twin
        raise OSError(exc.errno, exc.strerror, str(out_path)) from None
    return RenderedAudio(Path(out_path), len(samples) / sample_rate, sample_rate, sf2)
