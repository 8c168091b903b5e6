"""Fine-tuning a trained checkpoint on your own music (issue 26).

The model's shape and tokenizer come from the checkpoint (the bundled model by default); a MIDI
folder is prepared with that tokenizer, a prepared folder must have been made with it. The
schedule is a fine-tuning one: a lower peak learning rate, a short warmup, a step budget sized to
the data (or a wall-clock budget), validation about once per pass over the data and early
stopping. The run is an ordinary training run (same loop, same `--resume`, torchrun and CUDA);
its ``run_config.json``, every checkpoint's ``meta.json`` and the run's ``README.md`` say what it
was fine-tuned from. A share of the base model's own data can be mixed back in to keep its skills.

From Python (the studio)::

    result = finetune("my_midi/", minutes=5, on_step=lambda step, run: ..., stop=StopRequest())
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.training.presets import RunConfig, TrainConfig

BUNDLED = Path(__file__).resolve().parents[2] / "checkpoints" / "default"
LR = 3e-4  # peak learning rate: half the bundled recipe's 6e-4
WARMUP_STEPS = 20
EPOCHS = 8  # the step budget: this many passes over the training windows (within the bounds below)
MIN_STEPS, MAX_STEPS = 100, 5000
TIMED_MAX_STEPS = 10**9  # with a time budget the clock ends the run
PATIENCE = 4  # validations without a new best before stopping
MIX_SHARE = 0.2  # default share of the base model's data with --mix-data
CARD_NAME = "README.md"


class FinetunePlan(NamedTuple):
    """A fine-tuning run resolved (on rank 0): its folder, config, data and starting checkpoint."""

    run_dir: Path
    config: RunConfig
    data: PreparedData
    mix_data: PreparedData | None
    init_checkpoint: Path


def find_init_checkpoint(spec: str | Path | None) -> Path:
    """The checkpoint folder to start from: `spec` (a checkpoint or run folder), or the bundled
    model when `spec` is None or empty; UserError if it is missing or incomplete."""
    from perceiver_ar_music.model import checkpoint as ckpt

    if spec is None or str(spec) == "":
        if not (BUNDLED / ckpt.WEIGHTS_NAME).is_file():
            raise UserError(f"the bundled model is not at {BUNDLED} (a wheel install does not carry it): "
                            f"pass --init-from CHECKPOINT")
        return BUNDLED
    return ckpt.find_checkpoint(spec)


def schedule(cfg: PerceiverARConfig, data: PreparedData, minutes: float | None, batch_size: int = 8) -> TrainConfig:
    """The default fine-tuning `TrainConfig` for `data`: one validation (and checkpoint) per pass
    over the training windows, `EPOCHS` passes (or `minutes` of wall clock), early stopping."""
    windows = sum(math.ceil((len(piece) + 2) / cfg.num_latents) for piece in data.pieces("train"))
    steps_per_epoch = max(1, math.ceil(windows / batch_size))
    every = min(max(steps_per_epoch, 10), 250)
    max_steps = TIMED_MAX_STEPS if minutes else min(max(EPOCHS * steps_per_epoch, MIN_STEPS), MAX_STEPS)
    return TrainConfig(batch_size=batch_size, lr=LR, warmup_steps=WARMUP_STEPS, max_steps=max_steps,
                       max_minutes=minutes, weight_decay=0.01, eval_every=every, eval_windows=256, save_every=every,
                       keep_last=2, log_every=5, patience=PATIENCE)


def describe_validation(data: PreparedData) -> str:
    """One plain sentence on what the validation loss is measured on."""
    splits = data.manifest["splits"]
    train = len(data.files("train"))
    if "validation" not in splits:
        return f"training on {train} pieces; no validation split: no validation loss and no early stopping"
    held = data.files("validation")
    if any(entry.get("split_source") == "held-out end" for entry in held):
        which = "the piece" if train == 1 else f"each of the {train} pieces"
        return (f"training on {train} piece(s); too few pieces to hold one out, so the last 10% of {which} is "
                f"held out as validation windows")
    return f"training on {train} pieces; validating on {len(held)} held-out piece(s) never trained on"


def open_data(data: str | Path, tokenizer_path: Path, tokenizer_hash: str, cache: str | Path | None,
              progress: bool, what: str = "--data") -> PreparedData:
    """`data` prepared with the checkpoint's tokenizer (a MIDI folder is prepared with it; a
    prepared folder must have been); UserError, before any work, if it was not."""
    from perceiver_ar_music.data.store_builder import MANIFEST_NAME, ensure_prepared

    path = Path(data)
    if path.is_file():
        raise UserError(f"{what} {path} is a file: put your MIDI files in a folder and pass the folder")
    if (path / MANIFEST_NAME).is_file():
        prepared = path
    else:
        prepared = ensure_prepared(path, cache, tokenizer=str(tokenizer_path), progress=progress)
    opened = PreparedData.open(prepared)
    if opened.tokenizer_hash != tokenizer_hash:
        raise UserError(f"{what} {prepared} was prepared with another tokenizer than the checkpoint's "
                        f"({opened.tokenizer_hash[:8]} vs {tokenizer_hash[:8]}): pass the MIDI folder instead")
    if "train" not in opened.manifest["splits"] or not len(opened.files("train")):
        raise UserError(f"{what} {data} has no usable training pieces")
    return opened


def plan(data: str | Path, *, init_from: str | Path | None = None, out: str | Path = "checkpoints",
         name: str | None = None, minutes: float | None = None, mix_data: str | Path | None = None,
         mix_share: float = MIX_SHARE, train_overrides: dict[str, Any] | None = None,
         augment_overrides: dict[str, Any] | None = None,
         model_overrides: dict[str, Any] | None = None, prepared_cache: str | Path | None = None,
         progress: bool = True) -> FinetunePlan:
    """Resolve a new fine-tuning run and write its ``run_config.json`` (nothing is written when
    any check fails). `train_overrides` / `augment_overrides`: TrainConfig / AugmentConfig fields
    over the fine-tuning schedule (as `presets.with_overrides`); `model_overrides`: dropout fields only (the shape is the checkpoint's)."""
    from perceiver_ar_music.model import checkpoint as ckpt
    from perceiver_ar_music.runtime.atomic import check_writable_dir, write_json_atomic
    from perceiver_ar_music.training.presets import with_overrides
    from perceiver_ar_music.training.run_folder import RUN_CONFIG_NAME

    checkpoint = find_init_checkpoint(init_from)
    cfg = ckpt.read_config(checkpoint)
    meta = ckpt.read_json(checkpoint / ckpt.META_NAME)
    tokenizer_hash = meta.get("tokenizer_hash")
    if not isinstance(tokenizer_hash, str):
        raise UserError(f"{checkpoint / ckpt.META_NAME} is corrupt (no tokenizer_hash)")
    shape = sorted(set(model_overrides or {}) - {"dropout", "cross_attn_dropout"})
    if shape:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in shape)
        raise UserError(f"{flags} cannot be set when fine-tuning: the model's shape comes from {checkpoint}")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise UserError(f"--minutes must be > 0, got {minutes}")
    name = name or f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name '{name}' must be a plain folder name")
    run_dir = Path(out) / name
    if (run_dir / RUN_CONFIG_NAME).exists():
        raise UserError(f"run folder {run_dir} already exists: add --resume to continue it, or choose another --name")
    check_writable_dir(run_dir, "the run folder")
    tokenizer_path = checkpoint / ckpt.TOKENIZER_NAME
    opened = open_data(data, tokenizer_path, tokenizer_hash, prepared_cache, progress)
    mixed = open_data(mix_data, tokenizer_path, tokenizer_hash, None, progress, "--mix-data") if mix_data else None
    cfg = PerceiverARConfig.from_dict({**cfg.to_dict(), **(model_overrides or {})})
    tc = schedule(cfg, opened, minutes)
    overrides = dict(train_overrides or {})
    if mixed is not None:
        overrides.setdefault("mix_share", mix_share)
    try:
        tc = with_overrides(tc, overrides, augment_overrides or {})
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid configuration: {exc}") from None
    if mixed is None and tc.mix_share:
        raise UserError("a mix share needs --mix-data (a prepared folder or MIDI folder of the base model's music)")
    origin = {"checkpoint": str(checkpoint.resolve()), "run_name": meta.get("run_name"), "step": meta.get("step")}
    sources = {"source": str(Path(data).resolve()), "prepared": str(opened.root.resolve()),
               "tokenizer_hash": tokenizer_hash}
    if mixed is not None:
        sources["mix_prepared"] = str(mixed.root.resolve())
    config = RunConfig(run_name=name, model=cfg, train=tc, preset=None, data=sources,
                       created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), init_from=origin)
    print(f"fine-tuning {checkpoint} ({origin['run_name']}, step {origin['step']}) on {data}: "
          f"{describe_validation(opened)}" + (f"; {tc.mix_share:.0%} of the windows from {mixed.root}" if mixed else ""),
          flush=True)
    budget = f"{minutes:g} minutes" if minutes else f"{tc.max_steps} steps"
    stopping = (f"early stopping after {tc.patience} validations without a new best" if tc.patience
                else "no early stopping")
    print(f"schedule: peak lr {tc.lr:g}, {tc.warmup_steps} warmup steps, {budget}, validation every "
          f"{tc.eval_every} steps, {stopping}", flush=True)
    write_json_atomic(run_dir / RUN_CONFIG_NAME, config.to_dict())  # makes the run folder (none if it fails)
    return FinetunePlan(run_dir, config, opened, mixed, checkpoint)


def write_card(run_dir: Path, config: RunConfig, step: int, best_val_nats: float | None, ended_by: str) -> None:
    """The run's ``README.md``: what it was fine-tuned from, on what, and how it ended."""
    from perceiver_ar_music.runtime.atomic import write_text_atomic

    origin = config.init_from or {}
    best = "none" if best_val_nats is None else f"{best_val_nats:.4f} nats/token"
    mix = config.data.get("mix_prepared")
    lines = [
        f"# {config.run_name}",
        "",
        f"Fine-tuned from `{origin.get('checkpoint')}` (run {origin.get('run_name')}, step {origin.get('step')}) "
        f"on `{config.data.get('source')}` (prepared: `{config.data.get('prepared')}`).",
        "",
        f"- steps: {step} (ended by {ended_by}); best validation: {best}",
        f"- peak lr {config.train.lr:g}, warmup {config.train.warmup_steps} steps, batch {config.train.batch_size}"
        + (f", time budget {config.train.max_minutes:g} min" if config.train.max_minutes else ""),
        f"- base model's data mixed in: {config.train.mix_share:.0%} of the windows from `{mix}`" if mix
        else "- base model's data mixed in: none",
        "- the note guards' limits (meta.json `note_limits`) are computed from this run's training data",
        "",
        "Generate with `perceiver-music generate --checkpoint " + str(run_dir) + "`.",
    ]
    write_text_atomic(run_dir / CARD_NAME, "\n".join(lines) + "\n")


def finetune(data: str | Path, *, init_from: str | Path | None = None, out: str | Path = "checkpoints",
             name: str | None = None, minutes: float | None = None, mix_data: str | Path | None = None,
             mix_share: float = MIX_SHARE, train_overrides: dict[str, Any] | None = None,
             device: str = "auto", on_step: Callable[[int, Any], None] | None = None, stop: Any = None,
             prepared_cache: str | Path | None = None, progress: bool = False) -> Any:
    """Fine-tune in this process (the studio's entry point): plan, train, write the card.

    `on_step(step, progress)` is called after every step with the step number and the run's
    `run_folder.Progress` (``best_val_nats``, ``wall_seconds``, ``evals_since_best``); the loss
    and validation rows are appended to ``RUN/metrics.jsonl`` as they come. `stop` is a `train.StopRequest`: ``stop.set()`` from any
    thread ends the run after the current step, saved (then ``result.ended_by == "signal"``).
    Returns the `train.TrainResult`; raises `UserError` (one line) on bad input.
    """
    from perceiver_ar_music.runtime.devices import pick_device
    from perceiver_ar_music.training.train import TrainRun

    found = plan(data, init_from=init_from, out=out, name=name, minutes=minutes, mix_data=mix_data,
                 mix_share=mix_share, train_overrides=train_overrides, prepared_cache=prepared_cache,
                 progress=progress)
    spec = TrainRun(run_dir=found.run_dir, config=found.config, data=found.data, device=pick_device(device),
                    progress=progress, init_from=found.init_checkpoint, mix_data=found.mix_data)
    return _train_and_card(spec, on_step, stop)


def train_on(run_dir: str | Path, *, minutes: float, device: str = "auto",
             on_step: Callable[[int, Any], None] | None = None, stop: Any = None, progress: bool = False) -> Any:
    """Go on fine-tuning a run for `minutes` more of wall clock (the studio's "Train on"): resumed
    from its newest checkpoint like ``train --resume``, its time budget extended by `minutes` (the
    lr then decays over the longer budget), its card rewritten. Same `on_step`, `stop` and result
    as `finetune`; UserError for a run that cannot go on."""
    from perceiver_ar_music.model import checkpoint as ckpt
    from perceiver_ar_music.runtime.devices import pick_device
    from perceiver_ar_music.training.run_folder import plan_resume, read_trainer_state
    from perceiver_ar_music.training.train import TrainRun

    if not (math.isfinite(minutes) and minutes > 0):
        raise UserError(f"minutes must be > 0, got {minutes}")
    run_dir = Path(run_dir)
    newest = ckpt.latest_resumable(run_dir)
    if newest is None:
        raise UserError(f"{run_dir} has no checkpoint to go on from")
    used = read_trainer_state(newest)[0].wall_seconds / 60
    found = plan_resume(run_dir, {"max_minutes": used + minutes, "max_steps": TIMED_MAX_STEPS})
    if not found.config.init_from:
        raise UserError(f"{run_dir} is not a fine-tuning run")
    spec = TrainRun(run_dir=run_dir, config=found.config, data=found.data, device=pick_device(device),
                    progress=progress, resume_from=found.checkpoint, mix_data=found.mix_data)
    return _train_and_card(spec, on_step, stop)


def _train_and_card(spec: Any, on_step: Callable[[int, Any], None] | None, stop: Any) -> Any:
    """Train a planned run in this process, then write its card."""
    from perceiver_ar_music.runtime.distributed import DistInfo
    from perceiver_ar_music.training.train import StopRequest, Trainer

    trainer = Trainer(spec, DistInfo(), stop or StopRequest())
    result = trainer.run(None if on_step is None else (lambda step: on_step(step, trainer.progress)))
    write_card(spec.run_dir, spec.config, result.step, result.best_val_nats, result.ended_by)
    return result
