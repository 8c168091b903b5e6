"""Duet mode: the player plays, pauses, and the model answers from everything played so far.

One `DuetSession` per WebSocket (see `server.duet_socket`); its methods run on the event loop,
the decoding on a worker thread. The timeline is the page's clock (seconds since the duet began):
the page sends each key as it goes down and up (``on``/``off`` with its time), and plays its own
notes at once.

A turn:
1. The last key goes up at time t: the pause ends at t + `silence` (the player's setting), and the
   history the answer continues from is known already: every note so far (the player's and the
   model's answers, as heard) and the silence. So the answer is decoded *speculatively*, from
   `SPECULATE_LEAD_S` before the pause ends (or at once for a short silence), into a buffer.
2. At the end of the pause the buffered notes are sent, then each note as the decoder makes it
   (`notestream.NoteStream`); the page schedules them on its audio clock. The first one is
   struck at once: the answer may not begin with a time shift (the pause was its rest).
3. A key pressed during the answer stops it at once: the page silences it, the decoder stops, and
   the duet keeps the answer's notes that began before the key; pressed before the pause ended,
   the speculation is dropped. Otherwise the answer ends after `answer_seconds` of music.

The answer keeps the player's texture: a `texture.TextureSelector` holds the figures (density,
voices, register, velocity, pitch classes) of the player's last `TEXTURE_SECONDS`, with
`candidates` rows chosen every `SEGMENT_TOKENS` tokens (short segments: the first choice comes
within the lead). Every input is checked before any work (`DuetLimits`): message size and rate,
note count, duet length, pitches, times and settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
import torch

from perceiver_ar_music.runtime.errors import UserError

log = logging.getLogger("perceiver_ar_music.studio")

SPECULATE_LEAD_S = 1.0  # decoding starts this long before the pause ends (at once for a shorter silence)
SEGMENT_TOKENS = 16  # texture choices this often in a duet (the first one must come quickly)
TEXTURE_SECONDS = 30.0  # the player's last seconds whose figures the answer keeps
PLAYER, MODEL = "player", "model"
OPEN_NOTE_SECONDS = 1.0  # the length a note still sounding when an answer is kept is given


@dataclass(frozen=True)
class DuetLimits:
    """What one duet may ask for, checked before the work."""

    max_message_bytes: int = 2048
    max_messages_per_second: float = 200.0  # a fast glissando on a MIDI keyboard sends ~40
    max_notes: int = 5000
    max_seconds: float = 1800.0  # the duet's length on its own clock
    max_answer_seconds: float = 60.0
    min_silence: float = 0.3
    max_silence: float = 10.0
    max_candidates: int = 8

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class DuetSettings:
    """The player's settings (the page's duet panel)."""

    silence: float = 1.5  # seconds without a key down that end the player's turn
    answer_seconds: float = 8.0  # seconds of music in an answer (unless the player plays first)
    temperature: float = 1.0
    texture: bool = True  # keep the player's texture (else plain sampling)
    candidates: int = 4  # texture candidates per answer

    def update(self, message: dict, limits: DuetLimits) -> None:
        """Take the settings of a ``settings`` message; a UserError names the first bad one."""
        checks: dict[str, tuple[type, float, float]] = {
            "silence": (float, limits.min_silence, limits.max_silence),
            "answer_seconds": (float, 1.0, limits.max_answer_seconds),
            "temperature": (float, 0.05, 2.0),
            "candidates": (int, 1, limits.max_candidates),
        }
        for name, value in message.items():
            if name == "type":
                continue
            if name == "texture":
                if not isinstance(value, bool):
                    raise UserError("texture: expected true or false")
                self.texture = value
                continue
            if name not in checks:
                raise UserError(f"unknown duet setting: {str(name)[:40]!r}")
            kind, low, high = checks[name]
            number = _number(value, name)
            if kind is int and number != int(number):
                raise UserError(f"{name}: expected a whole number, got {value!r}")
            if not low <= number <= high:
                raise UserError(f"{name}: must be between {low:g} and {high:g}, got {number:g}")
            setattr(self, name, kind(number))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{name}: expected a number, got {str(value)[:40]!r}")
    return float(value)


@dataclass
class Answer:
    """One answer: decoded on a worker thread, sent once `live` (the pause has ended)."""

    number: int
    start: float  # its time 0 on the duet's clock
    pause_end: float  # time.monotonic() when the pause ends (the latency is measured from it)
    length: float  # seconds of music it may have
    stop: threading.Event = field(default_factory=threading.Event)
    live: bool = False
    done: bool = False
    buffer: list[dict] = field(default_factory=list)  # events made before it was live
    notes: dict[int, list[float]] = field(default_factory=dict)  # id -> [pitch, start, end, velocity]
    first_sent: float | None = None  # time.monotonic() when its first note went out
    tokens: int = 0


class DuetModel:
    """The studio's loaded model, decoding answers (shared by every duet; kept warm)."""

    def __init__(self, model: torch.nn.Module, vocab, device: torch.device, note_limits: tuple[float | None, int | None]):
        self.model, self.vocab, self.device = model, vocab, device
        self.model_id, self.checkpoint = "default", None  # which of the studio's models (set by the studio)
        self.max_note_seconds, self.max_polyphony = note_limits

    def prompt(self, notes: np.ndarray, start: float) -> np.ndarray:
        """BOS + the duet's notes as ids + the time shifts up to `start` (the last context only)."""
        from perceiver_ar_music.data.events import encode_timed_events, notes_to_ids

        ids = notes_to_ids(notes, self.vocab).astype(np.int64) if len(notes) else np.zeros(0, np.int64)
        last = float(notes[:, 2].max()) if len(notes) else 0.0
        gap = max(0, round((start - last) / self.vocab.seconds_per_step))
        rest = encode_timed_events(np.zeros(0, np.int64), np.zeros(0, np.int64), gap, self.vocab)
        ids = np.concatenate(([self.vocab.bos_id], ids, rest)).astype(np.int64)
        keep = 2 * self.model.config.max_seq_len  # the decoder reads the last max_seq_len tokens
        return ids[-keep:]

    def target(self, player_notes: np.ndarray, end: float):
        """The texture the answer keeps: the player's last `TEXTURE_SECONDS` (None without notes)."""
        from perceiver_ar_music.sampling.texture import build_target, primer_figures

        if not len(player_notes):
            return None
        figures = primer_figures(player_notes, end, TEXTURE_SECONDS)
        return build_target({}, figures, source="the player") if figures is not None else None

    def answer(self, answer: Answer, prompt: np.ndarray, target, settings: DuetSettings,
               emit: Callable[[list[dict], bool], None], seed: int | None = None) -> None:
        """Decode one answer, handing its note events to `emit(events, done)` as they are final."""
        from perceiver_ar_music.sampling.continuation import sampling_rules
        from perceiver_ar_music.sampling.sampler import SamplingConfig, sample_ids
        from perceiver_ar_music.sampling.texture import TextureSelector
        from perceiver_ar_music.studio.notestream import NoteStream

        vocab = self.vocab
        stream = NoteStream(vocab)
        selector = None
        if settings.texture and target is not None and settings.candidates > 1:
            selector = TextureSelector(vocab, [target], len(prompt), candidates=settings.candidates,
                                       segment_tokens=SEGMENT_TOKENS)
        rules = sampling_rules(vocab, self.device, constrain=False, max_note_seconds=self.max_note_seconds,
                               max_polyphony=self.max_polyphony)
        allowed = AnswerRules(vocab, len(prompt), rules, self.device)
        pending: list[torch.Tensor] = []

        def final(tokens: list[int]) -> None:
            answer.tokens += len(tokens)
            events = stream.feed(tokens)
            if events:
                emit(events, False)

        def on_step(step: int, new: torch.Tensor) -> bool:
            if selector is None:
                final([int(new[0])])
            else:
                pending.append(new.clone())
            return answer.stop.is_set() or stream.seconds >= answer.length

        def on_reorder(rows: torch.Tensor) -> None:
            chosen = int(rows[0])
            final([int(tokens[chosen]) for tokens in pending])
            pending.clear()

        tokens_per_second = 120  # dense piano writes ~60 tokens per second of music
        sample_ids(
            self.model, torch.as_tensor(prompt, device=self.device)[None], int(answer.length * tokens_per_second) + 64,
            SamplingConfig(temperature=settings.temperature, top_p=0.95), seed=seed, allowed_tokens=allowed,
            amend_tokens=rules.amend if rules is not None else None, callback=on_step, selector=selector,
            reorder=[hook for hook in (rules.reorder if rules is not None else None, on_reorder) if hook is not None],
        )
        emit(stream.close(), True)


class AnswerRules:
    """The sampler's mask for an answer: the note guards, never PAD/BOS/EOS (the player sets the
    length), and no time shift before the first NoteOn (the pause was the rest)."""

    def __init__(self, vocab, prompt_len: int, rules, device: torch.device) -> None:
        from perceiver_ar_music.data.vocab import NOTE_ON, SPECIAL, TIME_SHIFT

        kind = torch.tensor(vocab.kind, device=device)
        self.rules, self.prompt_len = rules, prompt_len
        self.never = kind == SPECIAL
        self.shift, self.note_on = kind == TIME_SHIFT, kind == NOTE_ON
        self.started = False

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        allowed = self.rules(sequences) if self.rules is not None else ~self.never.expand(sequences.shape[0], -1)
        allowed = allowed & ~self.never
        if not self.started:
            begun = self.note_on[sequences[:, self.prompt_len:]].any(dim=1)
            self.started = bool(begun.all())
            allowed = allowed & ~(self.shift[None] & ~begun[:, None])
        return allowed


Send = Callable[[dict], Awaitable[None]]


class DuetSession:
    """One player's duet (see the module docstring): the notes so far and the turn being taken."""

    def __init__(self, model: DuetModel, send: Send, limits: DuetLimits = DuetLimits(),
                 save: Callable[[np.ndarray, np.ndarray, str | None], dict] | None = None,
                 choose: Callable[[str], DuetModel] | None = None) -> None:
        self.model, self.send, self.limits, self.save_notes = model, send, limits, save
        self.choose = choose  # a model id -> that model as the duet uses it (UserError if none)
        self.settings = DuetSettings()
        self.loop = asyncio.get_running_loop()
        self.notes: list[tuple[int, float, float, int, str]] = []  # pitch, start, end, velocity, part
        self.held: dict[int, tuple[float, int]] = {}
        self.clock = 0.0  # the latest time the page sent
        self.answer: Answer | None = None
        self.answers = 0
        self.timers: list[asyncio.TimerHandle] = []
        self.latencies_ms: list[float] = []
        self.window_start, self.window_count = time.monotonic(), 0
        self.seed: int | None = None  # fixed by tests and the benchmark; None: a new draw each answer

    # ----- messages from the page -----
    async def receive(self, text: str) -> None:
        """Handle one message (JSON); a UserError answers ``{"type": "error"}`` and the duet goes on."""
        try:
            await self._handle(self._parse(text))
        except UserError as exc:
            await self.send({"type": "error", "error": str(exc)})
        except Exception as exc:  # a bug: said in one line, logged, and the duet goes on
            log.exception("duet: internal error")
            await self.send({"type": "error", "error": f"internal error: {type(exc).__name__}: {exc}"})

    def _parse(self, text: str) -> dict:
        if len(text.encode("utf-8", "surrogatepass")) > self.limits.max_message_bytes:
            raise UserError(f"a duet message may have {self.limits.max_message_bytes} bytes")
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        if self.window_count > self.limits.max_messages_per_second:
            raise UserError(f"too many messages (more than {self.limits.max_messages_per_second:g} a second)")
        try:
            message = json.loads(text)
        except ValueError:
            raise UserError("a duet message is JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise UserError('a duet message is an object with a "type"')
        return message

    async def _handle(self, message: dict) -> None:
        kind = message["type"]
        if kind == "on":
            self._check_fields(message, {"type", "pitch", "velocity", "t"})
            await self.key_down(self._pitch(message), self._velocity(message), self._time(message))
        elif kind == "off":
            self._check_fields(message, {"type", "pitch", "t"})
            self.key_up(self._pitch(message), self._time(message))
        elif kind == "settings":
            self.settings.update(message, self.limits)
            await self.send({"type": "settings", "settings": self.settings.__dict__})
        elif kind == "model":
            self._check_fields(message, {"type", "model"})
            await self.choose_model(message.get("model"))
        elif kind == "save":
            self._check_fields(message, {"type"})
            await self.save()
        elif kind == "clear":
            self._check_fields(message, {"type"})
            await self.clear()
        elif kind == "ping":
            self._check_fields(message, {"type", "t"})
            await self.send({"type": "pong", "t": _number(message.get("t"), "t")})
        elif kind == "stats":
            await self.send({"type": "stats", "latencies_ms": self.latencies_ms, "notes": len(self.notes)})
        else:
            raise UserError(f"unknown duet message type: {kind[:40]!r}")

    @staticmethod
    def _check_fields(message: dict, allowed: set[str]) -> None:
        unknown = sorted(set(message) - allowed)
        if unknown:
            raise UserError(f"unknown field in a {message['type']} message: {str(unknown[0])[:40]!r}")

    @staticmethod
    def _pitch(message: dict) -> int:
        pitch = _number(message.get("pitch"), "pitch")
        if pitch != int(pitch) or not 21 <= pitch <= 108:
            raise UserError(f"pitch: a piano key, 21..108 (MIDI), got {pitch:g}")
        return int(pitch)

    @staticmethod
    def _velocity(message: dict) -> int:
        velocity = _number(message.get("velocity"), "velocity")
        if velocity != int(velocity) or not 1 <= velocity <= 127:
            raise UserError(f"velocity: 1..127, got {velocity:g}")
        return int(velocity)

    def _time(self, message: dict) -> float:
        t = _number(message.get("t"), "t")
        if not 0 <= t <= self.limits.max_seconds:
            raise UserError(f"the duet is too long (the limit is {self.limits.max_seconds:g} s): save it and start again")
        self.clock = max(self.clock, t)  # a message that overtook another keeps time moving forward
        return self.clock

    # ----- the turns -----
    async def key_down(self, pitch: int, velocity: int, t: float) -> None:
        """A key goes down: any answer stops (kept up to now), the player's note begins."""
        if len(self.notes) + len(self.held) + self._answer_note_count() >= self.limits.max_notes:
            raise UserError(f"the duet has {self.limits.max_notes} notes, the most it may have: save it and start again")
        await self._interrupt(t)
        if pitch in self.held:
            self._close(pitch, t)
        self.held[pitch] = (t, velocity)

    def key_up(self, pitch: int, t: float) -> None:
        """A key goes up: its note ends; with no key down, the pause (and the answer's decoding) begins."""
        if pitch not in self.held:
            return
        self._close(pitch, t)
        if not self.held:
            self._schedule_turn(t)

    def _close(self, pitch: int, t: float) -> None:
        start, velocity = self.held.pop(pitch)
        self.notes.append((pitch, start, max(t, start + 0.01), velocity, PLAYER))

    def _answer_note_count(self) -> int:
        return len(self.answer.notes) if self.answer is not None else 0

    def _schedule_turn(self, t: float) -> None:
        self._cancel_timers()
        silence = self.settings.silence
        now = time.monotonic()
        self.answers += 1
        answer = Answer(self.answers, start=t + silence, pause_end=now + silence,
                        length=self.settings.answer_seconds)
        self.answer = answer
        lead = max(0.0, silence - SPECULATE_LEAD_S)
        self.timers = [self.loop.call_later(lead, self._start_decoding, answer),
                       self.loop.call_at(self.loop.time() + silence, self._pause_ended, answer)]

    def _start_decoding(self, answer: Answer) -> None:
        if answer is not self.answer or answer.stop.is_set():
            return
        notes = self._notes_array()
        player = notes[[part == PLAYER for part in self._parts()]] if len(notes) else notes
        prompt = self.model.prompt(notes, answer.start)
        target = self.model.target(player, answer.start - self.settings.silence) if self.settings.texture else None
        settings = DuetSettings(**self.settings.__dict__)

        def emit(events: list[dict], done: bool) -> None:
            try:
                self.loop.call_soon_threadsafe(self._events, answer, events, done)
            except RuntimeError:  # the studio is shutting down: nobody listens any more
                answer.stop.set()

        def work() -> None:
            try:
                self.model.answer(answer, prompt, target, settings, emit, seed=self.seed)
            except Exception:  # a bug: the duet goes on without this answer
                log.exception("duet: the answer failed")
                emit([], True)

        threading.Thread(target=work, name=f"duet-answer-{answer.number}", daemon=True).start()

    def _pause_ended(self, answer: Answer) -> None:
        if answer is not self.answer or answer.stop.is_set():
            return
        answer.live = True
        self.loop.create_task(self._go_live(answer))

    async def _go_live(self, answer: Answer) -> None:
        await self.send({"type": "answer", "answer": answer.number, "start": round(answer.start, 3)})
        buffered, answer.buffer = answer.buffer, []
        if buffered:
            await self._send_notes(answer, buffered)
        if answer.done:
            await self._send_end(answer, "length")

    def _events(self, answer: Answer, events: list[dict], done: bool) -> None:
        """Events from the decoder (on the loop): kept in the answer, sent once it is live."""
        kept = []
        for event in events:
            if "pitch" in event:
                if event["start"] >= answer.length:
                    continue
                answer.notes[event["id"]] = [event["pitch"], event["start"], event["end"], event["velocity"]]
            elif event["id"] in answer.notes:
                answer.notes[event["id"]][2] = event["end"]
            else:
                continue
            kept.append(event)
        if done:
            answer.done = True
        if answer is not self.answer or answer.stop.is_set():
            return
        if not answer.live:
            answer.buffer.extend(kept)
            return
        if kept:
            self.loop.create_task(self._send_notes(answer, kept))
        if done:
            self.loop.create_task(self._send_end(answer, "length"))

    async def _send_notes(self, answer: Answer, events: list[dict]) -> None:
        if answer.stop.is_set():
            return
        await self.send({"type": "notes", "answer": answer.number, "notes": events})
        if answer.first_sent is None and any("pitch" in event for event in events):
            answer.first_sent = time.monotonic()
            latency = (answer.first_sent - answer.pause_end) * 1000
            self.latencies_ms.append(round(latency, 2))
            log.info("duet: answer %d, first note sent %.0f ms after the pause ended", answer.number, latency)

    async def _send_end(self, answer: Answer, why: str) -> None:
        if not answer.stop.is_set():
            ends = [note[2] for note in answer.notes.values() if note[2] is not None]
            await self.send({"type": "answer_end", "answer": answer.number, "stopped_by": why,
                             "seconds": round(max(ends, default=0.0), 3)})

    async def _interrupt(self, t: float) -> None:
        """The player plays: the answer stops here (its notes up to `t` stay in the duet)."""
        self._cancel_timers()
        answer, self.answer = self.answer, None
        if answer is None:
            return
        answer.stop.set()
        if answer.live:
            self._commit(answer, t - answer.start)
            await self.send({"type": "answer_end", "answer": answer.number, "stopped_by": "player",
                             "seconds": round(max(t - answer.start, 0.0), 3)})

    def _commit(self, answer: Answer, cut: float) -> None:
        """The answer's notes that began before `cut` (answer seconds) join the duet, ended by then."""
        for pitch, start, end, velocity in answer.notes.values():
            if start >= cut:
                continue
            end = min(end if end is not None else start + OPEN_NOTE_SECONDS, cut)
            if end > start:
                self.notes.append((int(pitch), answer.start + start, answer.start + end, int(velocity), MODEL))

    def _cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers = []

    def _settle(self) -> None:
        """Before saving: the answer stops, and what it has made joins the duet when it was heard."""
        self._cancel_timers()
        answer, self.answer = self.answer, None
        if answer is not None:
            answer.stop.set()
            if answer.live:
                self._commit(answer, math.inf)

    def _notes_array(self) -> np.ndarray:
        if not self.notes:
            return np.zeros((0, 4))
        return np.array([note[:4] for note in sorted(self.notes, key=lambda n: n[1])], dtype=np.float64)

    def _parts(self) -> list[str]:
        return [note[4] for note in sorted(self.notes, key=lambda n: n[1])]

    async def choose_model(self, model: Any) -> None:
        """Answer with another model from the next answer on (the duet so far is kept)."""
        if self.choose is None:
            raise UserError("this duet has one model")
        if not isinstance(model, str) or len(model) > 40:
            raise UserError("model: expected a model's id")
        self.model = await self.loop.run_in_executor(None, self.choose, model)
        await self.send({"type": "model", "model": model})

    async def save(self) -> None:
        """Write the duet as a take (one MIDI file, two tracks; its roll and audio)."""
        self._settle()
        for pitch in list(self.held):
            self._close(pitch, self.clock)
        if not self.notes or self.save_notes is None:
            raise UserError("nothing to save yet: play something first")
        notes = self._notes_array()
        is_model = np.array([part == MODEL for part in self._parts()])
        take = await asyncio.to_thread(self.save_notes, notes, is_model, getattr(self.model, "model_id", None))
        await self.send({"type": "saved", "take": take})

    async def clear(self) -> None:
        """Start a new duet."""
        await self._interrupt(self.clock)
        self.notes, self.held, self.clock = [], {}, 0.0
        await self.send({"type": "cleared"})

    def close(self) -> None:
        """The page left: stop any decoding."""
        self._cancel_timers()
        if self.answer is not None:
            self.answer.stop.set()
