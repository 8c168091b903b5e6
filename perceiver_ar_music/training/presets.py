"""Model and optimizer presets as data, and the resolved run configuration saved with a run.

A preset is a model shape (`PerceiverARConfig` fields) plus training defaults (`TrainConfig`).
Every field can be overridden; the resolved pair, with the run's name and data, is one `RunConfig`:
written to ``run_config.json`` in the run folder, read back by ``--resume`` and handed to the
trainer as it is. Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from perceiver_ar_music.training.augment import AugmentConfig

_AUGMENT = AugmentConfig()  # the home of the augmentation ranges' defaults
# `--precision` of training and scoring (resolved per device by `devices.autocast_dtype`).
PRECISIONS = ("auto", "bf16", "fp32")

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
    weight_decay: float = 0.1  # AdamW, on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    z_loss: float = 1e-4
    augment: bool = True  # random transposition, time stretch (and velocities) of training windows
    max_transpose: int = _AUGMENT.max_transpose  # semitones, both ways
    stretch: float = 0.05  # time stretch factor drawn from [1 - stretch, 1 + stretch]
    stretch_windows: float = _AUGMENT.stretch_windows  # share of windows that are stretched (the rest keep the piece's time)
    velocity_windows: float = _AUGMENT.velocity_windows  # share of windows whose velocities are varied (for corpora without dynamics)
    velocity_shift: int = _AUGMENT.max_velocity_shift  # in those windows: one random shift, MIDI units both ways
    velocity_noise: float = _AUGMENT.velocity_noise  # and each note's own change, std in MIDI units
    perform_windows: float = _AUGMENT.perform_windows  # share of windows made to look played (tempo drift, jitter, pedal, dynamics)
    onset_jitter: float = _AUGMENT.onset_jitter  # in those windows: std of each note's timing, seconds
    tempo_drift: float = _AUGMENT.tempo_drift  # largest tempo change within a phrase (fraction)
    velocity_arc: float = _AUGMENT.velocity_arc  # dynamic arc over a phrase, MIDI units both ways
    pedal_hold: float = _AUGMENT.pedal_hold  # seconds a note may be held longer by the pedal-like lengthening
    eval_every: int = 1000  # steps between validations (and best-checkpoint updates)
    eval_windows: int = 512  # validation windows scored each time, evenly spread; 0: all
    save_every: int = 1000  # steps between checkpoints
    keep_last: int = 3  # checkpoints kept besides best/
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
            (self.weight_decay >= 0, "weight decay must be >= 0"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must be in [0, 1)"),
            (self.grad_clip >= 0, "gradient clip must be >= 0"),
            (self.z_loss >= 0, "z-loss must be >= 0"),
            (self.max_transpose >= 0, "max transpose must be >= 0"),
            (0 <= self.stretch < 1, "stretch must be in [0, 1)"),
            (0 <= self.stretch_windows <= 1, "stretch windows must be in [0, 1]"),
            (0 <= self.velocity_windows <= 1, "velocity windows must be in [0, 1]"),
            (0 <= self.velocity_shift <= 127 and 0 <= self.velocity_noise <= 127,
             "velocity shift and noise must be in [0, 127]"),
            (0 <= self.perform_windows <= 1 and 0 <= self.onset_jitter <= 1 and 0 <= self.tempo_drift < 1
             and 0 <= self.velocity_arc <= 127 and 0 <= self.pedal_hold <= 10,
             "perform windows must be in [0, 1], onset jitter in [0, 1] s, tempo drift in [0, 1), velocity arc "
             "in [0, 127] and pedal hold in [0, 10] s"),
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
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown training config keys: {', '.join(unknown)}")
        return cls(**data)


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


def resolve(preset: str, model_overrides: dict[str, Any], train_overrides: dict[str, Any]) -> tuple["PerceiverARConfig", TrainConfig]:
    """A preset with the given fields replaced (None values are ignored); ValueError if invalid."""
    from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (available: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    model = PerceiverARConfig.from_dict({**base.model, **_set(model_overrides)})
    return model, replace(base.train, **_set(train_overrides))


def _set(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if v is not None}


@dataclass(frozen=True)
class RunConfig:
    """One training run, resolved: ``run_config.json`` as data, given to the trainer as it is."""

    run_name: str
    model: "PerceiverARConfig"
    train: TrainConfig
    preset: str | None = None
    data: dict[str, str] = field(default_factory=dict)  # source, prepared (the folder), tokenizer_hash
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"run_name": self.run_name, "preset": self.preset, "model": self.model.to_dict(),
                "train": self.train.to_dict(), "data": dict(self.data), "created": self.created}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Read back `to_dict`'s output; KeyError, TypeError or ValueError if it is not one."""
        from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig

        return cls(data["run_name"], PerceiverARConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"]),
                   data.get("preset"), dict(data["data"]), data.get("created", ""))
