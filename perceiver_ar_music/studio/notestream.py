"""Notes of a growing token sequence as they become known: playback while the decoder runs.

`NoteStream.feed(ids)` takes the next final tokens of one sequence and returns note events for
the page: a struck note once its Velocity token is there (``{"id", "pitch", "start", "velocity",
"end"}``, ``end`` null while it sounds) and, for a note sent sounding, its end once known
(``{"id", "end"}``). Times are seconds from the stream's start. The notes are those of THE note
decoder (`events.note_steps_and_open`), run again over the tokens since the oldest note still
sounding (so a long take is never decoded from its start again); zero-length notes are left out
(they make no sound, as in `continuation.sample_notes`): a note is sent once time has moved past
its start or it has ended, so one released at the instant it is struck is never played.
"""

from __future__ import annotations

import numpy as np

from perceiver_ar_music.data.events import END, PITCH, START, VELOCITY_COLUMN, clock_steps, note_steps_and_open, tables
from perceiver_ar_music.data.vocab import NOTE_ON, EventVocab


class NoteStream:
    """Note events of one sequence fed token by token (or in pieces)."""

    def __init__(self, vocab: EventVocab) -> None:
        self.vocab = vocab
        self.kind = tables(vocab).kind
        self.ids: list[int] = []  # the tokens since `base_steps` (from the oldest sounding note on)
        self.base_steps = 0  # grid steps before self.ids
        self.base_note = 0  # the id of the first note decoded from self.ids
        self.sent = 0  # notes sent so far (ids 0..sent-1)
        self.sounding: set[int] = set()  # notes sent without their end
        self.skipped: set[int] = set()  # zero-length notes, never sent
        self.tokens = 0  # tokens fed in all

    @property
    def seconds(self) -> float:
        """Seconds of music fed so far."""
        steps = int(clock_steps(self.ids, self.vocab)[-1]) if self.ids else 0
        return (self.base_steps + steps) * self.vocab.seconds_per_step

    def feed(self, ids: "list[int] | np.ndarray") -> list[dict]:
        """The events that the tokens `ids` (appended to those fed before) make known."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if not ids:
            return []
        self.ids.extend(ids)
        self.tokens += len(ids)
        steps, open_ = note_steps_and_open(self.ids, self.vocab)
        waiting_velocity = self.kind[self.ids[-1]] == NOTE_ON if 0 <= self.ids[-1] < len(self.kind) else False
        known = len(steps) - (1 if waiting_velocity else 0)  # a NoteOn's velocity comes with the next token
        now = int(clock_steps(self.ids, self.vocab)[-1])
        events: list[dict] = []
        step = self.vocab.seconds_per_step
        for index in range(max(self.sent - self.base_note, 0), known):
            note_id = self.base_note + index
            pitch, start, end, velocity = (int(v) for v in steps[index][[PITCH, START, END, VELOCITY_COLUMN]])
            closed = not open_[index]
            if not closed and start >= now:  # struck at this instant: it may still end here, unheard
                break
            if closed and end <= start:
                self.skipped.add(note_id)
            else:
                events.append({"id": note_id, "pitch": pitch, "start": round((self.base_steps + start) * step, 3),
                               "velocity": velocity,
                               "end": round((self.base_steps + end) * step, 3) if closed else None})
                if not closed:
                    self.sounding.add(note_id)
            self.sent = note_id + 1
        for note_id in sorted(self.sounding):
            index = note_id - self.base_note
            if not open_[index]:
                self.sounding.discard(note_id)
                events.append({"id": note_id, "end": round((self.base_steps + int(steps[index][END])) * step, 3)})
        self._rebase(open_, waiting_velocity)
        return events

    def close(self) -> list[dict]:
        """End events for the notes still sounding when the sequence stops: released at its end."""
        end_s = round(self.seconds, 3)
        events = [{"id": note_id, "end": end_s} for note_id in sorted(self.sounding)]
        self.sounding.clear()
        return events

    def _rebase(self, open_: np.ndarray, waiting_velocity: bool) -> None:
        """Drop the tokens before the oldest note still sounding (or pending), keeping the clock."""
        pending = np.flatnonzero(open_)
        first_note = int(pending[0]) if len(pending) else len(open_) - (1 if waiting_velocity else 0)
        if first_note <= 0:
            return
        on_positions = np.flatnonzero(self.kind[np.asarray(self.ids)] == NOTE_ON)
        cut = int(on_positions[first_note]) if first_note < len(on_positions) else len(self.ids)
        self.base_steps += int(clock_steps(self.ids[:cut], self.vocab)[-1]) if cut else 0
        self.base_note += first_note
        self.skipped = {n for n in self.skipped if n >= self.base_note}
        del self.ids[:cut]
