"""The training loop: AdamW with warmup + cosine decay, gradient accumulation and clipping, bf16
autocast where it is fast (``--precision``, see ``devices``), optional torch.compile and
DistributedDataParallel, validation, checkpoints.

Never lose work:
- a checkpoint (``ckpt-<step>/``, with optimizer and RNG states) every ``save_every`` steps, at the
  end, and when SIGINT/SIGTERM asks the run to stop (after the current step); ``best/`` follows
  the validation loss. All writes are atomic (see ``checkpoint``).
- resuming restores weights, optimizer, step, sample position and RNG states, so on CPU a resumed
  run computes the same losses as an uninterrupted one;
- a NaN/inf loss or gradient norm stops the run before anything is saved, and weights are checked
  to be finite before every save, so every checkpoint is a good one; resuming falls back to the
  newest checkpoint that is valid in full (and says so) when a newer one is corrupt.

With DDP (``torchrun``) every rank reads its own windows (``WindowSampler(rank, world_size)``)
and only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.runtime import distributed
from perceiver_ar_music.runtime.atomic import write_text_atomic
from perceiver_ar_music.training.augment import AugmentConfig
from perceiver_ar_music.runtime.devices import allow_tf32, autocast, describe_precision
from perceiver_ar_music.runtime.distributed import DistInfo
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.training.evaluate import score_windows
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig, lm_loss
from perceiver_ar_music.sampling.note_limits import note_limits
from perceiver_ar_music.training.presets import RunConfig, TrainConfig
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.training.windows import EvalWindows, TrainWindows, WindowSampler

RUN_CONFIG_NAME = "run_config.json"
METRICS_NAME = "metrics.jsonl"


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""

    exit_code = 1


# ----------------------------------------------------------------------------- data


def _ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole terminal process group) to the main
    process, which stops cleanly. SIGTERM keeps its default: it is how workers are shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def augment_config(tc: TrainConfig) -> AugmentConfig | None:
    """The training windows' augmentation ranges from the run's settings (None: augmentation off)."""
    if not tc.augment:
        return None
    return AugmentConfig(max_transpose=tc.max_transpose, min_stretch=1.0 - tc.stretch, max_stretch=1.0 + tc.stretch,
                         stretch_windows=tc.stretch_windows, velocity_windows=tc.velocity_windows,
                         max_velocity_shift=tc.velocity_shift, velocity_noise=tc.velocity_noise,
                         perform_windows=tc.perform_windows, onset_jitter=tc.onset_jitter, tempo_drift=tc.tempo_drift,
                         velocity_arc=tc.velocity_arc, pedal_hold=tc.pedal_hold)


def train_loader(data: PreparedData, cfg: PerceiverARConfig, tc: TrainConfig, info: DistInfo,
                 start: int, workers: int, device: torch.device) -> DataLoader:
    """Endless augmented training windows for this rank, from sample position `start` on."""
    dataset = TrainWindows(data.pieces("train"), data.vocab, cfg.max_seq_len, augment=augment_config(tc), seed=tc.seed)
    return DataLoader(
        dataset,
        batch_size=tc.batch_size,
        sampler=WindowSampler(start=start, rank=info.rank, world_size=info.world_size),
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_interrupts if workers else None,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(tc.seed),  # keeps the global RNG untouched
    )


@dataclass
class ValidationSet:
    """The validation windows scored at each evaluation (a fixed, evenly spread subset)."""

    windows: EvalWindows
    indices: np.ndarray

    @classmethod
    def build(cls, data: PreparedData, cfg: PerceiverARConfig, max_windows: int) -> "ValidationSet | None":
        if "validation" not in data.manifest["splits"]:
            return None
        windows = EvalWindows(data.pieces("validation"), data.vocab, cfg.max_seq_len, cfg.num_latents)
        indices = np.arange(len(windows))
        if 0 < max_windows < len(windows):
            indices = np.unique(np.linspace(0, len(windows) - 1, max_windows).round().astype(np.int64))
        return cls(windows, indices)

    def describe(self) -> str:
        return f"{len(self.indices)} of {len(self.windows)} validation windows"


# ----------------------------------------------------------------------------- optimization


def _decay_split(model: PerceiverAR) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(matrices, the rest): the optimizer's two parameter groups, in its order."""
    return [p for p in model.parameters() if p.dim() >= 2], [p for p in model.parameters() if p.dim() < 2]


def make_optimizer(model: PerceiverAR, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights), none on norms; the fused
    kernel on CUDA and CPU (one pass per tensor: on the bundled model's shape 7 ms a step on 2 CPU
    threads, against 36 ms for the default one-op-at-a-time loop; same updates to rounding)."""
    decay, no_decay = _decay_split(model)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=device.type in ("cuda", "cpu"))


def lr_at(step: int, tc: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to the minimum."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    min_lr = tc.lr * tc.min_lr_ratio
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - min_lr)


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], pad_id: int, z_loss: float,
                 device: torch.device, precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss to optimise, NLL nats/token, scored targets) of one micro-batch of windows; the
    forward under `devices.autocast(device, precision)`, the loss in fp32."""
    tokens, target_mask = batch["tokens"], batch["target_mask"]
    inputs = tokens[:, :-1]
    padding_mask = (inputs != pad_id) if bool((inputs == pad_id).any()) else None
    tokens = tokens.to(device, non_blocking=True)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with autocast(device, precision):
        logits = model(inputs, None if padding_mask is None else padding_mask.to(device, non_blocking=True))
    n = logits.shape[1]  # the latents: the last n targets are scored
    loss, nats = lm_loss(logits, targets[:, -n:], target_mask[:, -n:].to(device, non_blocking=True), z_loss)
    return loss, nats, int(target_mask[:, -n:].sum())


@dataclass
class StepStats:
    nats: torch.Tensor  # mean NLL over the micro-batches (on the device, not synchronised)
    targets: int  # scored targets of this process
    grad_norm: torch.Tensor | None


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Iterable[dict[str, torch.Tensor]],
                   tc: TrainConfig, lr: float, pad_id: int, device: torch.device) -> StepStats:
    """One optimizer step over `tc.grad_accum` micro-batches (DDP syncs gradients on the last)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    nats_sum = torch.zeros((), device=device)
    targets = 0
    for index, batch in enumerate(micro_batches):
        last = index == tc.grad_accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss, nats, count = forward_loss(model, batch, pad_id, tc.z_loss, device, tc.precision)
            (loss / tc.grad_accum).backward()
        nats_sum += nats
        targets += count
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(nats_sum / tc.grad_accum, targets, grad_norm)


# ----------------------------------------------------------------------------- stopping


class StopRequest:
    """Asks the loop to save and exit after the current step (set by SIGINT/SIGTERM or a caller)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, second_interrupt_aborts: bool = True) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM set `stop`. Then a second SIGINT (Ctrl-C again) aborts as usual
    if `second_interrupt_aborts`; under torchrun it does not, because torchrun forwards the
    terminal's Ctrl-C to its workers once more (and kills them itself if asked again)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        if not stop.requested:
            stop.set(signum)
            if second_interrupt_aborts:
                signal.signal(signal.SIGINT, previous[signal.SIGINT])

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- state


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


@dataclass
class Progress:
    """Where the run stands; saved as part of ``trainer_state.json``."""

    step: int = 0  # optimizer steps done
    samples_per_rank: int = 0  # training windows each rank has consumed
    tokens_seen: int = 0  # scored target tokens, all ranks
    best_val_nats: float | None = None
    elapsed_seconds: float = 0.0


@dataclass
class ResumeState:
    """A checkpoint read and checked in full before anything of it is applied."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]
    progress: Progress
    world_size: int
    rng: list[dict[str, str | None]]


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


@dataclass
class TrainRun:
    """Everything one training run needs, resolved once by the command line: its config, its
    data (opened), its device (picked). With DDP the caller has joined the process group."""

    run_dir: Path
    config: RunConfig  # saved in checkpoints as is
    data: PreparedData
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    compile: bool = False
    workers: int = 0
    resume_from: Path | None = None  # a resumable checkpoint folder
    progress: bool = True


@dataclass
class TrainResult:
    model: PerceiverAR  # the trained module (unwrapped), on its device
    step: int
    stopped_by_signal: int | None
    last_checkpoint: Path | None
    best_val_nats: float | None


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """One process's share of a training run. `run()` is the loop; the rest are its steps."""

    def __init__(self, run: TrainRun, info: DistInfo, stop: StopRequest) -> None:
        self.run_spec, self.info, self.stop = run, info, stop
        if info.enabled and not torch.distributed.is_initialized():
            raise RuntimeError("join the process group first (distributed.init_process_group)")
        self.cfg, self.tc = run.config.model, run.config.train
        self.device = run.device
        allow_tf32(self.device)
        self.precision_text = describe_precision(self.device, self.tc.precision)  # a bad choice fails here
        self.data = run.data
        if self.cfg.num_tokens != len(self.data.vocab):
            raise UserError(f"the model has {self.cfg.num_tokens} token ids but the data's vocabulary has "
                            f"{len(self.data.vocab)}")
        if "train" not in self.data.manifest["splits"]:
            raise UserError(f"{self.data.root} has no training pieces")
        self.tokenizer_path = self.data.tokenizer_path
        self.pad_id = self.data.vocab.pad_id
        # the sampler's note guards take their limits from the training data (rank 0 writes them)
        self.note_limits = note_limits(self.data.pieces("train"), self.data.vocab) if info.is_main else None

        torch.manual_seed(self.tc.seed)
        self.model = PerceiverAR(self.cfg)
        self.progress = Progress()
        resume = self._read_resume_state(run.resume_from) if run.resume_from is not None else None
        if resume is not None:
            self.model.load_state_dict(resume.weights)
        self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, self.tc, self.device)
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(self.tc.seed + 1 + info.rank)  # dropout streams differ per rank
        self.resumed_from: Path | None = resume.path if resume is not None else None
        self.last_checkpoint: Path | None = self.resumed_from
        self.saved_step = self.progress.step if resume is not None else -1

        self.step_model: torch.nn.Module = torch.compile(self.model) if run.compile else self.model
        self.eval_model = self.step_model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.step_model, device_ids=device_ids)
        self.validation = ValidationSet.build(self.data, self.cfg, self.tc.eval_windows)
        self.tensorboard: Any = None  # opened by run() when tensorboard is installed
        self.rate_window = (time.perf_counter(), 0)  # (start, scored targets since) for tokens/s

    # -- resume

    def _read_resume_state(self, newest: Path) -> ResumeState:
        """Read `newest` in full, else the newest older checkpoint of its run that is valid (weights
        finite and fitting, optimizer and trainer state intact), saying which were skipped."""
        newest_step = ckpt.checkpoint_step(newest)
        older = [p for p in ckpt.resumable_checkpoints(newest.parent)
                 if p != newest and newest_step is not None and (ckpt.checkpoint_step(p) or 0) < newest_step]
        params = [p for group in _decay_split(self.model) for p in group]
        skipped = []
        for path in [newest, *older]:
            try:
                weights = ckpt.read_weights(self.model, path)
                optimizer = ckpt.read_optimizer_state(path, params)
                progress, world_size, rng = read_trainer_state(path)
            except UserError as exc:
                skipped.append(f"{path.name}: {exc}")
                continue
            if skipped and self.info.is_main:
                print(f"warning: not resuming from {'; '.join(skipped)}; resuming from {path} instead", flush=True)
            return ResumeState(path, weights, optimizer, progress, world_size, rng)
        raise UserError(f"no checkpoint of {newest.parent} can be resumed ({'; '.join(skipped)}): start the run "
                        f"again without --resume")

    def _restore(self, resume: ResumeState) -> None:
        ckpt.load_optimizer_state(self.optimizer, resume.path, resume.optimizer)
        self.progress = resume.progress
        saved_world, rng_states = resume.world_size, resume.rng
        if saved_world != self.info.world_size:  # keep the global sample position, re-split
            consumed = self.progress.samples_per_rank * saved_world
            self.progress.samples_per_rank = -(-consumed // self.info.world_size)
        if self.info.rank < len(rng_states) and saved_world == self.info.world_size:
            set_rng_state(rng_states[self.info.rank], self.device)
        else:
            torch.manual_seed(self.tc.seed + 1 + self.info.rank + self.progress.step)

    # -- logging

    def _metrics_path(self) -> Path:
        return self.run_spec.run_dir / METRICS_NAME

    def _log(self, row: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        with open(self._metrics_path(), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, row["step"])

    def _open_tensorboard(self) -> Any:
        """A TensorBoard writer for ``tb/`` if tensorboard is installed (rank 0), else None."""
        if not self.info.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        # purge_step hides events a killed run logged after the checkpoint it resumes from.
        return SummaryWriter(str(self.run_spec.run_dir / "tb"), purge_step=self.progress.step + 1)

    def _truncate_metrics(self) -> None:
        """Drop metric rows past the resumed step (written after the last checkpoint)."""
        path = self._metrics_path()
        if not self.info.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= self.progress.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by a kill
        write_text_atomic(path, "".join(f"{line}\n" for line in kept))

    # -- evaluation and saving

    def validate(self) -> float | None:
        """Validation NLL in nats/token over the validation subset (all ranks share the work)."""
        if self.validation is None:
            return None
        self.eval_model.eval()
        mine = self.validation.indices[self.info.rank :: self.info.world_size]
        nats, count = score_windows(self.eval_model, self.validation.windows, mine, self.tc.batch_size,
                                    self.device, self.pad_id, self.tc.precision)
        self.eval_model.train()
        totals = distributed.all_reduce_sum(torch.tensor([nats, float(count)], dtype=torch.float64, device=self.device))
        nats, count = totals.tolist()
        return nats / count if count else None

    def _meta(self, val_nats: float | None) -> dict[str, Any]:
        """meta.json fields; `val_nats` is the validation loss at this step (None if not validated)."""
        return {
            "run_name": self.run_spec.config.run_name,
            "step": self.progress.step,
            "val_nats": val_nats,
            "val_bits": None if val_nats is None else val_nats / math.log(2),
            "best_val_nats": self.progress.best_val_nats,
            "tokens_seen": self.progress.tokens_seen,
            "note_limits": self.note_limits,
        }

    @torch.no_grad()
    def _check_healthy(self) -> None:
        """Refuse to save weights that hold NaN/inf or give non-finite logits on a training window.

        The step's loss was computed before its update, so only this check sees an update that
        blew the weights up. The forward runs in eval mode (no dropout: the RNG stream is
        untouched, resuming stays exact). Every rank checks its identical copy.
        """
        bad = ckpt.first_non_finite(dict(self.model.named_parameters()))
        if bad is None:
            window = torch.as_tensor(self.data.pieces("train")[0][: self.cfg.max_seq_len].astype(np.int64))
            was_training = self.model.training
            self.model.eval()
            try:
                with autocast(self.device, self.tc.precision):
                    logits = self.model(window[None].to(self.device))
            finally:
                self.model.train(was_training)
            bad = None if bool(torch.isfinite(logits).all()) else "the logits of a training window"
        if bad is not None:
            raise TrainingDiverged(
                f"the weights became non-finite (NaN or inf in {bad}) at step {self.progress.step}: stopped "
                f"without saving; {self._last_good()} (try a lower --lr or a longer --warmup)")

    def save(self, val_nats: float | None) -> None:
        """A resumable ``ckpt-<step>`` (rank 0 writes; every rank hands over its RNG state)."""
        self._check_healthy()
        rng = distributed.gather_objects(rng_state(self.device))
        self.saved_step = self.progress.step
        if not self.info.is_main:
            return
        trainer_state = {
            "progress": vars(self.progress),
            "world_size": self.info.world_size,
            "rng": rng,
            "run_config": self.run_spec.config.to_dict(),
        }
        path = self.run_spec.run_dir / f"ckpt-{self.progress.step}"
        ckpt.save_checkpoint(path, self.model, self.tokenizer_path, tokenizer_hash=self.data.tokenizer_hash,
                             meta=self._meta(val_nats), trainer_state=trainer_state, optimizer=self.optimizer)
        self.last_checkpoint = path
        ckpt.prune_checkpoints(self.run_spec.run_dir, self.tc.keep_last)

    def save_best(self, val_nats: float) -> None:
        self._check_healthy()
        if self.info.is_main:
            ckpt.save_checkpoint(self.run_spec.run_dir / ckpt.BEST_NAME, self.model, self.tokenizer_path,
                                 tokenizer_hash=self.data.tokenizer_hash, meta=self._meta(val_nats))

    # -- the loop

    def run(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        tc, info = self.tc, self.info
        if info.is_main:
            self.run_spec.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.recover_run_dir(self.run_spec.run_dir)
            if self.run_spec.resume_from is not None:
                self._truncate_metrics()
        self._announce()
        self.tensorboard = self._open_tensorboard()
        batches = iter(train_loader(self.data, self.cfg, tc, info, self.progress.samples_per_rank,
                                    self.run_spec.workers, self.device))
        bar = self._progress_bar()
        self.step_model.train()
        self.rate_window = (time.perf_counter(), 0)
        try:
            with stop_on_signals(self.stop, second_interrupt_aborts=not info.enabled):
                while self.progress.step < tc.max_steps:
                    started = time.perf_counter()
                    lr = lr_at(self.progress.step, tc)
                    micro = (next(batches) for _ in range(tc.grad_accum))
                    stats = optimizer_step(self.step_model, self.optimizer, micro, tc, lr, self.pad_id, self.device)
                    loss, targets, grad_norm = self._reduce(stats)
                    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                        what = f"loss became {loss}" if not math.isfinite(loss) else f"gradient norm became {grad_norm}"
                        raise TrainingDiverged(
                            f"the {what} at step {self.progress.step + 1}: stopped without saving; "
                            f"{self._last_good()} (try a lower --lr or a longer --warmup)")
                    self.progress.step += 1
                    self.progress.samples_per_rank += tc.batch_size * tc.grad_accum
                    self.progress.tokens_seen += targets
                    self.progress.elapsed_seconds += time.perf_counter() - started
                    step = self.progress.step
                    self._log_step(bar, loss, lr, targets, stats)
                    val_nats = None
                    if step % tc.eval_every == 0 or step == tc.max_steps:
                        val_nats = self._evaluate_and_keep_best(bar)
                    if step % tc.save_every == 0 or step == tc.max_steps:
                        self.save(val_nats)
                    if on_step is not None:
                        on_step(step)
                    if distributed.any_process(self.stop.requested, self.device):
                        if self.saved_step != step:
                            self.save(val_nats)
                        break
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"CUDA out of memory (batch size {tc.batch_size}, context {self.cfg.max_seq_len}): use a smaller "
                f"--batch-size (and a larger --grad-accum to keep the effective batch) or --max-seq-len") from None
        finally:
            del batches  # shuts the DataLoader workers down now, even while an exception propagates
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        return TrainResult(self.model, self.progress.step, self.stop.signum, self.last_checkpoint,
                           self.progress.best_val_nats)

    def _reduce(self, stats: StepStats) -> tuple[float, int, float]:
        """(mean loss over processes, scored targets of all processes, gradient norm or 0 without
        clipping; NaN/inf if any process had one) of the step just taken, in one sync."""
        grad_norm = stats.grad_norm.double() if stats.grad_norm is not None else torch.zeros((), device=self.device).double()
        summary = torch.stack([stats.nats.double(), torch.tensor(float(stats.targets), device=self.device).double(),
                               grad_norm.to(self.device)])
        nats_sum, targets, grad_norm_sum = distributed.all_reduce_sum(summary).tolist()
        return nats_sum / self.info.world_size, int(targets), grad_norm_sum / self.info.world_size

    def _log_step(self, bar: Any, loss: float, lr: float, targets: int, stats: StepStats) -> None:
        """Advance the bar; every `log_every` steps, a metrics row and the bar's numbers."""
        step = self.progress.step
        window_start, window_tokens = self.rate_window
        window_tokens += targets
        if step % self.tc.log_every == 0 or step == self.tc.max_steps:
            now = time.perf_counter()
            rate = window_tokens / max(now - window_start, 1e-9)
            window_start, window_tokens = now, 0
            grad_norm = None if stats.grad_norm is None else float(stats.grad_norm)
            self._log({"step": step, "loss": loss, "bits": loss / math.log(2), "lr": lr, "grad_norm": grad_norm,
                       "tokens": self.progress.tokens_seen, "target_tokens_per_s": rate,
                       "elapsed_s": self.progress.elapsed_seconds})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
        self.rate_window = (window_start, window_tokens)
        bar.update(1)

    def _evaluate_and_keep_best(self, bar: Any) -> float | None:
        val_nats = self.validate()
        if val_nats is None:
            return None
        if not math.isfinite(val_nats):
            raise TrainingDiverged(f"the validation loss became {val_nats} at step {self.progress.step}: stopped "
                                   f"without saving; {self._last_good()} (try a lower --lr or a longer --warmup)")
        self._log({"step": self.progress.step, "val_nats": val_nats, "val_bits": val_nats / math.log(2)})
        best = self.progress.best_val_nats
        if best is None or val_nats < best:
            self.progress.best_val_nats = val_nats
            self.save_best(val_nats)
        if self.info.is_main:
            bar.write(f"step {self.progress.step}: validation {val_nats:.4f} nats/token "
                      f"({val_nats / math.log(2):.4f} bits/token)" + (" (best)" if val_nats == self.progress.best_val_nats else ""))
        return val_nats

    def _announce(self) -> None:
        if not self.info.is_main:
            return
        tc, cfg, info = self.tc, self.cfg, self.info
        effective = tc.batch_size * tc.grad_accum * info.world_size
        start = f"resuming at step {self.progress.step} from {self.resumed_from}" if self.resumed_from else "new run"
        print(f"{self.run_spec.config.run_name}: {start}; {self.model.num_params() / 1e6:.1f}M parameters on {self.device}"
              f"{f' x {info.world_size} processes' if info.enabled else ''}, "
              f"{self.precision_text}{', compiled' if self.run_spec.compile else ''}; "
              f"{effective} windows of {cfg.max_seq_len} tokens per step ({cfg.num_latents} scored each); "
              f"run folder {self.run_spec.run_dir}", flush=True)
        if self.validation is None:
            print("warning: the data has no validation split: no validation loss and no best/ checkpoint", flush=True)
        else:
            print(f"validation: {self.validation.describe()} every {tc.eval_every} steps", flush=True)

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was saved yet"
        return f"the last good checkpoint is {self.last_checkpoint}"

    def _progress_bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.tc.max_steps, initial=self.progress.step, unit="step", dynamic_ncols=True,
                    disable=not (self.info.is_main and self.run_spec.progress), desc=self.run_spec.config.run_name)


def train(run: TrainRun, info: DistInfo | None = None, stop: StopRequest | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train (or resume) one run in this process (with DDP, after joining the process group).
    `on_step(step)` is called after every step."""
    trainer = Trainer(run, info or DistInfo(), stop or StopRequest())
    return trainer.run(on_step)
