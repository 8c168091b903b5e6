"""Rules applied while sampling: the performance grammar and the note guards.

`NoteRules` follows, per batch row, which pitches sound, since when (in grid steps of music time)
and whether a Velocity is due, and applies up to three rules, each optional:

- **grammar** (`--constrain`): a Velocity token right after a NoteOn and nothing else there; a
  NoteOn only for a silent pitch, a NoteOff only for a sounding one; any TimeShift; EOS; never PAD
  or BOS.
- **polyphony cap** (`max_polyphony` P): no NoteOn while P notes sound (a masked token).
- **per-row voice limits** (`limit_rows`, set while sampling by texture steering): a lower
  polyphony cap for some rows, and a minimum note length (no NoteOff of a note younger than
  M grid steps), so that a sample can be held to fewer or more voices than it would write; and
  for rows whose velocity is steered, a Velocity right after each NoteOn (a NoteOn without one
  plays the last velocity again, so a model could keep a level by skipping the tokens steered).
- **maximum note duration** (`max_note_steps` D): when the drawn token is a TimeShift that would
  carry a sounding note past D grid steps, the NoteOff of the oldest sounding note is emitted
  in its place (`amend`) and the shift is kept back; once no note is too old any more, the kept
  shift is emitted, whatever the model draws meanwhile. So the guard releases notes without
  taking time out of the music (a model that draws again after the NoteOff almost never draws a
  shift: the music would run faster). No note sounds longer than D past the prompt (a primer
  note already older than D is released at the first TimeShift).

Rules only look at tokens they have not seen yet and keep their state on the tokens' device:
each step costs a few O(batch x vocabulary) tensor operations and never waits for the device;
the prompt is read in one pass of tensor operations (no Python loop over its tokens).
The limits P and D come from the training data (`note_limits`, stored with each checkpoint).
"""

from __future__ import annotations

import torch

from perceiver_ar_music.data.vocab import NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, EventVocab

SILENT = torch.iinfo(torch.long).max // 4  # the onset of a silent pitch (above any clock)
NOTHING = -1  # no shift kept back (see `NoteRules.amend`)


class NoteRules:
    """Stateful rules for `sampling.sample_ids`: `allowed_tokens=rules, amend_tokens=rules.amend`
    (`allowed_tokens` may be left out when `masks` is False).

    One instance per generation run. Calling it with the sequences so far (b, L) (which extend the
    ones of the previous call) returns the (b, V) mask of tokens allowed next.

    State: `onset` (b, pitches + 1), the grid step at which each pitch started sounding, SILENT
    for a silent pitch; the last column takes the writes of ids that are not notes (always SILENT),
    so that one update serves every token without a branch. `clock` (b,): grid steps of music.
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
        kind = torch.tensor(vocab.kind, device=device)
        self.pitches = max(vocab.pitch) + 1
        pitch = torch.tensor(vocab.pitch, device=device)
        column = torch.where(pitch >= 0, pitch, self.pitches)  # non-note ids write the spare column
        self.note_on = kind == NOTE_ON
        self.column_of_id = column
        self.shift = torch.tensor(vocab.shift_steps, device=device)
        # per id: the most grid steps a note may already have sounded before this id is emitted
        self.age_limit = (max_note_steps or 0) - self.shift
        self.note_off_of = torch.zeros(self.pitches + 1, dtype=torch.long, device=device)  # (+ the spare)
        for p, idx in vocab.note_off_id.items():
            self.note_off_of[p] = idx
        self.note_off = kind == NOTE_OFF
        self.velocity_only = kind == VELOCITY
        self.base_allowed = (kind == TIME_SHIFT) | self.note_on | self.note_off
        self.base_allowed[vocab.eos_id] = True
        self.anything = torch.ones_like(self.note_on)  # without the grammar, only the cap masks
        self.not_note_on = ~self.note_on
        self.onset: torch.Tensor | None = None
        self.clock: torch.Tensor | None = None
        self.velocity_due: torch.Tensor | None = None  # (b,) the last token was a NoteOn
        self.kept: torch.Tensor | None = None  # (b,) the shift held back by `amend`, else NOTHING
        self.row_polyphony: torch.Tensor | None = None  # (b,) per-row caps (`limit_rows`)
        self.row_min_steps: torch.Tensor | None = None  # (b,) per-row minimum note lengths
        self.row_velocity: torch.Tensor | None = None  # (b,) rows that must follow a NoteOn with a Velocity
        self.row_limits = False  # whether `limit_rows` may be called (the sampler asks `masks` once)
        self.seen = 0

    @property
    def masks(self) -> bool:
        """Whether `__call__` can mask anything (else callers may skip it)."""
        return self.grammar or self.max_polyphony is not None or self.row_limits

    def limit_rows(self, max_polyphony: torch.Tensor | None, min_note_steps: torch.Tensor | None,
                   velocity_after_on: torch.Tensor | None = None) -> None:
        """Per-row limits from now on: a polyphony cap (b,) (below the global one, if any), a
        minimum note length in grid steps (b,) (0: none), and the rows (b,) bool whose NoteOns
        must be followed by a Velocity; None leaves a limit off. Needs `row_limits` set before
        sampling starts."""
        if not self.row_limits:
            raise RuntimeError("limit_rows needs NoteRules.row_limits = True before sampling")
        self.row_polyphony = max_polyphony
        self.row_min_steps = min_note_steps
        self.row_velocity = velocity_after_on

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """Allowed next tokens (b, V) for sequences (b, L) that extend those seen before."""
        self.observe(sequences)
        return self.allowed()

    def observe(self, sequences: torch.Tensor) -> None:
        """Update the state with the tokens of `sequences` (b, L) not seen yet."""
        if self.onset is None:
            b, device = sequences.shape[0], sequences.device
            self.onset = torch.full((b, self.pitches + 1), SILENT, dtype=torch.long, device=device)
            self.clock = torch.zeros(b, dtype=torch.long, device=device)
            self.velocity_due = torch.zeros(b, dtype=torch.bool, device=device)
            self.kept = torch.full((b,), NOTHING, dtype=torch.long, device=device)
            self.row_start = torch.arange(b, device=device) * (self.pitches + 1)  # in onset.view(-1)
        unseen = sequences.shape[1] - self.seen
        if unseen == 1:  # a sampling step
            self._update(sequences[:, -1])
        elif unseen > 1:  # the prompt: at once, however long, so a long primer costs little
            self._update_many(sequences[:, self.seen:])
        self.seen = sequences.shape[1]

    def _update_many(self, tokens: torch.Tensor) -> None:
        """The state after `tokens` (b, n) in a few tensor operations: the same as calling
        `_update` on each column in turn (each pitch keeps the value of its last write)."""
        b, n = tokens.shape
        shifts = self.shift[tokens]
        clock_before = self.clock[:, None] + torch.cumsum(shifts, dim=1) - shifts  # the clock at each token
        value = torch.where(self.note_on[tokens], clock_before, SILENT)
        columns = self.column_of_id[tokens]
        position = torch.arange(n, device=tokens.device).expand(b, n)
        last = torch.full_like(self.onset, -1).scatter_reduce_(1, columns, position, "amax")
        self.onset = torch.where(last >= 0, value.gather(1, last.clamp(min=0)), self.onset)
        self.clock = self.clock + shifts.sum(dim=1)
        self.velocity_due = self.note_on[tokens[:, -1]]

    def _update(self, token: torch.Tensor) -> None:
        self.velocity_due = self.note_on[token]
        # a NoteOn (also of a sounding pitch: the decoder cuts the old note) starts now; a NoteOff
        # silences its pitch; any other id writes the spare column
        value = torch.where(self.velocity_due, self.clock, SILENT)
        index = self.column_of_id[token] if len(token) == 1 else self.row_start + self.column_of_id[token]
        self.onset.view(-1).scatter_(0, index, value)
        self.clock += self.shift[token]

    def allowed(self) -> torch.Tensor:
        """The mask for the current state."""
        allowed = self.base_allowed if self.grammar else self.anything
        if self.grammar:
            sounding_ids = self.onset[:, self.column_of_id] < SILENT  # (b, V): a note id's pitch sounds
            allowed = allowed & torch.where(self.note_on, ~sounding_ids, torch.where(self.note_off, sounding_ids, True))
        if self.max_polyphony is not None or self.row_polyphony is not None:  # the caps: one count, one mask
            sounding = (self.onset < SILENT).sum(dim=1, keepdim=True)  # (the spare column is always SILENT)
            cap = self.max_polyphony if self.max_polyphony is not None else self.row_polyphony[:, None]
            if self.max_polyphony is not None and self.row_polyphony is not None:
                cap = torch.clamp(self.row_polyphony[:, None], max=self.max_polyphony)
            allowed = torch.where(sounding >= cap, allowed & self.not_note_on, allowed)
        if self.row_min_steps is not None:  # a sounding note's NoteOff only once it is M steps old
            onset = self.onset[:, self.column_of_id]
            young = (onset < SILENT) & (self.clock[:, None] - onset < self.row_min_steps[:, None])
            allowed = allowed & ~(self.note_off & young)
        if self.grammar:
            allowed = torch.where(self.velocity_due[:, None], self.velocity_only, allowed)
        elif self.row_velocity is not None:
            allowed = torch.where((self.velocity_due & self.row_velocity)[:, None], self.velocity_only, allowed)
        return allowed.expand(self.onset.shape[0], -1)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i] (see `sampling.sample_ids(selector=...)`)."""
        if self.onset is not None:
            self.onset = self.onset[rows]
            self.clock, self.velocity_due, self.kept = self.clock[rows], self.velocity_due[rows], self.kept[rows]
        if self.row_polyphony is not None:
            self.row_polyphony = self.row_polyphony[rows]
        if self.row_min_steps is not None:
            self.row_min_steps = self.row_min_steps[rows]
        if self.row_velocity is not None:
            self.row_velocity = self.row_velocity[rows]

    def amend(self, new: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """The tokens (b,) to emit after `sequences` (b, L) given the drawn ones `new`: a shift
        kept back by an earlier call replaces the draw; a TimeShift that would carry a note past
        the maximum duration becomes the NoteOff of the oldest sounding note, and is kept back
        until every note it would carry too far is released."""
        if self.max_note_steps is None:
            return new
        self.observe(sequences)
        wanted = torch.where(self.kept != NOTHING, self.kept, new)
        oldest, pitch = self.onset.min(dim=1)  # all silent: the spare column, never too long
        too_long = (self.shift[wanted] > 0) & (self.clock - oldest > self.age_limit[wanted])
        self.kept = torch.where(too_long, wanted, NOTHING)
        return torch.where(too_long, self.note_off_of[pitch], wanted)


class PerformanceGrammar(NoteRules):
    """The grammar alone (`--constrain` without guards), as an `allowed_tokens` callable."""

    def __init__(self, vocab: EventVocab, device: torch.device | str = "cpu") -> None:
        super().__init__(vocab, device, grammar=True)
