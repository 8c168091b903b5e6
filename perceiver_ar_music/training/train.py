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

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceiver_ar_music.runtime import distributed
from perceiver_ar_music.runtime.devices import allow_tf32, autocast, describe_precision
from perceiver_ar_music.runtime.distributed import DistInfo
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.sampling.note_limits import note_limits
from perceiver_ar_music.training.evaluate import score_windows
from perceiver_ar_music.training.loss import window_loss
from perceiver_ar_music.training.presets import RunConfig, TrainConfig
from perceiver_ar_music.training.run_folder import (
    METRICS_NAME,  # noqa: F401  (re-exported for scripts)
    RUN_CONFIG_NAME,  # noqa: F401
    Progress,
    ResumeState,
    RunFolder,
    read_resume_state,
    rng_state,
    set_rng_state,
)
from perceiver_ar_music.training.windows import EvalWindows, MixedWindows, TrainWindows, WindowSampler


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""

    exit_code = 1


# ----------------------------------------------------------------------------- data


def _ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent to the whole terminal process group) to the main
    process, which stops cleanly. SIGTERM keeps its default: it is how workers are shut down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_loader(data: PreparedData, cfg: PerceiverARConfig, tc: TrainConfig, info: DistInfo,
                 start: int, workers: int, device: torch.device, mix_data: PreparedData | None = None) -> DataLoader:
    """Endless augmented training windows for this rank, from sample position `start` on (a
    `tc.mix_share` of them from `mix_data`'s training pieces when given)."""
    dataset: Dataset = TrainWindows(data.pieces("train"), data.vocab, cfg.max_seq_len, augment=tc.augment, seed=tc.seed)
    if mix_data is not None and tc.mix_share > 0:
        other = TrainWindows(mix_data.pieces("train"), mix_data.vocab, cfg.max_seq_len, augment=tc.augment,
                             seed=tc.seed + 1)
        dataset = MixedWindows(dataset, other, tc.mix_share)
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


def lr_at(step: int, tc: TrainConfig, time_used: float | None = None) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to the minimum
    over the steps, or, with a time budget, over `time_used` (the share of it used)."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    min_lr = tc.lr * tc.min_lr_ratio
    if time_used is not None:
        progress = min(1.0, time_used)
    else:
        progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - min_lr)


@dataclass
class StepStats:
    nats: torch.Tensor  # mean NLL over the micro-batches (on the device, not synchronised)
    targets: int  # scored targets of this process
    grad_norm: torch.Tensor | None


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Iterable[dict[str, torch.Tensor]],
                   tc: TrainConfig, lr: float, pad_id: int, device: torch.device, min_tokens: int | None = None) -> StepStats:
    """One optimizer step over `tc.grad_accum` micro-batches (DDP syncs gradients on the last);
    `min_tokens` as in `loss.window_loss`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    nats_sum = torch.zeros((), device=device)
    targets = 0
    for index, batch in enumerate(micro_batches):
        last = index == tc.grad_accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss, nats, count = window_loss(model, batch, pad_id, device, tc.precision, tc.z_loss, min_tokens)
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


# ----------------------------------------------------------------------------- the run


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
    init_from: Path | None = None  # a checkpoint whose weights a new run starts from (fine-tuning)
    mix_data: PreparedData | None = None  # a `config.train.mix_share` of the windows come from its training pieces


@dataclass
class TrainResult:
    model: PerceiverAR  # the trained module (unwrapped), on its device
    step: int
    stopped_by_signal: int | None
    last_checkpoint: Path | None
    best_val_nats: float | None
    ended_by: str = "steps"  # "steps", "time" (the budget), "early stopping" or "signal"


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
        self.pad_id = self.data.vocab.pad_id
        # the sampler's note guards take their limits from the training data, mixed-in pieces
        # included: the model learnt both (rank 0 writes them)
        self.note_limits = None
        if info.is_main:
            pieces = list(self.data.pieces("train"))
            if run.mix_data is not None and self.tc.mix_share > 0:
                pieces += run.mix_data.pieces("train")
            self.note_limits = note_limits(pieces, self.data.vocab)

        self.folder = RunFolder(run.run_dir, info.is_main, self.data.tokenizer_path, self.data.tokenizer_hash)

        torch.manual_seed(self.tc.seed)
        self.model = PerceiverAR(self.cfg)
        self.progress = Progress()
        resume = None
        if run.resume_from is not None:
            params = [p for group in _decay_split(self.model) for p in group]
            resume = read_resume_state(run.resume_from, self.model, params, info.is_main)
            self.model.load_state_dict(resume.weights)
        elif run.init_from is not None:
            ckpt.load_weights(self.model, run.init_from)
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
        # batches of short pieces skip their shared padding (not compiled: one graph per length)
        self.min_tokens = None if run.compile else self.cfg.num_latents + 1
        self.eval_model = self.step_model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_model = DistributedDataParallel(self.step_model, device_ids=device_ids)
        self.validation = ValidationSet.build(self.data, self.cfg, self.tc.eval_windows)
        self.rate_window = (time.perf_counter(), 0)  # (start, scored targets since) for tokens/s

    def _restore(self, resume: ResumeState) -> None:
        """Apply a checkpoint's optimizer state, progress and RNG states (read in full before)."""
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

    # -- evaluation and saving

    def validate(self) -> float | None:
        """Validation NLL in nats/token over the validation subset (all ranks share the work)."""
        if self.validation is None:
            return None
        self.eval_model.eval()
        mine = self.validation.indices[self.info.rank :: self.info.world_size]
        nats, count = score_windows(self.eval_model, self.validation.windows, mine, self.tc.batch_size,
                                    self.device, self.pad_id, self.tc.precision, self.min_tokens)
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
            **({"fine_tuned_from": self.run_spec.config.init_from} if self.run_spec.config.init_from else {}),
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
        trainer_state = {
            "progress": vars(self.progress),
            "world_size": self.info.world_size,
            "rng": rng,
            "run_config": self.run_spec.config.to_dict(),
        }
        self.last_checkpoint = self.folder.save(self.progress.step, self.model, self.optimizer, self._meta(val_nats),
                                                trainer_state, self.tc.keep_last)

    def save_best(self, val_nats: float) -> None:
        self._check_healthy()
        self.folder.save_best(self.model, self._meta(val_nats))

    # -- the loop

    def run(self, on_step: Callable[[int], None] | None = None) -> TrainResult:
        tc, info = self.tc, self.info
        self.folder.open(self.progress.step if self.resumed_from is not None else None)
        self._announce()
        if self.run_spec.init_from is not None and self.resumed_from is None:
            self._validate_start()
        batches = iter(train_loader(self.data, self.cfg, tc, info, self.progress.samples_per_rank,
                                    self.run_spec.workers, self.device, self.run_spec.mix_data))
        bar = self._progress_bar()
        self.step_model.train()
        self.rate_window = (time.perf_counter(), 0)
        loop_start, wall_before = time.perf_counter(), self.progress.wall_seconds
        time_used = None if tc.max_minutes is None else wall_before / (60 * tc.max_minutes)
        ended_by = self._ended_by(time_used)
        try:
            with stop_on_signals(self.stop, second_interrupt_aborts=not info.enabled):
                while ended_by is None:
                    started = time.perf_counter()
                    lr = lr_at(self.progress.step, tc, time_used)
                    micro = (next(batches) for _ in range(tc.grad_accum))
                    stats = optimizer_step(self.step_model, self.optimizer, micro, tc, lr, self.pad_id, self.device,
                                           self.min_tokens)
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
                    if tc.max_minutes is not None:  # the ranks' mean clock: the same lr and end on every rank
                        wall = torch.tensor([wall_before + time.perf_counter() - loop_start], dtype=torch.float64,
                                            device=self.device)
                        self.progress.wall_seconds = float(distributed.all_reduce_sum(wall)) / info.world_size
                        time_used = self.progress.wall_seconds / (60 * tc.max_minutes)
                    ended_by = self._ended_by(time_used)
                    val_nats = None
                    if step % tc.eval_every == 0 or ended_by is not None:
                        val_nats = self._evaluate_and_keep_best(bar)
                        ended_by = self._ended_by(time_used)
                    if step % tc.save_every == 0 or ended_by is not None:
                        self.save(val_nats)
                    if on_step is not None:
                        on_step(step)
                    if ended_by is None and distributed.any_process(self.stop.requested, self.device):
                        if self.saved_step != step:
                            self.save(val_nats)
                        ended_by = "signal"
        except torch.cuda.OutOfMemoryError:
            raise UserError(
                f"CUDA out of memory (batch size {tc.batch_size}, context {self.cfg.max_seq_len}): use a smaller "
                f"--batch-size (and a larger --grad-accum to keep the effective batch) or --max-seq-len") from None
        finally:
            del batches  # shuts the DataLoader workers down now, even while an exception propagates
            bar.close()
            self.folder.close()
        return TrainResult(self.model, self.progress.step, self.stop.signum, self.last_checkpoint,
                           self.progress.best_val_nats, ended_by or "steps")

    def _ended_by(self, time_used: float | None) -> str | None:
        """Why the run is over (the same on every rank), or None while it goes on."""
        if self.progress.step >= self.tc.max_steps:
            return "steps"
        if time_used is not None and time_used >= 1:
            return "time"
        if self.tc.patience and self.progress.evals_since_best >= self.tc.patience:
            return "early stopping"
        return None

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
            self.folder.log({"step": step, "loss": loss, "bits": loss / math.log(2), "lr": lr, "grad_norm": grad_norm,
                       "tokens": self.progress.tokens_seen, "target_tokens_per_s": rate,
                       "elapsed_s": self.progress.elapsed_seconds})
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
        self.rate_window = (window_start, window_tokens)
        bar.update(1)

    def _validate_start(self) -> None:
        """A fine-tuning run's starting point: the validation loss of the weights it starts from,
        logged as step 0 (not a best: the run's best/ is always its own). Not in the time budget."""
        val_nats = self.validate()
        if val_nats is None:
            return
        self.folder.log({"step": 0, "val_nats": val_nats, "val_bits": val_nats / math.log(2), "start": True})
        if self.info.is_main:
            print(f"step 0: validation {val_nats:.4f} nats/token before fine-tuning", flush=True)

    def _evaluate_and_keep_best(self, bar: Any) -> float | None:
        val_nats = self.validate()
        if val_nats is None:
            return None
        if not math.isfinite(val_nats):
            raise TrainingDiverged(f"the validation loss became {val_nats} at step {self.progress.step}: stopped "
                                   f"without saving; {self._last_good()} (try a lower --lr or a longer --warmup)")
        self.folder.log({"step": self.progress.step, "val_nats": val_nats, "val_bits": val_nats / math.log(2)})
        best = self.progress.best_val_nats
        if best is None or val_nats < best:
            self.progress.best_val_nats = val_nats
            self.progress.evals_since_best = 0
            self.save_best(val_nats)
        else:
            self.progress.evals_since_best += 1
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

        total = None if self.tc.max_minutes is not None else self.tc.max_steps
        return tqdm(total=total, initial=self.progress.step, unit="step", dynamic_ncols=True,
                    disable=not (self.info.is_main and self.run_spec.progress), desc=self.run_spec.config.run_name)


def train(run: TrainRun, info: DistInfo | None = None, stop: StopRequest | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train (or resume) one run in this process (with DDP, after joining the process group).
    `on_step(step)` is called after every step."""
    trainer = Trainer(run, info or DistInfo(), stop or StopRequest())
    return trainer.run(on_step)
