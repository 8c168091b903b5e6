"""The bundled model's training recipe as `train` flags, read from scripts/train_bundled_model.sh
(its one home), and the configs they resolve to. For the benchmark and numerics scripts."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from perceiver_ar_music.tools import REPO as ROOT

from perceiver_ar_music.commands import train as train_command
from perceiver_ar_music.model.perceiver_ar import PerceiverARConfig
from perceiver_ar_music.training.presets import TrainConfig

RECIPE = ROOT / "scripts" / "train_bundled_model.sh"


def bundled_flags(script: Path = RECIPE) -> list[str]:
    """The bundled recipe's `train` flags for a run of the bundled model's shape from scratch: the
    script's ARGS array (its --init-from, --data, --out and --name left out, $STEPS read from its
    default) and the shape of the checkpoint it starts from (the bundled model's shape)."""
    import json

    text = script.read_text()
    args = shlex.split(re.search(r"^ARGS=\((.*?)\)", text, re.S | re.M).group(1))
    steps = re.search(r"^STEPS=\$\{STEPS:-(\d+)\}", text, re.M).group(1)
    flags, skip = [], False
    for flag in args:
        if skip:
            skip = False
        elif flag in ("--init-from", "--data", "--out", "--name"):
            skip = True
        else:
            flags.append(steps if flag == "$STEPS" else flag)
    shape = json.loads((ROOT / "checkpoints" / "default" / "config.json").read_text())
    for key in ("max_seq_len", "num_latents", "dim", "depth", "heads", "dim_head"):
        flags += [f"--{key.replace('_', '-')}", str(shape[key])]
    return ["--preset", "tiny", *flags]


def recipe_configs(flags: list[str], vocab_size: int | None = None) -> tuple[PerceiverARConfig, TrainConfig]:
    """The model and training configs that `perceiver-music train FLAGS` resolves (the model's
    vocabulary set to `vocab_size`, the data's, when given)."""
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    cfg, tc = train_command.resolve_configs(parser.parse_args(flags))
    if vocab_size is not None:
        cfg = PerceiverARConfig.from_dict({**cfg.to_dict(), "num_tokens": vocab_size})
    return cfg, tc
