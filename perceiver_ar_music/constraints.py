"""Rules applied while sampling: the performance grammar and the note guards.

`NoteRules` follows, per batch row, which pitches sound, since when (in grid steps of music time)
and whether a Velocity is due, and applies up to three rules, each optional:

- **grammar** (`--constrain`): a Velocity token right after a NoteOn and nothing else there; a
  NoteOn only for a silent pitch, a NoteOff only for a sounding one; any TimeShift; EOS; never PAD
  or BOS.
- **polyphony cap** (`max_polyphony` P): no NoteOn while P notes sound (a masked token).
- **maximum note duration** (`max_note_steps` D): when the drawn token is a TimeShift that would
  carry a sounding note past D grid steps, the NoteOff of the oldest sounding note is emitted
  instead (`amend`); the model then draws again with that note released, so the shift it wanted
  usually follows. No note sounds longer than D past the prompt (a primer note already older
  than D is released at the first TimeShift).

Rules only look at tokens they have not seen yet and keep their state on the tokens' device:
each step costs a few O(batch x vocabulary) tensor operations and never waits for the device.
The limits P and D come from the training data (`note_limits`, stored with each checkpoint).
"""

from __future__ import annotations

import torch

from perceiver_ar_music.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, EventVocab

_SILENT = torch.iinfo(torch.long).max // 2  # the onset of a silent pitch, for `amend`'s minimum


class NoteRules:
    """Stateful rules for `sampling.generate`: `allowed_tokens=rules, amend_tokens=rules.amend`
    (`allowed_tokens` may be left out when `masks` is False).

    One instance per generation run. Calling it with the sequences so far (b, L) (which extend the
    ones of the previous call) returns the (b, V) mask of tokens allowed next.
    """

    def __init__(
        self,
        vocab: EventVocab,
        device: torch.device | str = "cpu",
        *,
        grammar: bool = True,
        max_polyphony: int | None = None,
        max_note_steps: int | None = None,
    ) -> None:
        if max_polyphony is not None and max_polyphony < 1:
            raise ValueError("max_polyphony must be at least 1")
        if max_note_steps is not None and max_note_steps < 1:
            raise ValueError("max_note_steps must be at least 1")
        self.grammar, self.max_polyphony, self.max_note_steps = grammar, max_polyphony, max_note_steps
        self.kind = torch.tensor(vocab.kind, device=device)
        self.pitch = torch.tensor(vocab.pitch, device=device).clamp_min(0)
        self.shift = torch.tensor(vocab.shift_steps, device=device)
        self.pitches = max(vocab.pitch) + 1
        self.note_off_of = torch.zeros(self.pitches, dtype=torch.long, device=device)
        for pitch, idx in vocab.note_off_id.items():
            self.note_off_of[pitch] = idx
        self.note_on = self.kind == NOTE_ON
        self.note_off = self.kind == NOTE_OFF
        self.velocity_only = self.kind == VELOCITY
        self.base_allowed = (self.kind == TIME_SHIFT) | self.note_on | self.note_off
        self.base_allowed[vocab.eos_id] = True
        self.onset: torch.Tensor | None = None  # (b, pitches) grid step of each sounding note, -1: silent
        self.clock: torch.Tensor | None = None  # (b,) grid steps of music so far
        self.velocity_due: torch.Tensor | None = None  # (b,) the last token was a NoteOn
        self.seen = 0

    @property
    def masks(self) -> bool:
        """Whether `__call__` can mask anything (else callers may skip it)."""
        return self.grammar or self.max_polyphony is not None

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """Allowed next tokens (b, V) for sequences (b, L) that extend those seen before."""
        self.observe(sequences)
        return self.allowed()

    def observe(self, sequences: torch.Tensor) -> None:
        """Update the state with the tokens of `sequences` (b, L) not seen yet."""
        if self.onset is None:
            b, device = sequences.shape[0], sequences.device
            self.onset = torch.full((b, self.pitches), -1, dtype=torch.long, device=device)
            self.clock = torch.zeros(b, dtype=torch.long, device=device)
            self.velocity_due = torch.zeros(b, dtype=torch.bool, device=device)
            self.rows = torch.arange(b, device=device)
        for t in range(self.seen, sequences.shape[1]):
            self._update(sequences[:, t])
        self.seen = sequences.shape[1]

    def _update(self, token: torch.Tensor) -> None:
        kind, pitch = self.kind[token], self.pitch[token]
        is_on = kind == NOTE_ON
        current = self.onset[self.rows, pitch]
        self.onset[self.rows, pitch] = torch.where(is_on, self.clock, torch.where(kind == NOTE_OFF, -1, current))
        self.clock += self.shift[token]
        self.velocity_due = is_on

    def allowed(self) -> torch.Tensor:
        """The mask for the current state."""
        allowed = self.base_allowed.expand(self.onset.shape[0], -1)
        if self.grammar:
            sounding_ids = self.onset[:, self.pitch] >= 0  # (b, V): the pitch of a note id sounds
            allowed = allowed & ~(self.note_on & sounding_ids) & ~(self.note_off & ~sounding_ids)
        if self.max_polyphony is not None:
            full = (self.onset >= 0).sum(dim=1, keepdim=True) >= self.max_polyphony
            allowed = allowed & ~(self.note_on & full)
        if self.grammar:
            allowed = torch.where(self.velocity_due[:, None], self.velocity_only, allowed)
        return allowed

    def amend(self, new: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """The drawn tokens (b,) that follow `sequences` (b, L), with a TimeShift that would carry
        a note past the maximum duration replaced by the NoteOff of the oldest sounding note."""
        if self.max_note_steps is None:
            return new
        self.observe(sequences)
        oldest, pitch = torch.where(self.onset >= 0, self.onset, _SILENT).min(dim=1)
        too_long = self.clock + self.shift[new] - oldest > self.max_note_steps
        return torch.where(too_long, self.note_off_of[pitch], new)


class PerformanceGrammar(NoteRules):
    """The grammar alone (`--constrain` without guards), as an `allowed_tokens` callable."""

    def __init__(self, vocab: EventVocab, device: torch.device | str = "cpu") -> None:
        super().__init__(vocab, device, grammar=True)
