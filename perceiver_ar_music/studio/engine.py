"""The studio's work: one loaded model, primers, sampling with live progress, and writing takes.

A request is checked completely when it arrives (settings by `generate`'s parser, the primer by
`continuation.load_primer`), so the page shows a mistake at once; the queue then samples it with
`continuation.continue_ids` and writes each sample as a take (MIDI, piano roll, audio, details).
"""

from __future__ import annotations

import argparse
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.sampling.settings import GenerationSettings
from perceiver_ar_music.studio import settings as studio_settings
from perceiver_ar_music.studio.jobs import Job, JobQueue
from perceiver_ar_music.sampling.texture import TextureSelector
from perceiver_ar_music.studio.takes import DEFAULT_MAX_UPLOAD_BYTES, TakeStore
from perceiver_ar_music.studio.teach import DEFAULT_MODEL, Teacher, TeachRequest

EXAMPLE = "example"  # the primer reference of the bundled example
EXAMPLE_PRIMER = Path(__file__).resolve().parents[2] / "examples" / "primer.mid"
ROLL_HEIGHT = 260  # pixels of notes area at least: a narrow primer's roll is not a thin strip


@dataclass
class Request:
    """A checked generation request."""

    args: argparse.Namespace  # the page's settings as generate's flags (recorded with each take)
    primer: str | None  # None, EXAMPLE or a primer/take file name in the output folder
    prompt: np.ndarray  # BOS + primer ids
    settings: GenerationSettings
    texture: TextureSelector | None  # texture-keeping sampling (None: plain)
    model: str = "default"  # which model makes it (`teach.Teacher` ids)
    loaded: Any = None  # that model, loaded


@dataclass
class Progress:
    """The tokens sampled so far, recorded per step without waiting for the device."""

    num_samples: int
    candidates: int = 1  # rows per sample while sampling (texture-keeping draws several)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when sampling ended: tokens/s stays what it was then
    kept: int | None = None  # once the takes are written: the new tokens the longest take kept
    steps: list[torch.Tensor] = field(default_factory=list)
    final_steps: int = 0  # the steps no texture choice can replace any more (what may be played)
    _ids: np.ndarray | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, new: torch.Tensor) -> None:
        self.steps.append(new.detach().clone())  # the sampler may reuse its buffer
        if self.candidates == 1:
            self.final_steps = len(self.steps)

    def ids(self) -> np.ndarray:
        """(tokens so far, num_samples) int64 ids (of each sample's first candidate row)."""
        with self._lock:
            return self._rows()[:, :: self.candidates]

    def reorder(self, rows: torch.Tensor) -> None:
        """Texture-keeping sampling kept one candidate: row i now continues from rows[i]."""
        with self._lock:
            self._ids = self._rows()[:, rows.cpu().numpy()]
            self.final_steps = len(self._ids)

    def final_ids(self, sample: int, start: int = 0) -> np.ndarray:
        """Sample `sample`'s final tokens from step `start` on (those a texture choice cannot change)."""
        with self._lock:
            rows = self._rows()
            return rows[start:self.final_steps, sample * self.candidates]

    def _rows(self) -> np.ndarray:
        """Every row's ids so far (call with the lock held)."""
        width = self.num_samples * self.candidates
        done = 0 if self._ids is None else len(self._ids)
        count = len(self.steps)
        if self._ids is None or count > done:
            fresh = torch.stack(self.steps[done:count]).cpu().numpy() if count > done else np.zeros((0, width))
            old = np.zeros((0, width), np.int64) if self._ids is None else self._ids
            self._ids = np.concatenate([old, fresh.astype(np.int64)])
        return self._ids


class Studio:
    """The model, the output folder and the queue behind the page."""

    def __init__(
        self,
        checkpoint: Path,
        out: Path,
        *,
        device: str = "auto",
        soundfont: Path | None = None,
        audio_format: str | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        from perceiver_ar_music.runtime.devices import inference_dtype, pick_device
        from perceiver_ar_music.sampling.continuation import load_for_generation
        from perceiver_ar_music.listening.render import DEFAULT_AUDIO_FORMAT, check_soundfont

        self.soundfont = check_soundfont(soundfont) if soundfont is not None else None
        self.audio_format = audio_format or DEFAULT_AUDIO_FORMAT
        self.device = pick_device(device)
        self.loaded, self.tokenizer = load_for_generation(checkpoint, self.device, dtype=inference_dtype(self.device))
        self.vocab = self.tokenizer.vocab
        self.parser = studio_settings.generate_parser()
        self.store = TakeStore(out, max_upload_bytes)
        self.audio_unavailable: str | None = None
        self.queue = JobQueue(self._run)
        self.teacher = Teacher(self.store.folder, self.loaded.path, self.device, self.tokenizer)
        self.teacher.queue = self.queue
        self._other: tuple[str, Path, Any] | None = None  # the last taught model used: (id, checkpoint, loaded)
        self._other_lock = threading.Lock()
        self._duet_model = None
        from perceiver_ar_music.studio.duet import DuetLimits

        self.duet_limits = DuetLimits()
        self.duet_seed: int | None = None  # the duet's answers' seed (None: a new draw each answer)
        from perceiver_ar_music.data.store_builder import cache_dir
        from perceiver_ar_music.studio.piano import PianoSamples

        self.piano = PianoSamples(self.soundfont, cache_dir())
        self.piano.start()

    @property
    def duet_model(self):
        """The studio's own model as the duet uses it (`duet.DuetModel`), made once."""
        if self._duet_model is None:
            self._duet_model = self.duet_model_for(DEFAULT_MODEL)
        return self._duet_model

    def duet_model_for(self, model: str):
        """A model (the studio's own or one taught here) as the duet uses it; UserError if none."""
        from perceiver_ar_music.sampling.note_limits import NoteLimits
        from perceiver_ar_music.studio.duet import DuetModel

        if model == DEFAULT_MODEL and self._duet_model is not None:
            return self._duet_model
        loaded = self.model(model)
        limits = NoteLimits.from_meta(loaded.meta)
        duet = DuetModel(loaded.model, self.vocab, self.device, (limits.max_note_seconds, limits.max_polyphony))
        duet.model_id, duet.checkpoint = model, loaded.path
        return duet

    def save_duet(self, notes: np.ndarray, is_model: np.ndarray, model: str | None = None) -> dict:
        """A duet (notes (N, 4) in time order, which of them the model played, which model) as a
        take: one MIDI file with the player's and the model's tracks, its piano roll and its audio."""
        from perceiver_ar_music.listening.music_stats import sample_report
        from perceiver_ar_music.listening.pianoroll import draw_piano_roll, roll_geometry, rows_for_height
        from perceiver_ar_music.listening.render import AudioUnavailable, render_midi
        from perceiver_ar_music.studio.duet import MODEL, PLAYER

        name = self.store.reserve("take")[0]
        folder = self.store.folder
        write_duet_midi(notes, is_model, folder / f"{name}.mid", (PLAYER, MODEL))
        rows = rows_for_height(notes, ROLL_HEIGHT)
        draw_piano_roll(notes, None, folder / f"{name}.png", row_pixels=rows)
        audio, audio_note = None, self.audio_unavailable
        if self.audio_unavailable is None:
            try:
                render_midi(folder / f"{name}.mid", folder / f"{name}.{self.audio_format}", soundfont=self.soundfont)
                audio = f"{name}.{self.audio_format}"
            except AudioUnavailable as exc:
                self.audio_unavailable = audio_note = str(exc)
            except (UserError, OSError) as exc:
                audio_note = f"no audio: {getattr(exc, 'strerror', None) or exc}"
        report = sample_report(notes, 0, 0.0)
        take = {
            "name": name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "kind": "duet",
            "primer": None, "primer_label": "a duet", "primer_seconds": None, "sample": 1, "settings": {},
            "new_tokens": 0, "new_seconds": round(float(notes[:, 2].max()) if len(notes) else 0.0, 2),
            "boundary_seconds": None, "stopped_by": "save",
            "player_notes": int((~is_model).sum()), "model_notes": int(is_model.sum()),
            "tokens_per_second": 0.0, "midi": f"{name}.mid", "roll": f"{name}.png",
            "roll_geometry": roll_geometry(notes, None, rows), "audio": audio, "audio_note": audio_note,
            "stats": report.continuation.rows() if report.continuation else [],
            "texture": "the player's", "windows": [], "model": model or DEFAULT_MODEL,
            "model_name": self.teacher.name_of(model), "checkpoint": str(self.teacher.checkpoint(model or DEFAULT_MODEL)),
        }
        self.store.save_take(take)
        return take

    # ----- what the page needs to know -----
    def config(self) -> dict:
        from perceiver_ar_music.sampling.settings import DEFAULT_LENGTH
        from perceiver_ar_music.sampling.note_limits import NoteLimits
        from perceiver_ar_music.listening.pianoroll import CONTINUATION, PRIMER

        defaults = NoteLimits.from_meta(self.loaded.meta)
        note_seconds, polyphony = defaults.max_note_seconds, defaults.max_polyphony
        return {
            "fields": studio_settings.fields(self.parser),
            "placeholders": {"length": DEFAULT_LENGTH, "max_note_seconds": note_seconds, "max_polyphony": polyphony},
            "max_samples": studio_settings.MAX_SAMPLES,
            "example": EXAMPLE_PRIMER.is_file(),
            "max_upload_bytes": self.store.max_upload_bytes,
            "audio_format": self.audio_format,
            "checkpoint": str(self.loaded.path),
            "colours": {name: "rgb({}, {}, {})".format(*(int(c) for c in colour))
                        for name, colour in (("primer", PRIMER), ("continuation", CONTINUATION))},
        }

    # ----- primers -----
    def primer_ids(self, ref: str | None, seconds: float | None, say=None) -> np.ndarray:
        """The primer's ids (no BOS), or of its first `seconds`; a UserError as `generate` words it,
        and what is not used as asked said to `say` (see `continuation.load_primer`)."""
        from perceiver_ar_music.sampling.continuation import load_primer
        from perceiver_ar_music.data.vocab import NOTE_ON

        if not ref:
            return np.zeros(0, dtype=np.int64)
        if ref == EXAMPLE:
            if not EXAMPLE_PRIMER.is_file():
                raise UserError("the bundled example primer is not installed here")
            path = EXAMPLE_PRIMER
        else:
            path = self.store.primer_file(ref)
        try:
            ids = load_primer(self.tokenizer, path, seconds,
                              say=None if say is None else lambda line: say(line.replace(str(path), primer_label(ref))))
        except UserError as exc:  # name the primer as the page does, not by its path
            raise UserError(str(exc).replace(str(path), primer_label(ref))) from None
        if not np.any(np.asarray(self.vocab.kind)[ids] == NOTE_ON):
            raise UserError(f"primer {primer_label(ref)}: it has no notes")
        return ids

    def primer_info(self, ref: str | None, seconds: float | None) -> dict:
        remarks: list[str] = []
        ids = self.primer_ids(ref, seconds, say=remarks.append)
        notes = self.primer_notes(ids)
        return {"primer": ref, "label": primer_label(ref), "tokens": int(len(ids)), "notes": int(len(notes)),
                "seconds": round(float(self.vocab.seconds(ids.tolist())), 2), "remarks": remarks}

    def primer_notes(self, ids: np.ndarray) -> np.ndarray:
        from perceiver_ar_music.sampling.continuation import sample_notes

        prompt = np.concatenate(([self.vocab.bos_id], ids)).astype(np.int64)
        return sample_notes(prompt, len(prompt), self.vocab)[0]

    def primer_roll(self, ref: str | None, seconds: float | None) -> bytes:
        from perceiver_ar_music.listening.pianoroll import piano_roll_image, png_bytes, rows_for_height

        notes = self.primer_notes(self.primer_ids(ref, seconds))
        return png_bytes(piano_roll_image(notes, None, row_pixels=rows_for_height(notes, ROLL_HEIGHT)))

    def upload(self, data: bytes, filename: str) -> dict:
        """Keep an uploaded MIDI primer once it reads like `generate --primer` reads one."""
        label = Path(filename or "upload.mid").name[:80]

        def check(path: Path) -> None:
            from perceiver_ar_music.sampling.continuation import load_primer
            from perceiver_ar_music.data.vocab import NOTE_ON

            try:
                ids = load_primer(self.tokenizer, path, None)
            except UserError as exc:
                raise UserError(str(exc).replace(str(path), label)) from None
            if not np.any(np.asarray(self.vocab.kind)[ids] == NOTE_ON):
                raise UserError(f"primer {label}: it has no notes")

        try:
            name = self.store.save_upload(data, check)
        except UserError as exc:
            message = str(exc)
            raise UserError(message if message.startswith("primer ") else f"primer {label}: {message}") from None
        return {**self.primer_info(name, None), "label": label}

    # ----- generation -----
    def submit(self, form: dict) -> Job:
        """Check a request from the page completely, then queue it."""
        from perceiver_ar_music.sampling.texture import texture_selector

        form = dict(form)
        primer = form.pop("primer", None)
        model = form.pop("model", None) or DEFAULT_MODEL
        if primer is not None and not isinstance(primer, str):
            raise UserError("primer: expected a name")
        args = studio_settings.parse_settings(form.pop("settings", {}) or {}, self.parser)
        if form:
            raise UserError(f"unknown field: {sorted(form)[0]!r}")
        if args.seed is None:  # a random take still records the seed that makes it again
            args.seed = secrets.randbelow(2**31)
        loaded = self.model(model)
        settings = GenerationSettings.from_args(args, loaded, self.vocab)
        primer_ids = self.primer_ids(primer, settings.primer_seconds)
        prompt = np.concatenate(([self.vocab.bos_id], primer_ids)).astype(np.int64)
        try:
            texture = texture_selector(settings.texture, self.vocab, primer_ids, len(prompt))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return self.queue.submit(Request(args, primer or None, prompt, settings, texture, model, loaded))

    def model(self, model: str) -> Any:
        """The loaded model of an id (the studio's own, or one taught here: the last one asked
        for stays loaded)."""
        from perceiver_ar_music.runtime.devices import inference_dtype
        from perceiver_ar_music.sampling.continuation import load_for_generation

        checkpoint = self.teacher.checkpoint(model)
        if model == DEFAULT_MODEL:
            return self.loaded
        with self._other_lock:
            if self._other is None or self._other[:2] != (model, checkpoint):
                loaded, tokenizer = load_for_generation(checkpoint, self.device, dtype=inference_dtype(self.device))
                if tokenizer.hash != self.tokenizer.hash:
                    raise UserError(f"model {self.teacher.name_of(model)!r} has another tokenizer than the studio's")
                self._other = (model, checkpoint, loaded)
            return self._other[2]

    def teach(self, form: dict, train_on: bool = False) -> Job:
        """Queue fine-tuning the studio's model on a set of files ({"set", "minutes", "name"}), or
        going on training a model taught here ({"model", "minutes"}) with `train_on`."""
        request = self.teacher.request_train_on(form) if train_on else self.teacher.request(form)
        try:
            job = self.queue.submit(request)
        except UserError as exc:
            self.teacher.cancel(request.model, f"not queued: {exc}")
            raise
        self.teacher.record_job(request.model, job.id)
        return job

    def _run(self, job: Job) -> Any:
        if isinstance(job.request, TeachRequest):
            return self.teacher.run(job)
        return self._sample(job)

    def _sample(self, job: Job) -> list[str]:
        from perceiver_ar_music.runtime import threads
        from perceiver_ar_music.sampling.continuation import continue_ids, sampling_rules

        threads.refresh()  # the machine may be busier (or freer) than when the studio started
        request: Request = job.request
        settings = request.settings
        candidates = request.texture.candidates if request.texture is not None else 1
        progress = job.progress = Progress(settings.num_samples, candidates)

        def on_step(step: int, new: torch.Tensor) -> bool:
            progress.record(new)
            return job.stop_requested

        rules = sampling_rules(self.vocab, self.device, constrain=settings.constrain,
                               max_note_seconds=settings.max_note_seconds, max_polyphony=settings.max_polyphony)
        if job.stop_requested:  # stopped while it was being prepared: nothing was made
            return []
        result = continue_ids(
            request.loaded.model, request.prompt, self.vocab, settings.length, settings.num_samples, settings.sampling,
            seconds=settings.seconds, seed=settings.seed, rules=rules, progress=False, on_step=on_step,
            use_cache=settings.use_cache, reset_latents=settings.reset_latents, texture=request.texture,
            on_reorder=progress.reorder,
        )
        progress.ended = time.monotonic()
        stopped_by = "stop" if job.stop_requested else result.stopped_by
        names = self.store.reserve("take", len(result.sequences))
        for index, (name, sequence) in enumerate(zip(names, result.sequences), start=1):
            self._write_take(name, sequence, result.prompt_len, request, index, stopped_by,
                             result.tokens_per_second_per_sample)
        progress.kept = max((len(sequence) - result.prompt_len for sequence in result.sequences), default=0)
        return names

    def _write_take(self, name: str, sequence: np.ndarray, prompt_len: int, request: Request, index: int,
                    stopped_by: str, tokens_per_second: float) -> dict:
        from perceiver_ar_music.sampling.continuation import write_sample_files

        target = request.texture.target_of(index - 1) if request.texture is not None else None
        common = dict(max_note_seconds=request.settings.max_note_seconds, soundfont=self.soundfont, target=target,
                      min_roll_height=ROLL_HEIGHT)
        write_note = None
        try:
            files = write_sample_files(self.store.folder, name, sequence, prompt_len, self.vocab, **common,
                                       audio_format=self.audio_format if self.audio_unavailable is None else None)
        except OSError as exc:  # e.g. the disk filled up with the audio: keep the take without it
            files = write_sample_files(self.store.folder, name, sequence, prompt_len, self.vocab, **common,
                                       audio_format=None)
            write_note = f"no audio: {exc.strerror or exc}"
        audio, audio_note = files.audio, write_note or files.audio_note or self.audio_unavailable
        if files.audio_unavailable:
            self.audio_unavailable = files.audio_note
        new = np.asarray(sequence[prompt_len:])
        take = {
            "name": name,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "primer": request.primer,
            "primer_label": primer_label(request.primer),
            "primer_seconds": request.args.primer_seconds,
            "sample": index,
            "settings": {dest: _plain(getattr(request.args, dest)) for dest in studio_settings.SETTINGS
                         if hasattr(request.args, dest)},
            "new_tokens": int(len(new)),
            "new_seconds": round(float(files.report.continuation.duration_s if files.report.continuation else 0.0), 2),
            "boundary_seconds": round(float(files.boundary_s), 2) if files.primer_notes else None,
            "stopped_by": stopped_by,
            "tokens_per_second": round(float(tokens_per_second), 1),
            "midi": files.midi,
            "roll": files.piano_roll,
            "roll_geometry": files.roll_geometry,
            "audio": audio,
            "audio_note": audio_note,
            "stats": files.report.continuation.rows() if files.report.continuation else [],
            "texture": target.describe() if target is not None else "off (plain sampling)",
            "windows": take_windows(files.report),
            "checkpoint": str(request.loaded.path),
            "model": request.model,
            "model_name": self.teacher.name_of(request.model),
        }
        self.store.save_take(take)
        return take

    def models_status(self) -> dict:
        """The models to choose from, and the fine-tuning job that has not finished (the page
        follows it again after a reload)."""
        from perceiver_ar_music.studio.jobs import FINISHED

        teaching = [job for job in self.queue.jobs_list() if isinstance(job.request, TeachRequest)
                    and job.state not in FINISHED]
        return {"models": self.teacher.models(), "teaching": self.job_status(teaching[0]) if teaching else None,
                "restart_notes": self.teacher.restart_notes}

    def job_status(self, job: Job) -> dict:
        """What the page shows while a job waits, runs, and when it has finished."""
        from perceiver_ar_music.sampling.continuation import music_clock

        if isinstance(job.request, TeachRequest):
            return self.teacher.status(job)
        status = {"job": job.id, "kind": "take", "state": job.state, "position": self.queue.position(job), "error": job.error,
                  "takes": job.result or [], "tokens": 0, "tokens_per_second": 0.0, "music_seconds": 0.0,
                  "num_samples": job.request.settings.num_samples, "stopping": job.stop_requested}
        progress = job.progress
        if isinstance(progress, Progress):
            ids = progress.ids()
            elapsed = max((progress.ended or time.monotonic()) - progress.started, 1e-9)
            status["tokens"] = int(len(ids) if progress.kept is None else progress.kept)
            status["drawn"] = int(len(ids))
            status["tokens_per_second"] = round(len(ids) / elapsed, 1)  # per sample, as generate's progress
            if len(ids):
                status["music_seconds"] = round(min(float(music_clock(ids[:, k], self.vocab)[-1]) for k in range(ids.shape[1])), 2)
        return status

    def live_roll(self, job: Job, sample: int) -> bytes:
        """The piano roll of one sample of a job so far (primer and continuation in their colours)."""
        from perceiver_ar_music.sampling.continuation import sample_notes
        from perceiver_ar_music.listening.pianoroll import piano_roll_image, png_bytes, rows_for_height

        request: Request = job.request
        if not isinstance(request, Request):
            raise UserError("this job makes no piano roll")
        if not 0 <= sample < request.settings.num_samples:
            raise UserError(f"no sample {sample} in this job")
        ids = job.progress.ids() if isinstance(job.progress, Progress) else np.zeros((0, request.settings.num_samples), np.int64)
        sequence = np.concatenate([request.prompt, ids[:, sample]])
        sequence = sequence[sequence != self.vocab.eos_id]
        notes, primer_notes, boundary = sample_notes(sequence, len(request.prompt), self.vocab, request.settings.max_note_seconds)
        return png_bytes(piano_roll_image(notes, boundary if primer_notes else None,
                                          row_pixels=rows_for_height(notes, ROLL_HEIGHT)))

    def close(self) -> None:
        self.queue.close(timeout=30)


def take_windows(report) -> list[dict]:
    """A take's continuation in windows, with the texture target beside each (when one was held):
    label, notes/s, mean voices, and the targets of those two figures. A last window too short to
    compare is left out (`music_stats.shown_windows`)."""
    from perceiver_ar_music.listening.music_stats import shown_windows

    rows = []
    for index, window in enumerate(shown_windows(report.windows, report.window_s)):
        target = report.targets[index] if index < len(report.targets) else {}
        rows.append({
            "window": window.label("–"),
            "notes_per_second": round(window.stats.notes_per_second, 2),
            "voices": round(window.stats.mean_polyphony, 2),
            "target_notes_per_second": _rounded(target.get("notes_per_second")),
            "target_voices": _rounded(target.get("mean_polyphony")),
        })
    return rows


def _plain(value: object) -> object:
    """A setting as the page sends it back (a texture curve as its text)."""
    return value.as_text() if hasattr(value, "as_text") else value


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def write_duet_midi(notes: np.ndarray, is_model: np.ndarray, path: Path, names: tuple[str, str]) -> None:
    """The duet as a MIDI file: the player's notes and the model's on two piano tracks."""
    import pretty_midi

    from perceiver_ar_music.runtime.atomic import atomic_path

    midi = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    for name, part in zip(names, (notes[~is_model], notes[is_model])):
        track = pretty_midi.Instrument(program=0, name=name)
        for pitch, start, end, velocity in part:
            track.notes.append(pretty_midi.Note(int(velocity), int(pitch), float(start), float(end)))
        midi.instruments.append(track)
    with atomic_path(path) as tmp:
        midi.write(str(tmp))


def primer_label(ref: str | None) -> str:
    """How the page names a primer."""
    if not ref:
        return "none"
    return "the bundled example" if ref == EXAMPLE else ref
