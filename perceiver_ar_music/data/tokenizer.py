"""MIDI performances <-> performance-event ids (NoteOn / NoteOff / Velocity / TimeShift).

miditok owns the format: a preset is miditok's own JSON (``tokenization/<name>.json``, a MIDILike
config; ``preset_dir`` finds the folder) and miditok builds the vocabulary from it. Wall-clock
time is kept by re-timing every performance onto a constant-tempo grid (120 qpm,
``steps_per_beat`` steps per beat: 10 ms for the ``performance`` preset), so a TimeShift is a
fixed number of milliseconds.

The encoder (``events.encode_grid_notes``, shared with ``events.notes_to_ids``) is a vectorized
numpy re-implementation that produces the same ids as miditok's MIDILike on the same normalized
score (``reference_score`` + ``miditok`` give the slow reference; the tests compare them). The
decoder is ``events.ids_to_note_steps`` (one rule for every command) and accepts any id sequence.

Normalization before encoding (all in ``quantize_notes``):
- onsets and offsets are rounded to the grid; time starts at 0 s of the file, so leading
  silence is kept as time shifts, and a gap longer than the longest shift is several shifts;
- same-pitch notes never overlap: a note ends at the next onset of its pitch (the re-strike
  convention), and of several same-pitch notes starting on the same grid step only the
  longest is kept (the others are counted in ``overlaps_dropped``);
- every note lasts at least one grid step.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np

from perceiver_ar_music.data import events
from perceiver_ar_music.runtime.atomic import atomic_path, write_bytes_atomic
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.data.midi_load import MidiReadError, PerformanceNotes, performance_notes, read_score
from perceiver_ar_music.data.vocab import EventVocab

__all__ = [
    "DEFAULT_PRESET",
    "EncodedPiece",
    "GridNotes",
    "MidiReadError",
    "PerformanceTokenizer",
    "available_presets",
    "load_tokenizer",
    "preset_dir",
    "roundtrip_fidelity",
]

PRESET_DIR = Path(__file__).resolve().parents[2] / "tokenization"  # in a source checkout
DEFAULT_PRESET = "performance"
SECONDS_PER_BEAT = 0.5  # the constant 120 qpm grid that carries wall-clock time
VERSION_KEYS = ("miditok_version", "symusic_version", "hf_tokenizers_version")
# miditok options that this event stream does not carry; a preset must leave them off.
UNSUPPORTED_OPTIONS = (
    "use_programs",
    "use_tempos",
    "use_time_signatures",
    "use_key_signatures",
    "use_sustain_pedals",
    "use_pitch_bends",
    "use_control_changes",
    "use_chords",
    "use_rests",
    "use_pitch_intervals",
    "use_pitchdrum_tokens",
    "remove_duplicated_notes",
)


@dataclass(frozen=True)
class EncodedPiece:
    """One encoded performance: ids without BOS/EOS, and what the encoding kept or dropped."""

    ids: np.ndarray  # uint16
    num_notes: int
    seconds: float
    overlaps_dropped: int


@dataclass(frozen=True)
class GridNotes:
    """Normalized notes on the time grid, in encoding order (onset, then pitch)."""

    start: np.ndarray  # int64 grid steps
    end: np.ndarray  # int64 grid steps, > start, <= next onset of the same pitch
    pitch: np.ndarray  # int64
    velocity: np.ndarray  # int64, raw MIDI velocity (binned by the encoder)
    overlaps_dropped: int

    def __len__(self) -> int:
        return len(self.start)


def preset_dir() -> Path:
    """The folder of the presets: the checkout's top-level ``tokenization/`` (a source tree or an
    editable install), else the copy that a wheel installs as ``perceiver_ar_music/tokenization``."""
    if PRESET_DIR.is_dir() and (PRESET_DIR.parent / "pyproject.toml").is_file():
        return PRESET_DIR
    return Path(str(resources.files("perceiver_ar_music").joinpath("tokenization")))


def available_presets() -> list[str]:
    """Names of the presets shipped under ``tokenization/``."""
    return sorted(path.stem for path in preset_dir().glob("*.json"))


def _preset_path(preset: str | os.PathLike[str]) -> Path:
    path = Path(preset)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise UserError(f"tokenizer config not found: {path}")
        return path
    candidate = preset_dir() / f"{preset}.json"
    if not candidate.is_file():
        names = ", ".join(available_presets()) or "none"
        raise UserError(f"unknown tokenizer preset '{preset}' (available: {names})")
    return candidate


def load_tokenizer(preset: str | os.PathLike[str] = DEFAULT_PRESET) -> "PerformanceTokenizer":
    """Load a preset by name (``tokenization/<name>.json``) or from a miditok JSON file path."""
    path = _preset_path(preset)
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read tokenizer config {path}: {exc}") from None
    if not isinstance(saved, dict) or saved.get("tokenization") != "MIDILike":
        raise UserError(f"{path}: only miditok MIDILike configs are supported")
    if "_model" in saved:
        raise UserError(f"{path}: trained (BPE/Unigram) tokenizers are not supported")
    from miditok import MIDILike

    try:
        tokenizer = MIDILike(params=path)
    except Exception as exc:  # miditok raises assorted errors on malformed configs
        raise UserError(f"{path}: invalid miditok config ({exc})") from None
    return PerformanceTokenizer(tokenizer)


def _check_supported(config) -> None:
    enabled = [name for name in UNSUPPORTED_OPTIONS if getattr(config, name, False)]
    if enabled:
        raise UserError(f"tokenizer config enables unsupported options: {', '.join(enabled)}")
    if not config.use_velocities:
        raise UserError("tokenizer config must use velocities")
    if len(config.beat_res) != 1 or next(iter(config.beat_res))[0] != 0:
        raise UserError("tokenizer config needs one beat_res range starting at beat 0")
    missing = {"PAD", "BOS", "EOS"} - {token.split("_")[0] for token in config.special_tokens}
    if missing:
        raise UserError(f"tokenizer config lacks special tokens: {', '.join(sorted(missing))}")


def quantize_notes(notes: PerformanceNotes, seconds_per_step: float, pitch_ok: np.ndarray) -> GridNotes:
    """Round notes onto the grid and resolve same-pitch overlaps (see the module docstring)."""
    inside = pitch_ok[notes.pitch]
    start = np.rint(notes.start[inside] / seconds_per_step).astype(np.int64)
    end = np.rint(notes.end[inside] / seconds_per_step).astype(np.int64)
    pitch, velocity = notes.pitch[inside], notes.velocity[inside]

    by_pitch = np.lexsort((end, start, pitch))
    start, end, pitch, velocity = start[by_pitch], end[by_pitch], pitch[by_pitch], velocity[by_pitch]
    same_pitch_next = pitch[1:] == pitch[:-1]
    superseded = np.append(same_pitch_next & (start[1:] == start[:-1]), False)
    keep = ~superseded
    start, end, pitch, velocity = start[keep], end[keep], pitch[keep], velocity[keep]

    end = np.maximum(end, start + 1)
    same_pitch_next = np.append(pitch[1:] == pitch[:-1], False)
    next_start = np.append(start[1:], 0)
    end = np.where(same_pitch_next, np.minimum(end, next_start), end)

    by_onset = np.lexsort((pitch, start))
    return GridNotes(
        start=start[by_onset],
        end=end[by_onset],
        pitch=pitch[by_onset],
        velocity=velocity[by_onset],
        overlaps_dropped=int(superseded.sum()),
    )


class PerformanceTokenizer:
    """A miditok MIDILike performance vocabulary with a fast encoder and a total decoder."""

    def __init__(self, miditok_tokenizer) -> None:
        _check_supported(miditok_tokenizer.config)
        self.miditok = miditok_tokenizer
        self.vocab = EventVocab.from_token_map(miditok_tokenizer.vocab, seconds_per_beat=SECONDS_PER_BEAT)
        self._table = events.tables(self.vocab)
        self._pitch_ok = self._table.note_on >= 0
        self.hash = hashlib.sha256(_canonical_json(self._format_dict()).encode()).hexdigest()

    # ----- the format as data -----
    def config_dict(self) -> dict:
        """The tokenizer as miditok saves it (``tokenizer.save`` JSON content)."""
        return json.loads(json.dumps(self.miditok.to_dict()))

    def _format_dict(self) -> dict:
        """``config_dict`` without library versions: what the hash identifies."""
        return {key: value for key, value in self.config_dict().items() if key not in VERSION_KEYS}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write miditok's JSON for this tokenizer atomically; ``load_tokenizer(path)`` reads it."""
        with atomic_path(path) as tmp:
            self.miditok.save(tmp)

    # ----- encoding -----
    def encode_file(self, path: str | os.PathLike[str]) -> EncodedPiece:
        """Encode a MIDI file; raises MidiReadError (short reason) for unusable files."""
        return self.encode_score(read_score(path))

    def encode_score(self, score) -> EncodedPiece:
        """Encode a symusic Score (any time unit) already in memory."""
        return self.encode_notes(performance_notes(score))

    def encode_notes(self, notes: PerformanceNotes) -> EncodedPiece:
        """Encode a pedal-folded piano stream in seconds."""
        grid = self.quantize(notes)
        if len(grid) == 0:
            raise MidiReadError("no notes in the tokenizer's pitch range")
        ids = self.encode_grid(grid)
        seconds = float(grid.end.max()) * self.vocab.seconds_per_step
        return EncodedPiece(
            ids=ids.astype(np.uint16),
            num_notes=len(grid),
            seconds=seconds,
            overlaps_dropped=grid.overlaps_dropped,
        )

    def quantize(self, notes: PerformanceNotes) -> GridNotes:
        """Normalize notes onto this tokenizer's time grid."""
        return quantize_notes(notes, self.vocab.seconds_per_step, self._pitch_ok)

    def encode_grid(self, grid: GridNotes) -> np.ndarray:
        """Ids of normalized grid notes (int64), identical to miditok MIDILike's encoding."""
        return events.encode_grid_notes(grid.start, grid.end, grid.pitch, grid.velocity, self._table)

    def reference_score(self, grid: GridNotes):
        """The normalized notes as a symusic Score on the grid (tpq = steps per beat), which
        miditok's own ``encode`` turns into the same ids as ``encode_grid`` (test reference)."""
        from symusic import Note, Score, Track

        score = Score(self.vocab.steps_per_beat)
        track = Track(name="Piano", program=0, is_drum=False)
        track.notes = Note.from_numpy(
            time=grid.start.astype(np.int32),
            duration=(grid.end - grid.start).astype(np.int32),
            pitch=grid.pitch.astype(np.int8),
            velocity=grid.velocity.astype(np.int8),
        )
        score.tracks.append(track)
        return score

    # ----- decoding -----
    def decode_notes(self, ids: Iterable[int] | np.ndarray) -> list[tuple[int, int, int, int]]:
        """Notes ``(start_step, end_step, pitch, velocity)`` of ANY id sequence, sorted.

        The one note decoder, ``events.ids_to_note_steps`` (its module docstring has the rule: a
        re-struck pitch ends the sounding note, a NoteOff of a silent pitch is ignored), with
        every note lengthened to at least one step, as it is written to MIDI (a zero-length note
        would vanish).
        """
        notes = events.ids_to_note_steps(np.asarray(ids, dtype=np.int64).reshape(-1), self.vocab)
        start, pitch, velocity = notes[:, events.START], notes[:, events.PITCH], notes[:, events.VELOCITY_COLUMN]
        end = np.maximum(notes[:, events.END], start + 1)
        return sorted(zip(start.tolist(), end.tolist(), pitch.tolist(), velocity.tolist()))

    def decode(self, ids: Iterable[int] | np.ndarray):
        """A symusic Score (tpq = steps per beat, 120 qpm, one piano track) of ANY id sequence."""
        from symusic import Note, Score, Tempo, TimeSignature, Track

        notes = np.array(self.decode_notes(ids), dtype=np.int64).reshape(-1, 4)
        score = Score(self.vocab.steps_per_beat)
        score.tempos.append(Tempo(0, qpm=60.0 / SECONDS_PER_BEAT))
        score.time_signatures.append(TimeSignature(0, 4, 4))
        track = Track(name="Piano", program=0, is_drum=False)
        track.notes = Note.from_numpy(
            time=notes[:, 0].astype(np.int32),
            duration=(notes[:, 1] - notes[:, 0]).astype(np.int32),
            pitch=notes[:, 2].astype(np.int8),
            velocity=notes[:, 3].astype(np.int8),
        )
        score.tracks.append(track)
        return score

    def decode_to_midi(self, ids: Iterable[int] | np.ndarray, path: str | os.PathLike[str]) -> None:
        """Decode ANY id sequence and write it as a MIDI file, atomically."""
        write_bytes_atomic(path, self.decode(ids).dumps_midi())


def roundtrip_fidelity(
    original: PerformanceNotes, decoded: list[tuple[int, int, int, int]], seconds_per_step: float
) -> dict:
    """How faithfully decoded grid notes reproduce the original notes: for every original note,
    the decoded note of the same pitch with the nearest onset gives its onset and velocity error;
    ``notes_lost`` counts original notes without a decoded counterpart."""
    table = np.array(decoded, dtype=np.int64).reshape(-1, 4)
    onset_error = velocity_error = 0.0
    for pitch in np.unique(original.pitch):
        mine = table[table[:, 2] == pitch]
        if not len(mine):
            continue
        mine = mine[np.argsort(mine[:, 0], kind="stable")]
        onsets = mine[:, 0] * seconds_per_step
        wanted = original.start[original.pitch == pitch]
        right = np.minimum(np.searchsorted(onsets, wanted), len(onsets) - 1)
        left = np.maximum(right - 1, 0)
        nearest = np.where(np.abs(onsets[left] - wanted) <= np.abs(onsets[right] - wanted), left, right)
        onset_error = max(onset_error, float(np.abs(onsets[nearest] - wanted).max()))
        velocity_error = max(velocity_error, float(np.abs(mine[nearest, 3] - original.velocity[original.pitch == pitch]).max()))
    return {
        "max_onset_error_ms": round(onset_error * 1000.0, 3),
        "max_velocity_error": int(velocity_error),
        "notes_lost": int(len(original) - len(table)),
    }


def _canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
