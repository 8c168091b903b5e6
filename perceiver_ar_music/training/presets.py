"""Model and optimizer presets as data, and the resolved run configuration saved with a run.

A preset is a model shape (`PerceiverARConfig` fields) plus training defaults (`TrainConfig`).
Every field can be overridden; the resolved pair, with the run's name and data, is one `RunConfig`:
written to ``run_config.json`` in the run folder, read back by ``--resume`` and handed to the
trainer as it is. Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from perceiver_ar_music.runtime.cli_types import PRECISIONS
from perceiver_ar_music.training.augment import AugmentConfig

# `--precision` of training and scoring (resolved per device by `devices.autocast_dtype`).

if TYPE_CHECKING:
    from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule, batching, evaluation and checkpointing of one training run."""

    batch_size: int = 16  # windows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 1000  # linear warmup from 0
    max_steps: int = 50_000
    max_minutes: float | None = None  # wall-clock budget: the run ends (and the lr decays) by time; None: by steps
    weight_decay: float = 0.1  # AdamW, on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    z_loss: float = 1e-4
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # of training windows; None: off
    eval_every: int = 1000  # steps between validations (and best-checkpoint updates)
    eval_windows: int = 512  # validation windows scored each time, evenly spread; 0: all
    save_every: int = 1000  # steps between checkpoints
    keep_last: int = 3  # checkpoints kept besides best/
    patience: int = 0  # early stopping: end after this many validations without a new best (0: never)
    mix_share: float = 0.0  # share of training windows drawn from the run's mix data (keeps a base model's skills)
    log_every: int = 10  # steps between metrics.jsonl rows
    seed: int = 0
    precision: str = "auto"  # autocast of training and validation: auto (bf16 where fast), bf16 or fp32

    def __post_init__(self) -> None:
        checks = [
            (self.batch_size >= 1, "batch size must be >= 1"),
            (self.grad_accum >= 1, "gradient accumulation must be >= 1"),
            (self.lr > 0, "learning rate must be > 0"),
            (0 <= self.min_lr_ratio <= 1, "min lr ratio must be in [0, 1]"),
            (self.warmup_steps >= 0, "warmup must be >= 0 steps"),
            (self.max_steps >= 1, "max steps must be >= 1"),
            (self.max_minutes is None or self.max_minutes > 0, "max minutes must be > 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (0 <= self.mix_share < 1, "mix share must be in [0, 1)"),
            (self.weight_decay >= 0, "weight decay must be >= 0"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must be in [0, 1)"),
            (self.grad_clip >= 0, "gradient clip must be >= 0"),
            (self.z_loss >= 0, "z-loss must be >= 0"),
            (self.eval_every >= 1 and self.save_every >= 1 and self.log_every >= 1,
             "eval, save and log intervals must be >= 1 step"),
            (self.eval_windows >= 0, "eval windows must be >= 0 (0: all)"),
            (self.keep_last >= 1, "keep last must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Read `to_dict`'s output, or a ``run_config.json`` written before the augmentation was
        nested (a flag ``augment`` and flat range fields); ValueError if it is neither."""
        data = dict(data)
        legacy = {key: data.pop(key) for key in _LEGACY_AUGMENT if key in data}
        augment = data.pop("augment", True if legacy else {})
        if isinstance(augment, bool):
            augment = _legacy_augment(legacy) if augment else None
        elif augment is not None:
            augment = AugmentConfig(**_known(AugmentConfig, augment, "augmentation"))
        return cls(**_known(cls, data, "training"), augment=augment)


# Flat fields of run configs saved before the augmentation was nested -> AugmentConfig fields
# (``stretch`` F was the range [1 - F, 1 + F]).
_LEGACY_AUGMENT = {
    "max_transpose": "max_transpose", "stretch": None, "stretch_windows": "stretch_windows",
    "velocity_windows": "velocity_windows", "velocity_shift": "max_velocity_shift",
    "velocity_noise": "velocity_noise", "perform_windows": "perform_windows", "onset_jitter": "onset_jitter",
    "tempo_drift": "tempo_drift", "velocity_arc": "velocity_arc", "pedal_hold": "pedal_hold",
}


def _legacy_augment(flat: dict[str, Any]) -> AugmentConfig:
    """The AugmentConfig an old flat run config meant (missing fields keep today's defaults)."""
    fields_ = {new: flat[old] for old, new in _LEGACY_AUGMENT.items() if new is not None and old in flat}
    if "stretch" in flat:
        fields_.update(min_stretch=1.0 - flat["stretch"], max_stretch=1.0 + flat["stretch"])
    return AugmentConfig(**fields_)


def _known(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"the {what} config is not an object")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} config keys: {', '.join(unknown)}")
    return data


def with_overrides(tc: TrainConfig, train_overrides: dict[str, Any], augment_overrides: dict[str, Any]) -> TrainConfig:
    """`tc` with the given training and augmentation fields replaced (None values are ignored);
    ``augment=False`` among the training fields turns augmentation off, augmentation fields given
    while it is off turn it on from the defaults. ValueError if the result is invalid."""
    train, augment = _set(train_overrides), _set(augment_overrides)
    if train.pop("augment", True) is False:
        return replace(tc, **train, augment=None)
    if augment:
        return replace(tc, **train, augment=replace(tc.augment or AugmentConfig(), **augment))
    return replace(tc, **train)


@dataclass(frozen=True)
class Preset:
    """A named model shape with its training defaults."""

    description: str
    model: dict[str, Any]  # PerceiverARConfig fields (the rest keep their defaults)
    train: TrainConfig


PRESETS: dict[str, Preset] = {
    "maestro": Preset(
        "paper-like MAESTRO model (context 4096, 2048 latents, 12 layers, width 1024, 16 heads x 64)",
        dict(dim=1024, depth=12, heads=16, dim_head=64, max_seq_len=4096, num_latents=2048,
             cross_attn_dropout=0.5, dropout=0.1),
        TrainConfig(batch_size=8, grad_accum=2, lr=2e-4, warmup_steps=2000, max_steps=100_000,
                    eval_every=1000, eval_windows=256, save_every=1000),
    ),
    "small": Preset(
        "one consumer GPU (context 2048, 1024 latents, width 512, 8 layers, 8 heads; 28.7M parameters)",
        dict(dim=512, depth=8, heads=8, dim_head=64, max_seq_len=2048, num_latents=1024,
             cross_attn_dropout=0.5, dropout=0.1),
        TrainConfig(batch_size=16, lr=3e-4, warmup_steps=1000, max_steps=50_000,
                    eval_every=1000, eval_windows=512, save_every=1000),
    ),
    "tiny": Preset(
        "CPU tests and demos (context 256, 128 latents, width 128, 3 layers)",
        dict(dim=128, depth=3, heads=4, dim_head=32, max_seq_len=256, num_latents=128,
             cross_attn_dropout=0.25, dropout=0.0),
        TrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, max_steps=300, weight_decay=0.01,
                    eval_every=50, eval_windows=64, save_every=50, log_every=5),
    ),
}


def resolve(preset: str, model_overrides: dict[str, Any], train_overrides: dict[str, Any],
            augment_overrides: dict[str, Any] | None = None) -> tuple["PerceiverARConfig", TrainConfig]:
    """A preset with the given fields replaced (as `with_overrides`); ValueError if invalid."""
    from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (available: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    model = PerceiverARConfig.from_dict({**base.model, **_set(model_overrides)})
    return model, with_overrides(base.train, train_overrides, augment_overrides or {})


def _set(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if v is not None}


@dataclass(frozen=True)
class RunConfig:
    """One training run, resolved: ``run_config.json`` as data, given to the trainer as it is."""

    run_name: str
    model: "PerceiverARConfig"
    train: TrainConfig
    preset: str | None = None
    data: dict[str, str] = field(default_factory=dict)  # source, prepared (the folder), tokenizer_hash, mix_prepared
    created: str = ""
    init_from: dict[str, Any] | None = None  # fine-tuned from: checkpoint (path), run_name, step; None: random init

    def to_dict(self) -> dict[str, Any]:
        return {"run_name": self.run_name, "preset": self.preset, "model": self.model.to_dict(),
                "train": self.train.to_dict(), "data": dict(self.data), "created": self.created,
                "init_from": self.init_from}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Read back `to_dict`'s output; KeyError, TypeError or ValueError if it is not one."""
        from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig

        init_from = data.get("init_from")
        if init_from is not None and not (isinstance(init_from, dict) and isinstance(init_from.get("checkpoint"), str)):
            raise ValueError("init_from has no checkpoint")
        return cls(data["run_name"], PerceiverARConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"]),
                   data.get("preset"), dict(data["data"]), data.get("created", ""), init_from)
