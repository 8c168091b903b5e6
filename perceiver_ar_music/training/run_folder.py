"""A training run's folder as the loop sees it: resume, save, best, prune and metrics.

``checkpoints/<run>/`` holds ``run_config.json`` (written by the command), ``metrics.jsonl`` (one
JSON row per logged step or validation), ``ckpt-<step>/`` (the last ``keep_last``, resumable:
weights, optimizer, ``trainer_state.json`` with the `Progress` and every rank's RNG state),
``best/`` (the lowest validation loss) and ``tb/`` (TensorBoard, when it is installed). Only the
main process writes; every write is atomic (see ``model.checkpoint``).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.runtime.atomic import write_text_atomic
from perceiver_ar_music.runtime.errors import UserError

RUN_CONFIG_NAME = "run_config.json"
METRICS_NAME = "metrics.jsonl"


@dataclass
class Progress:
    """Where the run stands; saved as part of ``trainer_state.json``."""

    step: int = 0  # optimizer steps done
    samples_per_rank: int = 0  # training windows each rank has consumed
    tokens_seen: int = 0  # scored target tokens, all ranks
    best_val_nats: float | None = None
    elapsed_seconds: float = 0.0  # in training steps
    wall_seconds: float = 0.0  # in the loop, validation and saving included (for a time budget)
    evals_since_best: int = 0  # validations without a new best (for early stopping)


@dataclass
class ResumeState:
    """A checkpoint read and checked in full before anything of it is applied."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]
    progress: Progress
    world_size: int
    rng: list[dict[str, str | None]]


# ----------------------------------------------------------------------------- RNG states


def _encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state(device: torch.device) -> dict[str, str | None]:
    """This process's torch RNG states (CPU and its GPU), as base64 text."""
    cuda = _encode_rng(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
    return {"cpu": _encode_rng(torch.get_rng_state()), "cuda": cuda}


def set_rng_state(state: dict[str, str | None], device: torch.device) -> None:
    torch.set_rng_state(_decode_rng(state["cpu"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(_decode_rng(state["cuda"]), device)


# ----------------------------------------------------------------------------- reading


def read_trainer_state(checkpoint: Path) -> tuple[Progress, int, list[dict[str, str | None]]]:
    """(progress, world size, per-rank RNG states) of ``trainer_state.json``; UserError if corrupt."""
    path = checkpoint / ckpt.TRAINER_STATE_NAME
    state = ckpt.read_json(path)
    try:
        progress = Progress(**state["progress"])
        world_size = state["world_size"]
        rng = state["rng"]
        counters = (progress.step, progress.samples_per_rank, progress.tokens_seen, world_size)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters) or world_size < 1:
            raise ValueError("bad counters")
        if progress.best_val_nats is not None and not math.isfinite(progress.best_val_nats):
            raise ValueError("bad best_val_nats")
        cpu_size = torch.get_rng_state().numel()
        if not isinstance(rng, list) or any(_decode_rng(r["cpu"]).numel() != cpu_size for r in rng):
            raise ValueError("bad RNG state")
        for r in rng:
            if r.get("cuda") is not None:
                _decode_rng(r["cuda"])
    except (KeyError, TypeError, ValueError, AttributeError):  # binascii.Error is a ValueError
        raise UserError(f"{path} is corrupt") from None
    return progress, world_size, rng


def read_resume_state(newest: Path, model: PerceiverAR, params: list[torch.nn.Parameter],
                      is_main: bool = True) -> ResumeState:
    """Read `newest` in full, else the newest older checkpoint of its run that is valid (weights
    finite and fitting `model`, optimizer state fitting `params`, trainer state intact), saying
    which were skipped."""
    newest_step = ckpt.checkpoint_step(newest)
    older = [p for p in ckpt.resumable_checkpoints(newest.parent)
             if p != newest and newest_step is not None and (ckpt.checkpoint_step(p) or 0) < newest_step]
    skipped = []
    for path in [newest, *older]:
        try:
            weights = ckpt.read_weights(model, path)
            optimizer = ckpt.read_optimizer_state(path, params)
            progress, world_size, rng = read_trainer_state(path)
        except UserError as exc:
            skipped.append(f"{path.name}: {exc}")
            continue
        if skipped and is_main:
            print(f"warning: not resuming from {'; '.join(skipped)}; resuming from {path} instead", flush=True)
        return ResumeState(path, weights, optimizer, progress, world_size, rng)
    raise UserError(f"no checkpoint of {newest.parent} can be resumed ({'; '.join(skipped)}): start the run "
                    f"again without --resume")


# ----------------------------------------------------------------------------- writing


class RunFolder:
    """The files one run writes (main process only; on other ranks every method does nothing)."""

    def __init__(self, path: Path, is_main: bool, tokenizer_path: Path, tokenizer_hash: str) -> None:
        self.path, self.is_main = path, is_main
        self.tokenizer_path, self.tokenizer_hash = tokenizer_path, tokenizer_hash
        self.tensorboard: Any = None

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    def open(self, resumed_step: int | None) -> None:
        """Make the folder, finish or drop what a killed run left half-written, drop the metric
        rows logged after the checkpoint resumed from, and open TensorBoard if installed."""
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        ckpt.recover_run_dir(self.path)
        if resumed_step is not None:
            self._truncate_metrics(resumed_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        # purge_step hides events a killed run logged after the checkpoint it resumes from.
        self.tensorboard = SummaryWriter(str(self.path / "tb"), purge_step=(resumed_step or 0) + 1)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def log(self, row: dict[str, Any]) -> None:
        """Append a metrics row (it has a ``step``) and send its numbers to TensorBoard."""
        if not self.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, row["step"])

    def _truncate_metrics(self, step: int) -> None:
        path = self.metrics_path
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))

    def save(self, step: int, model: PerceiverAR, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
             trainer_state: dict[str, Any], keep_last: int) -> Path:
        """Write the resumable ``ckpt-<step>`` and prune to the last `keep_last`; its path."""
        path = self.path / f"ckpt-{step}"
        if self.is_main:
            ckpt.save_checkpoint(path, model, self.tokenizer_path, tokenizer_hash=self.tokenizer_hash, meta=meta,
                                 trainer_state=trainer_state, optimizer=optimizer)
            ckpt.prune_checkpoints(self.path, keep_last)
        return path

    def save_best(self, model: PerceiverAR, meta: dict[str, Any]) -> None:
        """Replace ``best/`` (weights only)."""
        if self.is_main:
            ckpt.save_checkpoint(self.path / ckpt.BEST_NAME, model, self.tokenizer_path,
                                 tokenizer_hash=self.tokenizer_hash, meta=meta)


@dataclass
class ResumePlan:
    """A run to resume, resolved: its folder, its config (with the overrides), data and checkpoint."""

    run_dir: Path
    config: Any  # presets.RunConfig
    data: Any  # token_store.PreparedData
    checkpoint: Path  # the newest resumable checkpoint
    mix_data: Any = None


def plan_resume(run_dir: Path, train_overrides: dict[str, Any] | None = None,
                augment_overrides: dict[str, Any] | None = None, prepared: str | Path | None = None,
                check: Any = None) -> ResumePlan:
    """Resolve resuming `run_dir`: its saved config with `train_overrides` / `augment_overrides`
    (as `presets.with_overrides`), its data (or `prepared`, a prepared folder of the same
    tokenizer) and mixed data opened, its newest resumable checkpoint. `check(config)` may refuse
    (UserError) before anything is written; a changed config is then saved. UserError (one line)
    for anything missing or corrupt."""
    from dataclasses import replace

    from perceiver_ar_music.data.token_store import PreparedData
    from perceiver_ar_music.runtime.atomic import write_json_atomic
    from perceiver_ar_music.training.presets import RunConfig, with_overrides

    saved = ckpt.read_json(run_dir / RUN_CONFIG_NAME) if (run_dir / RUN_CONFIG_NAME).is_file() else None
    if saved is None:
        raise UserError(f"{run_dir} is not a run folder (no {RUN_CONFIG_NAME})")
    checkpoint = ckpt.latest_resumable(run_dir)
    if checkpoint is None:
        raise UserError(f"{run_dir} has no resumable checkpoint yet: start it again without --resume "
                        f"(the same --name works)")
    try:
        config = RunConfig.from_dict(saved)
        tokenizer_hash, saved_prepared = config.data["tokenizer_hash"], config.data["prepared"]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{run_dir / RUN_CONFIG_NAME} is corrupt ({exc})") from None
    if check is not None:
        check(config)
    try:
        train_config = with_overrides(config.train, train_overrides or {}, augment_overrides or {})
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid configuration: {exc}") from None
    data = PreparedData.open(prepared or saved_prepared, expected_tokenizer_hash=tokenizer_hash)
    mixed = config.data.get("mix_prepared")
    mix_data = PreparedData.open(mixed, expected_tokenizer_hash=tokenizer_hash) if mixed else None
    if train_config != config.train:
        old = config.train.to_dict()
        changes = {k: v for k, v in train_config.to_dict().items() if old[k] != v}
        print(f"resuming with changed settings: {changes}", flush=True)
    updated = replace(config, train=train_config, data={**config.data, "prepared": str(data.root)})
    if updated != config:
        write_json_atomic(run_dir / RUN_CONFIG_NAME, {**saved, **updated.to_dict()})
    return ResumePlan(run_dir, updated, data, checkpoint, mix_data)
