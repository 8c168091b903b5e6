"""Optional sampling constraints: mask performance events that cannot follow the sequence so far.

The MIDILike grammar the tokenizer writes: a NoteOn is followed by exactly one Velocity token; a
NoteOff ends a sounding pitch. `PerformanceGrammar` tracks, per batch row, which pitches sound and
whether a Velocity is due, and allows only:
- a Velocity token right after a NoteOn (and nothing else there);
- a NoteOn for a silent pitch, a NoteOff for a sounding one, any TimeShift, EOS otherwise;
- never PAD or BOS.
It plugs into `sampling.generate(allowed_tokens=...)` and only looks at tokens it has not seen yet,
so each step costs O(batch x vocabulary).
"""

from __future__ import annotations

import torch

from perceiver_ar_music.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, EventVocab


class PerformanceGrammar:
    """A stateful `allowed_tokens` callable for `generate` (one instance per generation run)."""

    def __init__(self, vocab: EventVocab, device: torch.device | str = "cpu") -> None:
        self.kind = torch.tensor(vocab.kind, device=device)
        self.pitch = torch.tensor(vocab.pitch, device=device)
        self.size = len(vocab)
        self.pitches = max(vocab.pitch) + 1
        free = (self.kind == TIME_SHIFT) | (self.kind == NOTE_ON) | (self.kind == NOTE_OFF)
        self.base_allowed = free.clone()
        self.base_allowed[vocab.eos_id] = True
        self.velocity_only = self.kind == VELOCITY
        self.note_on = self.kind == NOTE_ON
        self.note_off = self.kind == NOTE_OFF
        self.sounding: torch.Tensor | None = None  # (b, pitches) bool
        self.velocity_due: torch.Tensor | None = None  # (b,) bool
        self.seen = 0

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """Allowed next tokens (b, V) for sequences (b, L) that extend those seen before."""
        b = sequences.shape[0]
        if self.sounding is None:
            self.sounding = torch.zeros(b, self.pitches, dtype=torch.bool, device=sequences.device)
            self.velocity_due = torch.zeros(b, dtype=torch.bool, device=sequences.device)
        for t in range(self.seen, sequences.shape[1]):
            self._update(sequences[:, t])
        self.seen = sequences.shape[1]
        return self.allowed()

    def _update(self, token: torch.Tensor) -> None:
        kind = self.kind[token]
        pitch = self.pitch[token].clamp_min(0)
        rows = torch.arange(token.shape[0], device=token.device)
        is_on, is_off = kind == NOTE_ON, kind == NOTE_OFF
        current = self.sounding[rows, pitch]
        self.sounding[rows, pitch] = torch.where(is_on, True, torch.where(is_off, False, current))
        self.velocity_due = is_on

    def allowed(self) -> torch.Tensor:
        """The mask for the current state."""
        sounding_ids = self.sounding[:, self.pitch.clamp_min(0)] & (self.pitch >= 0)  # (b, V)
        normal = self.base_allowed & ~(self.note_on & sounding_ids) & ~(self.note_off & ~sounding_ids)
        return torch.where(self.velocity_due[:, None], self.velocity_only.expand_as(normal), normal)

