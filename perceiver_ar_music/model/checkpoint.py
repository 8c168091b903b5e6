"""Checkpoints: a folder of JSON and safetensors files, written atomically, loaded without pickle.

A checkpoint folder holds::

    config.json            # PerceiverARConfig.to_dict()
    tokenizer.json         # the tokenizer (miditok params) the model was trained with
    model.safetensors      # the weights
    meta.json              # run name, step, validation nats, tokens seen, time, torch version, ...
    trainer_state.json     # optional, for resuming: step, sample position, RNG states, ...
    optimizer.safetensors  # optional, for resuming: the optimizer's per-parameter tensors

A run folder (``checkpoints/<run-name>/``) holds ``run_config.json``, ``metrics.jsonl``,
``ckpt-<step>/`` folders (the last few) and ``best/`` (the best validation loss, no optimizer).
Every folder is written under a temporary name and renamed into place, so a process killed at
any moment leaves each checkpoint either complete or absent (``recover_run_dir`` tidies up);
pruning renames a folder to a temporary name before deleting it. Loading refuses non-finite
weights, and resuming falls back to the newest checkpoint that is valid in full.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perceiver_ar_music.runtime.atomic import atomic_directory, write_json_atomic
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig

CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
WEIGHTS_NAME = "model.safetensors"
META_NAME = "meta.json"
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
REQUIRED_FILES = (CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, META_NAME)
BEST_NAME = "best"
FORMAT = "perceiver-ar-music/checkpoint"
FORMAT_VERSION = 1
_CKPT_NAME = re.compile(r"ckpt-(\d+)")


@dataclass
class LoadedModel:
    """A model loaded from a checkpoint, ready for inference."""

    model: PerceiverAR  # in eval mode, on the requested device
    config: PerceiverARConfig
    path: Path  # the checkpoint folder
    tokenizer_path: Path
    tokenizer_hash: str
    meta: dict[str, Any]


# ----------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | Path,
    model: PerceiverAR,
    tokenizer_path: str | Path,
    *,
    tokenizer_hash: str | None = None,
    meta: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write a checkpoint folder at `path` atomically (replacing an existing one) and return it.

    `model` is the plain module (not DDP- or compile-wrapped). `tokenizer_hash` defaults to the
    hash of `tokenizer_path` (which loads the tokenizer). `trainer_state` (JSON-able) and
    `optimizer` make the checkpoint resumable.
    """
    if tokenizer_hash is None:
        from perceiver_ar_music.data.tokenizer import load_tokenizer

        tokenizer_hash = load_tokenizer(tokenizer_path).hash
    full_meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_version": torch.__version__,
        "num_params": model.num_params(),
        **(meta or {}),
        "tokenizer_hash": tokenizer_hash,
    }
    path = Path(path)
    with atomic_directory(path) as tmp:
        write_json_atomic(tmp / CONFIG_NAME, model.config.to_dict())
        shutil.copyfile(tokenizer_path, tmp / TOKENIZER_NAME)
        weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        write_tensors(weights, tmp / WEIGHTS_NAME)
        if optimizer is not None:
            write_tensors(optimizer_tensors(optimizer), tmp / OPTIMIZER_NAME)
        if trainer_state is not None:
            write_json_atomic(tmp / TRAINER_STATE_NAME, trainer_state)
        write_json_atomic(tmp / META_NAME, full_meta)  # written last: a complete folder has it
    return path


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' `save_file`, with a write the file system refused (a full disk) raised as the
    OSError it is (safetensors reports it as its own error, with the OS error number in the text)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, path)
    except SafetensorError as exc:
        found = re.search(r"os error (\d+)", str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat ``state.<param index>.<name>`` tensors."""
    tensors = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = tensor.detach().contiguous().cpu()
    return tensors


# ----------------------------------------------------------------------------- finding


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``ckpt-<step>`` folder name, else None."""
    match = _CKPT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """Whether `path` is a folder with every required checkpoint file."""
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED_FILES)


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The complete ``ckpt-<step>`` folders of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in run_dir.iterdir() if checkpoint_step(p) is not None]
    return [p for _, p in sorted(found) if is_complete(p)]


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run that have a trainer and optimizer state, newest first."""
    return [path for path in reversed(step_checkpoints(run_dir))
            if (path / TRAINER_STATE_NAME).is_file() and (path / OPTIMIZER_NAME).is_file()]


def latest_resumable(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run that can be resumed (has trainer state)."""
    found = resumable_checkpoints(run_dir)
    return found[0] if found else None


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its best, else its latest)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a folder")
    if any((path / name).exists() for name in REQUIRED_FILES):
        missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise UserError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
        return path
    if is_complete(path / BEST_NAME):
        return path / BEST_NAME
    steps = step_checkpoints(path)
    if steps:
        return steps[-1]
    raise UserError(f"{path} is neither a checkpoint nor a run folder with a complete checkpoint "
                    f"(no {WEIGHTS_NAME}, {BEST_NAME}/ or ckpt-<step>/)")


# ----------------------------------------------------------------------------- loading


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; UserError if unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is corrupt ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupt (not a JSON object)")
    return data


MIN_BYTES_PER_PARAMETER = 2  # bfloat16, the smallest type weights are stored in


def read_config(checkpoint: Path) -> PerceiverARConfig:
    """The model config of a checkpoint folder; UserError if invalid, or if it describes a
    model larger than its weights file can hold (checked before anything is built)."""
    try:
        config = PerceiverARConfig.from_dict(read_json(checkpoint / CONFIG_NAME))
    except (TypeError, ValueError) as exc:
        raise UserError(f"{checkpoint / CONFIG_NAME} is not a valid model config ({exc})") from None
    try:
        stored = (checkpoint / WEIGHTS_NAME).stat().st_size
    except OSError:
        raise UserError(f"{checkpoint / WEIGHTS_NAME} is missing") from None
    if config.min_parameters() * MIN_BYTES_PER_PARAMETER > stored:
        raise UserError(f"{checkpoint / WEIGHTS_NAME} is corrupt or does not match {CONFIG_NAME} (which describes at "
                        f"least {config.min_parameters():,} parameters; the file holds {stored:,} bytes)")
    return config


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (on CPU); UserError if missing or corrupt."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except Exception as exc:  # safetensors raises its own error type for damaged files
        raise UserError(f"{path} is corrupt ({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})") from None


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, else None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def read_weights(model: PerceiverAR, checkpoint: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, checked to fit `model` and to be finite; UserError if not."""
    weights = read_tensors(checkpoint / WEIGHTS_NAME)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                  else f"shape of {wrong[0]}")
        raise UserError(f"{checkpoint / WEIGHTS_NAME} does not match {CONFIG_NAME} ({detail})")
    bad = first_non_finite(weights)
    if bad is not None:
        raise UserError(f"{checkpoint / WEIGHTS_NAME} holds non-finite weights (NaN or inf in {bad}): "
                        f"the run diverged before it was saved; use an earlier checkpoint")
    return weights


def load_weights(model: PerceiverAR, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `model`; UserError if they do not fit its config or are
    not finite."""
    model.load_state_dict(read_weights(model, checkpoint))


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load the model of a checkpoint folder or run folder (see `find_checkpoint`) in eval mode,
    its weights on `device` in `dtype` (None: as stored, float32). The rotary tables stay float64."""
    checkpoint = find_checkpoint(path)
    config = read_config(checkpoint)
    meta = read_json(checkpoint / META_NAME)
    tokenizer_hash = meta.get("tokenizer_hash")
    if not isinstance(tokenizer_hash, str):
        raise UserError(f"{checkpoint / META_NAME} is corrupt (no tokenizer_hash)")
    model = PerceiverAR(config)
    load_weights(model, checkpoint)
    model.to(device, dtype).eval()
    return LoadedModel(model, config, checkpoint, checkpoint / TOKENIZER_NAME, tokenizer_hash, meta)


def read_optimizer_state(checkpoint: Path, params: list[torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """The per-parameter optimizer state of a checkpoint, checked against `params` and for
    finiteness; UserError if it does not fit."""
    tensors = read_tensors(checkpoint / OPTIMIZER_NAME)
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        for key, tensor in tensors.items():
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    except ValueError:
        raise UserError(f"{checkpoint / OPTIMIZER_NAME} is corrupt (bad tensor names)") from None
    for index, values in state.items():
        if index < 0 or index >= len(params) or any(
            t.dim() > 0 and t.shape != params[index].shape for t in values.values()
        ):
            raise UserError(f"{checkpoint / OPTIMIZER_NAME} does not match the model's parameters")
    if first_non_finite(tensors) is not None:
        raise UserError(f"{checkpoint / OPTIMIZER_NAME} holds non-finite values (NaN or inf)")
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Path,
                         state: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
    """Restore the per-parameter optimizer state saved by `save_checkpoint` (same parameters);
    `state` is what `read_optimizer_state` returned, if already read."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if state is None:
        state = read_optimizer_state(checkpoint, params)
    current = optimizer.state_dict()
    current["state"] = state
    optimizer.load_state_dict(current)


# ----------------------------------------------------------------------------- run folders


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` ``ckpt-<step>`` folders.

    Each is first renamed to ``.ckpt-<step>.pruned.tmp`` (one atomic step), so a kill during the
    deletion leaves a hidden temporary that `recover_run_dir` removes, never a half-deleted
    ``ckpt-<step>``.
    """
    for path in step_checkpoints(run_dir)[:-keep_last]:
        doomed = path.with_name(f".{path.name}.pruned.tmp")
        if doomed.exists():
            shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def recover_run_dir(run_dir: Path) -> None:
    """Tidy a run folder after a crash: restore a folder caught between the two renames of a
    replacement (``.<name>.old`` without ``<name>``), delete stale temporaries (pruned folders
    among them) and incomplete ``ckpt-<step>`` folders."""
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if checkpoint_step(entry) is not None and entry.is_dir() and not is_complete(entry):
            shutil.rmtree(entry, ignore_errors=True)  # half-deleted by an older, in-place prune
            continue
        if not entry.name.startswith("."):
            continue
        if entry.name.endswith(".old") and entry.is_dir():
            original = run_dir / entry.name[1 : -len(".old")]
            if not original.exists() and is_complete(entry):
                entry.rename(original)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.endswith(".tmp"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
