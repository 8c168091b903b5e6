"""`perceiver-music train`: train a Perceiver AR from a preset, or resume a run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from perceiver_ar_music.runtime.cli_types import bounded_int, finite_float, seed
from perceiver_ar_music.runtime.threads import add_argument as add_threads_argument

if TYPE_CHECKING:
    from perceiver_ar_music.training.presets import RunConfig
    from perceiver_ar_music.data.token_store import PreparedData

HELP = "train a Perceiver AR on a MIDI or prepared folder (presets maestro, small, tiny), or --resume a run"

# Flag destination -> PerceiverARConfig / TrainConfig / AugmentConfig field (--stretch F is the
# augmentation's range [1 - F, 1 + F]; --no-augment sets TrainConfig.augment to None).
MODEL_FLAGS = {
    "max_seq_len": "max_seq_len", "num_latents": "num_latents", "dim": "dim", "depth": "depth",
    "heads": "heads", "dim_head": "dim_head", "cross_attn_dropout": "cross_attn_dropout", "dropout": "dropout",
}
TRAIN_FLAGS = {
    "batch_size": "batch_size", "grad_accum": "grad_accum", "lr": "lr", "min_lr_ratio": "min_lr_ratio",
    "warmup": "warmup_steps", "max_steps": "max_steps", "weight_decay": "weight_decay", "clip": "grad_clip",
    "z_loss": "z_loss", "augment": "augment",
    "eval_every": "eval_every", "eval_windows": "eval_windows", "save_every": "save_every",
    "keep_last": "keep_last", "log_every": "log_every", "seed": "seed", "precision": "precision",
    "minutes": "max_minutes", "patience": "patience", "mix_share": "mix_share",
}
AUGMENT_FLAGS = {
    "max_transpose": "max_transpose", "stretch_windows": "stretch_windows", "velocity_windows": "velocity_windows",
    "velocity_shift": "max_velocity_shift", "velocity_noise": "velocity_noise", "perform_windows": "perform_windows",
    "onset_jitter": "onset_jitter", "tempo_drift": "tempo_drift", "velocity_arc": "velocity_arc",
    "pedal_hold": "pedal_hold",
}


_COUNT = bounded_int(1, 10**9)  # steps, windows
_SIZE = bounded_int(1, 1 << 20)  # tokens, widths, batch sizes
_FRACTION = finite_float(0, 1, max_inclusive=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from perceiver_ar_music.runtime.cli_types import PRECISIONS
    from perceiver_ar_music.training.presets import PRESETS

    run = parser.add_argument_group("run")
    run.add_argument("--data", metavar="DIR",
                     help="a prepared folder (has manifest.json) or a folder of MIDI files, prepared on the fly "
                          "into perceiver-music's cache (~/.cache/perceiver-music, or $PERCEIVER_MUSIC_CACHE; "
                          "reused and updated incrementally; the folder itself is only read)")
    run.add_argument("--prepared-cache", metavar="DIR", help="where to prepare a MIDI --data folder instead")
    run.add_argument("--preset", default="small", choices=sorted(PRESETS),
                     help="; ".join(f"{name}: {p.description}" for name, p in PRESETS.items()) + " (default: small)")
    run.add_argument("--out", default="checkpoints", metavar="DIR", help="parent of run folders (default: checkpoints)")
    run.add_argument("--name", help="run name (default: PRESET-YYYYmmdd-HHMMSS); the run folder is OUT/NAME")
    run.add_argument("--resume", nargs="?", const="", metavar="RUN_DIR",
                     help="continue a run from its latest checkpoint: RUN_DIR, else OUT/NAME, else the newest run in OUT")
    run.add_argument("--init-from", nargs="?", const="", metavar="CHECKPOINT",
                     help="fine-tune: start from a checkpoint or run folder (the bundled model when no value is "
                          "given); its shape and tokenizer are kept, and the schedule defaults to a fine-tuning one "
                          "(lower lr, short warmup, a step budget sized to the data, early stopping)")
    run.add_argument("--minutes", type=finite_float(0, 10**7, min_inclusive=False), metavar="M",
                     help="wall-clock budget: the run ends after M minutes (the lr decays over them), saved")
    run.add_argument("--mix-data", metavar="DIR",
                     help="with --init-from: mix the base model's own music (prepared or MIDI folder) back in, "
                          "to keep its skills")
    run.add_argument("--mix-share", type=_FRACTION, metavar="P",
                     help="share of the training windows drawn from --mix-data (default 0.2)")
    run.add_argument("--device", default="auto", help="auto (the GPU if any, else CPU), cpu, cuda, cuda:N, mps")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--precision", choices=PRECISIONS,
                     help="autocast of training and validation: auto (the default: bf16 on CUDA and on CPUs with "
                          "AMX bf16 units, else fp32), bf16 or fp32; weights and optimizer stay fp32")
    run.add_argument("--workers", type=bounded_int(0, 256), metavar="N",
                     help="DataLoader worker processes (default: 4 with a GPU, 0 on CPU)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(run)

    model = parser.add_argument_group("model (default: the preset's)")
    model.add_argument("--max-seq-len", type=_SIZE, metavar="N", help="context length in tokens")
    model.add_argument("--num-latents", type=_SIZE, metavar="N", help="latents = positions scored per window")
    model.add_argument("--dim", type=bounded_int(1, 65_536), metavar="N", help="width")
    model.add_argument("--depth", type=bounded_int(1, 1024), metavar="N", help="self-attention layers over the latents")
    model.add_argument("--heads", type=bounded_int(1, 1024), metavar="N", help="attention heads")
    model.add_argument("--dim-head", type=bounded_int(1, 4096), metavar="N", help="channels per head")
    model.add_argument("--cross-attn-dropout", type=_FRACTION, metavar="P", help="prefix dropout fraction")
    model.add_argument("--dropout", type=_FRACTION, metavar="P", help="dropout")

    opt = parser.add_argument_group("optimization and schedule (default: the preset's)")
    opt.add_argument("--batch-size", type=_SIZE, metavar="N", help="windows per micro-batch per process")
    opt.add_argument("--grad-accum", type=_SIZE, metavar="N", help="micro-batches per optimizer step")
    opt.add_argument("--lr", type=finite_float(0, 1, min_inclusive=False), help="peak learning rate")
    opt.add_argument("--min-lr-ratio", type=finite_float(0, 1), metavar="R", help="final lr as a fraction of --lr")
    opt.add_argument("--warmup", type=bounded_int(0, 10**9), metavar="STEPS", help="linear warmup steps")
    opt.add_argument("--max-steps", type=_COUNT, metavar="N", help="optimizer steps in total")
    opt.add_argument("--weight-decay", type=finite_float(0, 10), metavar="W")
    opt.add_argument("--clip", type=finite_float(0, 1e6), metavar="NORM", help="gradient norm clip (0: off)")
    opt.add_argument("--z-loss", type=finite_float(0, 1), metavar="C", help="z-loss coefficient")
    opt.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                     help="no random transposition / time stretch / velocities of training windows")
    opt.add_argument("--max-transpose", type=bounded_int(0, 24), metavar="SEMITONES", help="augmentation transposition range")
    opt.add_argument("--stretch", type=_FRACTION, metavar="F", help="augmentation time stretch in [1-F, 1+F]")
    opt.add_argument("--stretch-windows", type=finite_float(0, 1), metavar="P",
                     help="share of windows that are time-stretched (default 1: all; the rest keep the piece's time)")
    opt.add_argument("--velocity-windows", type=finite_float(0, 1), metavar="P",
                     help="share of windows whose velocities are varied (default 0; for corpora without dynamics)")
    opt.add_argument("--velocity-shift", type=bounded_int(0, 127), metavar="V",
                     help="those windows' velocities move together by up to +-V (MIDI units)")
    opt.add_argument("--velocity-noise", type=finite_float(0, 127), metavar="STD",
                     help="and each note's by normal noise of this std (MIDI units)")
    opt.add_argument("--perform-windows", type=finite_float(0, 1), metavar="P",
                     help="share of windows made to look played (default 0; for score-derived corpora): tempo "
                          "drift within a phrase, onset jitter, pedal-like lengthening, a dynamic arc")
    opt.add_argument("--onset-jitter", type=finite_float(0, 1), metavar="S",
                     help="in those windows: std of each note's timing in seconds (default 0.02)")
    opt.add_argument("--tempo-drift", type=_FRACTION, metavar="F",
                     help="and a tempo that moves by up to F within a phrase (default 0.08)")
    opt.add_argument("--velocity-arc", type=finite_float(0, 127), metavar="V",
                     help="and velocities that follow an arc of up to +-V over a phrase (default 16)")
    opt.add_argument("--pedal-hold", type=finite_float(0, 10), metavar="S",
                     help="and, in half of them, notes held up to S seconds longer, to the next pedal-like "
                          "release (default 1)")
    opt.add_argument("--seed", type=seed)

    obs = parser.add_argument_group("evaluation and checkpoints (default: the preset's)")
    obs.add_argument("--eval-every", type=_COUNT, metavar="STEPS", help="steps between validations")
    obs.add_argument("--eval-windows", type=bounded_int(0, 10**9), metavar="N", help="validation windows per validation (0: all)")
    obs.add_argument("--save-every", type=_COUNT, metavar="STEPS", help="steps between checkpoints")
    obs.add_argument("--keep-last", type=bounded_int(1, 10**6), metavar="K", help="step checkpoints kept (besides best/)")
    obs.add_argument("--log-every", type=_COUNT, metavar="STEPS", help="steps between metrics.jsonl rows")
    obs.add_argument("--patience", type=bounded_int(0, 10**6), metavar="N",
                     help="early stopping: end after N validations without a new best (0: never; fine-tuning: 4)")


class Plan(NamedTuple):
    """What rank 0 resolves and hands to every process: the run folder, its config, its data."""

    run_dir: Path
    config: "RunConfig"
    data: "PreparedData"
    resume_from: Path | None  # the checkpoint to resume from
    init_from: Path | None = None  # a new fine-tuning run's starting checkpoint
    mix_data: "PreparedData | None" = None  # the data mixed into the training windows


def _overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, dest) for dest, field in flags.items() if getattr(args, dest) is not None}


def _augment_overrides(args: argparse.Namespace) -> dict[str, Any]:
    fields = _overrides(args, AUGMENT_FLAGS)
    if args.stretch is not None:
        fields.update(min_stretch=1.0 - args.stretch, max_stretch=1.0 + args.stretch)
    return fields


def resolve_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(PerceiverARConfig, TrainConfig) of parsed `train` flags: the preset with the flags applied."""
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.training.presets import resolve

    try:
        return resolve(args.preset, _overrides(args, MODEL_FLAGS), _overrides(args, TRAIN_FLAGS),
                       _augment_overrides(args))
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid configuration: {exc}") from None


def _fresh_plan(args: argparse.Namespace) -> Plan:
    """Resolve a new run on rank 0: prepare and open the data, create the run folder and its config."""
    from dataclasses import replace

    from perceiver_ar_music.runtime.atomic import check_writable_dir, write_json_atomic
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.training.presets import RunConfig
    from perceiver_ar_music.data.store_builder import ensure_prepared
    from perceiver_ar_music.data.token_store import PreparedData
    from perceiver_ar_music.training.run_folder import METRICS_NAME, RUN_CONFIG_NAME

    if not args.data:
        raise UserError("--data is required (a MIDI folder or a prepared folder), unless --resume")
    if args.init_from is not None:
        return _finetune_plan(args)
    if args.mix_data or args.mix_share is not None:
        raise UserError("--mix-data and --mix-share go with --init-from (fine-tuning)")
    name = args.name or f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name '{name}' must be a plain folder name")
    run_dir = Path(args.out) / name
    restart = False
    if (run_dir / RUN_CONFIG_NAME).exists():
        if _has_checkpoint(run_dir):
            raise UserError(f"run folder {run_dir} already exists: add --resume to continue it, or choose another --name")
        restart = True  # killed before its first checkpoint: nothing to lose
    check_writable_dir(run_dir, "the run folder")
    model_config, train_config = resolve_configs(args)
    prepared = ensure_prepared(args.data, args.prepared_cache, progress=not args.no_progress)
    data = PreparedData.open(prepared)
    config = RunConfig(
        run_name=name, preset=args.preset, model=replace(model_config, num_tokens=len(data.vocab)), train=train_config,
        data={"source": str(Path(args.data).resolve()), "prepared": str(prepared.resolve()),
              "tokenizer_hash": data.tokenizer_hash},
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if restart:
        print(f"starting {run_dir} again: it has no checkpoint yet", flush=True)
        (run_dir / METRICS_NAME).unlink(missing_ok=True)  # rows of steps that were never saved
    write_json_atomic(run_dir / RUN_CONFIG_NAME, config.to_dict())  # makes the run folder (none if it fails)
    return Plan(run_dir, config, data, None)


def _finetune_plan(args: argparse.Namespace) -> Plan:
    """Resolve a new fine-tuning run on rank 0 (see `training.finetune.plan`)."""
    from perceiver_ar_music.training import finetune

    train = _overrides(args, TRAIN_FLAGS)
    train.pop("max_minutes", None)  # the schedule's own argument
    augment = _augment_overrides(args)
    found = finetune.plan(args.data, init_from=args.init_from, out=args.out, name=args.name, minutes=args.minutes,
                          mix_data=args.mix_data, mix_share=args.mix_share or finetune.MIX_SHARE,
                          train_overrides=train, augment_overrides=augment,
                          model_overrides=_overrides(args, MODEL_FLAGS), prepared_cache=args.prepared_cache,
                          progress=not args.no_progress)
    return Plan(found.run_dir, found.config, found.data, None, found.init_checkpoint, found.mix_data)


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether a run folder holds any complete checkpoint (step or best)."""
    from perceiver_ar_music.model import checkpoint as ckpt

    return bool(ckpt.step_checkpoints(run_dir)) or ckpt.is_complete(run_dir / ckpt.BEST_NAME)


def _find_run_dir(args: argparse.Namespace) -> Path:
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.training.run_folder import RUN_CONFIG_NAME

    if args.resume:
        return Path(args.resume)
    if args.name:
        return Path(args.out) / args.name
    out = Path(args.out)
    runs = [p for p in out.iterdir() if (p / RUN_CONFIG_NAME).is_file()] if out.is_dir() else []
    if not runs:
        raise UserError(f"no run to resume in {out}: pass --resume RUN_DIR or --name NAME")
    return max(runs, key=lambda p: (p / RUN_CONFIG_NAME).stat().st_mtime)


def _resume_plan(args: argparse.Namespace) -> Plan:
    """Resolve a resumed run on rank 0: its saved config with the allowed overrides, its data opened."""
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.data.store_builder import ensure_prepared
    from perceiver_ar_music.training.run_folder import plan_resume

    if args.init_from is not None:
        raise UserError("--init-from starts a new run; --resume continues one (it keeps its weights)")
    if args.mix_data:
        raise UserError("--mix-data cannot change when resuming (--mix-share can)")

    def check(config) -> None:
        changed = [f"--{dest.replace('_', '-')}" for dest, field in MODEL_FLAGS.items()
                   if getattr(args, dest) is not None and getattr(args, dest) != getattr(config.model, field)]
        if changed:
            raise UserError(f"{', '.join(changed)} cannot change when resuming (the model's shape is fixed)")

    prepared = None
    if args.data:
        prepared = ensure_prepared(args.data, args.prepared_cache, progress=not args.no_progress).resolve()
    found = plan_resume(_find_run_dir(args), _overrides(args, TRAIN_FLAGS), _augment_overrides(args), prepared, check)
    return Plan(found.run_dir, found.config, found.data, found.checkpoint, None, found.mix_data)


def run(args: argparse.Namespace) -> int:
    import signal

    from perceiver_ar_music.runtime import distributed
    from perceiver_ar_music.runtime.atomic import os_error_text
    from perceiver_ar_music.runtime.devices import pick_device
    from perceiver_ar_music.runtime.errors import UserError
    from perceiver_ar_music.training.train import TrainRun, train

    info = distributed.from_environment()
    device = pick_device(args.device, info.local_rank)
    distributed.init_process_group(info, device)
    try:
        plan = distributed.run_on_main(info, lambda: _resume_plan(args) if args.resume is not None else _fresh_plan(args))
        spec = TrainRun(
            run_dir=plan.run_dir,
            config=plan.config,
            data=plan.data,
            device=device,
            compile=args.compile,
            workers=args.workers if args.workers is not None else (4 if device.type == "cuda" else 0),
            resume_from=plan.resume_from,
            progress=not args.no_progress,
            init_from=plan.init_from,
            mix_data=plan.mix_data,
        )
        result = train(spec, info)
        if info.is_main and plan.config.init_from:
            from perceiver_ar_music.training.finetune import write_card

            write_card(plan.run_dir, plan.config, result.step, result.best_val_nats, result.ended_by)
    except OSError as exc:  # a full disk or a folder that became unwritable mid-run
        raise UserError(f"cannot write the run: {os_error_text(exc)}") from None
    finally:
        distributed.destroy_process_group()
    if not info.is_main:
        return 0 if result.stopped_by_signal is None else 128 + result.stopped_by_signal
    best = "none" if result.best_val_nats is None else f"{result.best_val_nats:.4f} nats/token"
    if result.stopped_by_signal is not None:
        name = signal.Signals(result.stopped_by_signal).name
        print(f"stopped by {name} at step {result.step}: saved {result.last_checkpoint}; continue with "
              f"'perceiver-music train --resume {spec.run_dir}'", flush=True)
        return 128 + result.stopped_by_signal
    if result.ended_by in ("time", "early stopping"):
        print(f"ended by {'the time budget' if result.ended_by == 'time' else 'early stopping'}", flush=True)
    print(f"finished {result.step} steps: last checkpoint {result.last_checkpoint}, best validation {best}", flush=True)
    return 0
