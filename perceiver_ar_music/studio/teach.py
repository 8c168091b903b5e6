"""The studio's "Teach it your music": sets of the user's MIDI files, fine-tuning runs in the
studio's one-at-a-time queue, and the models they make.

Under the studio's output folder:

    lessons/SET/        the MIDI files of one set, under flat names the studio made
    prepared/SET/       that set prepared with the studio model's tokenizer
    models/MODEL/       the fine-tuning run: an ordinary run folder (`train --resume` works on it)
    models/MODEL.json   the studio's record of it: its name, state and what happened

A set takes MIDI files and zip archives (`data.midi_archive`: limits checked before the work);
each file is read once as `generate --primer` reads one before it is kept, so a file the model
cannot use is refused at once with its reason. A set is frozen once it is taught. When the studio
starts, a record left running or queued by a studio that stopped says so, and what is usable.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perceiver_ar_music.runtime.errors import UserError

DEFAULT_MODEL = "default"  # the studio's own model (serve --checkpoint)
MODEL_ID = re.compile(r"model-[0-9]{4,9}")
SET_ID = re.compile(r"set-[0-9a-f]{16}")
MAX_SET_FILES = 2000  # MIDI files in one set
MAX_SET_BYTES = 256 * 2**20  # all of them together
MAX_FILE_BYTES = 2 * 2**20  # one MIDI file (an hour of dense piano is about 0.5 MB)
MAX_ARCHIVE_BYTES = 64 * 2**20  # one upload (a zip)
MIN_MINUTES, MAX_MINUTES, DEFAULT_MINUTES = 0.05, 24 * 60.0, 10.0
MAX_NAME = 60
CURVE_POINTS = 200  # training-loss points sent to the page (validation points: all)
QUEUED, RUNNING, DONE, STOPPED, FAILED, INTERRUPTED, CANCELLED = (
    "queued", "running", "done", "stopped", "failed", "interrupted", "cancelled")
UNPACK_PREFIX = ".unpack-"


@dataclass
class TeachRequest:
    """A checked request to fine-tune the studio's model on one set."""

    model: str  # the new model's id (models/MODEL)
    set_id: str
    name: str  # what the user called it
    minutes: float  # this job's time budget
    budget: float = 0.0  # the model's whole budget (more than `minutes` when it trains on)
    train_on: bool = False  # go on training an existing model (from its newest checkpoint)


@dataclass
class TeachProgress:
    """Where a fine-tuning job stands (set from the training loop's thread)."""

    phase: str = "preparing the music"
    step: int = 0
    seconds: float = 0.0  # wall clock in training (what the budget counts)
    best_val_nats: float | None = None
    started: float = field(default_factory=time.monotonic)


class Teacher:
    """The sets, the fine-tuning jobs and the models of one studio folder."""

    def __init__(self, folder: Path, base: Path, device: Any, tokenizer: Any) -> None:
        self.folder = Path(folder)
        self.tokenizer = tokenizer  # the base model's: a file is kept only if it encodes
        self.base = Path(base)
        self.device = device
        self.lessons, self.prepared, self.models_dir = (self.folder / name for name in ("lessons", "prepared", "models"))
        for path in (self.lessons, self.prepared, self.models_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.queue = None  # the studio's JobQueue (set by the studio: cancelled jobs' records)
        self.reserved = 0
        self._remove_leftovers()
        self.restart_notes = self._mark_interrupted()

    # ----- sets of files -----
    def new_set(self) -> dict:
        """A new, empty set of files to teach."""
        set_id = f"set-{secrets.token_hex(8)}"
        (self.lessons / set_id).mkdir()
        return self.describe_set(set_id)

    def set_folder(self, set_id: Any) -> Path:
        if not isinstance(set_id, str) or not SET_ID.fullmatch(set_id) or not (self.lessons / set_id).is_dir():
            raise UserError(f"no such set of files: {str(set_id)[:40]!r}")
        return self.lessons / set_id

    def describe_set(self, set_id: str) -> dict:
        files = self._set_files(self.set_folder(set_id))
        return {"set": set_id, "files": [path.name for path in files],
                "bytes": sum(path.stat().st_size for path in files)}

    def add(self, set_id: str, data: bytes, filename: str) -> dict:
        """Add an uploaded MIDI file or zip archive to a set: what was added, and what was skipped
        (name and reason). A UserError (nothing kept) for a file or archive refused as a whole."""
        from perceiver_ar_music.data.midi_archive import is_zip, unpack_midi
        from perceiver_ar_music.runtime.atomic import os_error_text

        folder = self.set_folder(set_id)
        label = "".join(c if c.isprintable() else "?" for c in Path(filename or "upload").name)[:80]
        if self._set_taught(set_id):
            raise UserError("this set is being taught or was taught already: start a new set")
        if not data:
            raise UserError(f"{label}: the file is empty")
        with self.lock:
            files = self._set_files(folder)
            room_files = MAX_SET_FILES - len(files)
            room_bytes = MAX_SET_BYTES - sum(path.stat().st_size for path in files)
            taken = {path.name.lower() for path in files}
            try:
                with tempfile.TemporaryDirectory(prefix=UNPACK_PREFIX, dir=folder) as tmp:
                    unpacked, skipped = [], []
                    if is_zip(data):
                        if len(data) > MAX_ARCHIVE_BYTES:
                            raise UserError(f"{label}: the archive is too large ({len(data) / 2**20:.1f} MB; the limit "
                                            f"is {MAX_ARCHIVE_BYTES / 2**20:g} MB)")
                        try:
                            out = unpack_midi(io.BytesIO(data), Path(tmp), taken=set(taken), max_member_bytes=MAX_FILE_BYTES,
                                              max_total_bytes=max(0, room_bytes))
                        except UserError as exc:
                            raise UserError(f"{label}: {exc}") from None
                        unpacked, skipped = out.files, [list(item) for item in out.skipped]
                    elif data.startswith(b"MThd"):
                        if len(data) > MAX_FILE_BYTES:
                            raise UserError(f"{label}: too large ({len(data) / 2**20:.1f} MB; the limit is "
                                            f"{MAX_FILE_BYTES / 2**20:g} MB)")
                        from perceiver_ar_music.data.midi_archive import flat_name

                        path = Path(tmp) / flat_name(label, set(taken))
                        path.write_bytes(data)
                        unpacked = [path]
                    else:
                        raise UserError(f"{label}: neither a MIDI file nor a zip archive")
                    usable = []
                    for path in unpacked:
                        reason = self._unusable(path)
                        if reason is None:
                            usable.append(path)
                        else:
                            skipped.append([path.name, reason])
                    if not usable:
                        why = f" ({skipped[0][0]}: {skipped[0][1]})" if len(skipped) == 1 else ""
                        raise UserError(f"{label}: no usable MIDI file in it{why}")
                    if len(usable) > room_files:
                        raise UserError(f"{label}: a set holds at most {MAX_SET_FILES} files ({len(files)} already)")
                    if sum(path.stat().st_size for path in usable) > room_bytes:
                        raise UserError(f"{label}: a set holds at most {MAX_SET_BYTES / 2**20:g} MB of MIDI")
                    for path in usable:
                        os.replace(path, folder / path.name)
            except OSError as exc:  # e.g. the disk is full: what was unpacked goes with the temporary folder
                raise UserError(f"{label}: cannot keep it: {os_error_text(exc)}") from None
        return {**self.describe_set(set_id), "added": [path.name for path in usable], "skipped": skipped}

    # ----- fine-tuning -----
    def request(self, form: dict, job_id_of=None) -> TeachRequest:
        """Check a request from the page ({"set", "minutes", "name"}) and record the new model as
        queued; a UserError for anything wrong."""
        unknown = sorted(set(form) - {"set", "minutes", "name"})
        if unknown:
            raise UserError(f"unknown field: {unknown[0]!r}")
        folder = self.set_folder(form.get("set"))
        if not self._set_files(folder):
            raise UserError("the set has no MIDI files yet: add some first")
        if self._set_taught(folder.name):
            raise UserError("this set is being taught or was taught already: start a new set")
        minutes = _minutes(form)
        name = form.get("name") or ""
        if not isinstance(name, str):
            raise UserError("name: expected text")
        name = " ".join("".join(c if c.isprintable() else " " for c in name).split())[:MAX_NAME]
        with self.lock:
            model = self._reserve()
            name = name or f"taught on {len(self._set_files(folder))} file(s)"
            self._write(model, {"id": model, "name": name, "state": QUEUED, "set": folder.name,
                                "files": len(self._set_files(folder)), "minutes": float(minutes),
                                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "base": str(self.base)})
        return TeachRequest(model, folder.name, name, minutes, minutes)

    def request_train_on(self, form: dict) -> TeachRequest:
        """Check a request to go on training a model ({"model", "minutes"}) and record it as
        queued; a UserError for a model that cannot go on."""
        unknown = sorted(set(form) - {"model", "minutes"})
        if unknown:
            raise UserError(f"unknown field: {unknown[0]!r}")
        model = form.get("model")
        if not isinstance(model, str) or not MODEL_ID.fullmatch(model) or self._read(model) is None:
            raise UserError(f"no such model: {str(model)[:40]!r}")
        minutes = _minutes(form)
        with self.lock:
            record = self._read(model)
            why = self._cannot_train_on(record)
            if why:
                raise UserError(f"{record['name']!r} cannot train on: {why}")
            budget = float(record.get("minutes") or 0) + minutes
            was = {key: record.get(key) for key in ("state", "note", "ended_by")}
            self._write(model, {**record, "state": QUEUED, "note": None, "ended_by": None, "was": was})
        return TeachRequest(model, record["set"], record["name"], minutes, budget, train_on=True)

    def record_job(self, model: str, job_id: str) -> None:
        self._update(model, job=job_id)

    def run(self, job) -> str:
        """The queue's work for a TeachRequest: fine-tune, keeping the record up to date."""
        from perceiver_ar_music.runtime import threads
        from perceiver_ar_music.runtime.atomic import os_error_text
        from perceiver_ar_music.training.finetune import finetune, train_on
        from perceiver_ar_music.training.train import StopRequest

        threads.refresh()
        request: TeachRequest = job.request
        progress = job.progress = TeachProgress()
        stop = StopRequest()
        self._update(request.model, state=RUNNING, started=time.strftime("%Y-%m-%d %H:%M:%S"))

        def on_step(step: int, run_progress) -> None:
            progress.phase, progress.step = "training", step
            progress.seconds = run_progress.wall_seconds or (time.monotonic() - progress.started)
            progress.best_val_nats = run_progress.best_val_nats
            if job.stop_requested:
                stop.set()

        if job.stop_requested:
            self.cancel(request.model, "stopped before it started")
            return request.model
        try:
            if request.train_on:
                result = train_on(self.models_dir / request.model, minutes=request.minutes, device=str(self.device),
                                  on_step=on_step, stop=stop)
            else:
                result = finetune(self.lessons / request.set_id, init_from=self.base, out=self.models_dir,
                                  name=request.model, minutes=request.minutes, device=str(self.device), on_step=on_step,
                                  stop=stop, prepared_cache=self.prepared / request.set_id, progress=False)
        except UserError as exc:
            self._finish(request.model, FAILED, error=str(exc))
            raise
        except OSError as exc:  # a full disk: one line; the run folder keeps its last complete checkpoint
            message = f"cannot write: {os_error_text(exc)}"
            self._finish(request.model, FAILED, error=message)
            raise UserError(message) from None
        except Exception as exc:
            self._finish(request.model, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
            raise
        state = STOPPED if result.ended_by == "signal" else DONE
        progress.phase = "done"
        self._finish(request.model, state, step=result.step, ended_by=_ENDINGS.get(result.ended_by, result.ended_by),
                     best_val_nats=result.best_val_nats, minutes=request.budget, was=None)
        return request.model

    def status(self, job) -> dict:
        """What the page shows of a fine-tuning job (and its model's curve so far)."""
        request: TeachRequest = job.request
        progress = job.progress if isinstance(job.progress, TeachProgress) else None
        seconds = progress.seconds if progress else 0.0
        budget = request.budget * 60
        return {"job": job.id, "kind": "teach", "state": job.state, "error": job.error,
                "position": self.queue.position(job) if self.queue is not None else 0,
                "model": request.model, "name": request.name, "minutes": request.budget,
                "phase": progress.phase if progress else "waiting", "step": progress.step if progress else 0,
                "seconds": round(seconds, 1), "fraction": round(min(1.0, seconds / budget), 4) if budget else 0.0,
                "best_val_nats": progress.best_val_nats if progress else None, "stopping": job.stop_requested,
                "curve": self.curve(request.model)}

    # ----- models -----
    def models(self) -> list[dict]:
        """The studio's own model first, then every model taught here, oldest first."""
        from perceiver_ar_music.model import checkpoint as ckpt

        own = {"id": DEFAULT_MODEL, "name": f"the studio's model ({self.base.name})", "state": DONE, "usable": True,
               "checkpoint": str(self.base)}
        found = [own]
        for path in sorted(self.models_dir.glob("model-*.json")):
            record = self._read(path.stem)
            if record is None:
                continue
            record = self._settle(record)
            try:
                record["checkpoint"] = str(ckpt.find_checkpoint(self.models_dir / record["id"]))
                record["usable"] = True
            except UserError:
                record["checkpoint"], record["usable"] = None, False
            record["can_train_on"] = not self._cannot_train_on(record)
            record["curve"] = self.curve(record["id"])
            found.append(record)
        return found

    def checkpoint(self, model: Any) -> Path:
        """The checkpoint folder of a model id (the page's choice); a UserError if it cannot be used."""
        from perceiver_ar_music.model import checkpoint as ckpt

        if model in (None, "", DEFAULT_MODEL):
            return self.base
        if not isinstance(model, str) or not MODEL_ID.fullmatch(model) or self._read(model) is None:
            raise UserError(f"no such model: {str(model)[:40]!r}")
        record = self._read(model)
        try:
            return ckpt.find_checkpoint(self.models_dir / model)
        except UserError:
            raise UserError(f"model {record['name']!r} has no saved checkpoint yet ({record['state']})") from None

    def name_of(self, model: str | None) -> str:
        if model in (None, "", DEFAULT_MODEL):
            return f"the studio's model ({self.base.name})"
        record = self._read(model)
        return record["name"] if record else model

    def curve(self, model: str) -> dict:
        """The run's validation losses (every one, step 0 = before fine-tuning) and its training
        loss (thinned to `CURVE_POINTS`), from its metrics.jsonl."""
        val, loss = [], []
        path = self.models_dir / model / "metrics.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line being written
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                continue
            if isinstance(row.get("val_nats"), (int, float)):
                val.append([row["step"], round(row["val_nats"], 4)])
            elif isinstance(row.get("loss"), (int, float)):
                loss.append([row["step"], round(row["loss"], 4)])
        if len(loss) > CURVE_POINTS:
            every = math.ceil(len(loss) / CURVE_POINTS)
            loss = loss[::every] + ([loss[-1]] if (len(loss) - 1) % every else [])
        return {"val": val, "loss": loss}

    # ----- records -----
    def _record_path(self, model: str) -> Path:
        return self.models_dir / f"{model}.json"

    def _read(self, model: str) -> dict | None:
        try:
            record = json.loads(self._record_path(model).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("id") == model else None

    def _write(self, model: str, record: dict) -> None:
        from perceiver_ar_music.runtime.atomic import write_json_atomic

        write_json_atomic(self._record_path(model), record)

    def _update(self, model: str, **fields: Any) -> dict:
        with self.lock:
            record = {**(self._read(model) or {"id": model}), **fields}
            try:
                self._write(model, record)
            except OSError:
                pass  # a full disk: the record stays as it was; the job's status says what happened
            return record

    def cancel(self, model: str, note: str) -> None:
        """A request that never ran (refused by the queue, or stopped while it waited): a new
        model is cancelled; one that was to train on is as it was before, with the note."""
        record = self._read(model) or {}
        was = record.get("was")
        if was:
            self._update(model, **{**was, "note": f"{note} (it was to train on)"}, was=None)
        else:
            self._finish(model, CANCELLED, note=note)

    def _cannot_train_on(self, record: dict) -> str | None:
        """Why a model cannot go on training (None: it can)."""
        from perceiver_ar_music.model import checkpoint as ckpt

        if record.get("state") not in (DONE, STOPPED, INTERRUPTED):
            return f"it is {record.get('state')}"
        if str(record.get("ended_by", "")).startswith("early stopping"):
            return "early stopping ended it: its validation loss had stopped improving"
        if ckpt.latest_resumable(self.models_dir / record["id"]) is None:
            return "it has no checkpoint to go on from"
        return None

    def _finish(self, model: str, state: str, **fields: Any) -> None:
        self._update(model, state=state, ended=time.strftime("%Y-%m-%d %H:%M:%S"), **fields)

    def _settle(self, record: dict) -> dict:
        """A queued record whose job was cancelled (dropped from the queue) says so."""
        if record.get("state") == QUEUED and self.queue is not None:
            job = self.queue.get(record.get("job", ""))
            if job is not None and job.state == CANCELLED:
                self.cancel(record["id"], "stopped before it started")
                record = self._read(record["id"]) or record
        return record

    def _reserve(self) -> str:
        used = [int(path.stem.split("-")[1]) for path in self.models_dir.iterdir() if MODEL_ID.fullmatch(path.stem)]
        self.reserved = max([self.reserved, *used]) + 1
        return f"model-{self.reserved:04d}"

    def _unusable(self, path: Path) -> str | None:
        """Why a MIDI file cannot be taught (one line), or None: it is encoded as preparing will."""
        from perceiver_ar_music.data.tokenizer import MidiReadError

        try:
            self.tokenizer.encode_file(path)
        except MidiReadError as exc:
            return str(exc).replace(str(path), path.name)
        return None

    def _set_files(self, folder: Path) -> list[Path]:
        return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))

    def _set_taught(self, set_id: str) -> bool:
        for path in self.models_dir.glob("model-*.json"):
            record = self._read(path.stem)
            if record and record.get("set") == set_id and record.get("state") not in (FAILED, CANCELLED):
                return True
        return False

    def _remove_leftovers(self) -> None:
        """The temporary unpacking folders of a studio that was killed (never a user's file)."""
        for path in self.lessons.glob(f"set-*/{UNPACK_PREFIX}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

    def _mark_interrupted(self) -> list[str]:
        """Records a stopped studio left queued or running: say what happened and what is kept."""
        from perceiver_ar_music.model import checkpoint as ckpt

        notes = []
        for path in sorted(self.models_dir.glob("model-*.json")):
            record = self._read(path.stem)
            if record is None or record.get("state") not in (QUEUED, RUNNING):
                continue
            run = self.models_dir / record["id"]
            if record["state"] == QUEUED:
                note = "the studio stopped before this model's turn came: nothing was trained"
                self.cancel(record["id"], note)
            else:
                try:
                    found = ckpt.find_checkpoint(run)
                    meta = ckpt.read_json(found / ckpt.META_NAME)
                    kept = (f"its checkpoint of step {meta.get('step')} is kept and makes takes; Train on (or "
                            f"perceiver-music train --resume {run}) goes on from it")
                except UserError:
                    kept = "it had saved no checkpoint yet, so nothing is usable"
                note = f"the studio stopped while it was training: {kept}"
                self._finish(record["id"], INTERRUPTED, note=note, ended_by=None, was=None)
            notes.append(f"{record['id']} ({record.get('name')}): {note}")
        return notes


def _minutes(form: dict) -> float:
    """A request's time budget in minutes (a number or its text), checked."""
    minutes = form.get("minutes", DEFAULT_MINUTES)
    if isinstance(minutes, str) and minutes.strip():
        try:
            minutes = float(minutes)
        except ValueError:
            raise UserError(f"minutes: expected a number, got {minutes[:20]!r}") from None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) \
            or not MIN_MINUTES <= minutes <= MAX_MINUTES:
        raise UserError(f"minutes: expected a number from {MIN_MINUTES:g} to {MAX_MINUTES:g}, got {str(minutes)[:20]}")
    return float(minutes)


_ENDINGS = {"time": "the time budget", "early stopping": "early stopping (no better validation loss for a while)",
            "signal": "stop", "steps": "its step budget"}


