"""The performance-event vocabulary as plain data, readable without the MIDI stack.

A tokenizer's id -> token-name map (miditok's naming: ``NoteOn_60``, ``NoteOff_60``,
``Velocity_63``, ``TimeShift_0.7.50``, ``PAD_None``, ...) is parsed once into per-id tables
(kind, pitch, velocity, time-shift steps). The dataset's augmentation, the sampler's optional
constraints and the statistics all read these tables instead of re-parsing strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

KINDS = ("special", "note_on", "note_off", "velocity", "time_shift")
SPECIAL, NOTE_ON, NOTE_OFF, VELOCITY, TIME_SHIFT = range(len(KINDS))


def _time_shift_steps(value: str) -> tuple[int, int]:
    """Parse miditok's ``beat.pos.res`` duration into (steps, steps_per_beat)."""
    beat, pos, res = (int(part) for part in value.split("."))
    return beat * res + pos, res


@dataclass(frozen=True)
class EventVocab:
    """Per-id tables of a performance vocabulary (NoteOn/NoteOff/Velocity/TimeShift + specials)."""

    tokens: tuple[str, ...]
    kind: tuple[int, ...]
    pitch: tuple[int, ...]  # pitch for note_on / note_off ids, else -1
    velocity: tuple[int, ...]  # MIDI velocity for velocity ids, else -1
    shift_steps: tuple[int, ...]  # grid steps for time_shift ids, else 0
    steps_per_beat: int
    seconds_per_beat: float
    note_on_id: Mapping[int, int] = field(repr=False)  # pitch -> id
    note_off_id: Mapping[int, int] = field(repr=False)
    shift_id: Mapping[int, int] = field(repr=False)  # steps -> id
    special_id: Mapping[str, int] = field(repr=False)  # "PAD" / "BOS" / "EOS" -> id

    @classmethod
    def from_token_map(cls, token_to_id: Mapping[str, int], seconds_per_beat: float = 0.5) -> "EventVocab":
        """Build the tables from a ``{token_name: id}`` map (miditok's ``tokenizer.vocab``)."""
        size = max(token_to_id.values()) + 1
        if sorted(token_to_id.values()) != list(range(size)):
            raise ValueError("token ids must be the contiguous range 0..V-1")
        tokens = [""] * size
        kind = [SPECIAL] * size
        pitch = [-1] * size
        velocity = [-1] * size
        shift = [0] * size
        note_on: dict[int, int] = {}
        note_off: dict[int, int] = {}
        shift_id: dict[int, int] = {}
        special: dict[str, int] = {}
        steps_per_beat = 0
        for name, idx in token_to_id.items():
            tokens[idx] = name
            head, _, value = name.partition("_")
            if head == "NoteOn":
                kind[idx], pitch[idx] = NOTE_ON, int(value)
                note_on[int(value)] = idx
            elif head == "NoteOff":
                kind[idx], pitch[idx] = NOTE_OFF, int(value)
                note_off[int(value)] = idx
            elif head == "Velocity":
                kind[idx], velocity[idx] = VELOCITY, int(value)
            elif head == "TimeShift":
                steps, steps_per_beat = _time_shift_steps(value)
                kind[idx], shift[idx] = TIME_SHIFT, steps
                shift_id[steps] = idx
            else:
                special[head] = idx
        return cls(
            tokens=tuple(tokens),
            kind=tuple(kind),
            pitch=tuple(pitch),
            velocity=tuple(velocity),
            shift_steps=tuple(shift),
            steps_per_beat=steps_per_beat,
            seconds_per_beat=seconds_per_beat,
            note_on_id=note_on,
            note_off_id=note_off,
            shift_id=shift_id,
            special_id=special,
        )

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def seconds_per_step(self) -> float:
        """Wall-clock length of one time-shift grid step (10 ms for the performance preset)."""
        return self.seconds_per_beat / self.steps_per_beat if self.steps_per_beat else 0.0

    @property
    def max_shift_steps(self) -> int:
        """Longest single time shift, in grid steps (100 = 1 s for the performance preset)."""
        return max(self.shift_id) if self.shift_id else 0

    @property
    def time_shift_ids(self) -> tuple[int, ...]:
        """The ids of every TimeShift token (the clock), in id order."""
        return tuple(i for i, kind in enumerate(self.kind) if kind == TIME_SHIFT)

    @property
    def pad_id(self) -> int:
        return self.special_id["PAD"]

    @property
    def bos_id(self) -> int:
        return self.special_id["BOS"]

    @property
    def eos_id(self) -> int:
        return self.special_id["EOS"]

    def seconds(self, ids: "list[int] | tuple[int, ...]") -> float:
        """Wall-clock duration that a sequence of ids spans (the sum of its time shifts)."""
        shift = self.shift_steps
        return sum(shift[i] for i in ids if 0 <= i < len(shift)) * self.seconds_per_step
