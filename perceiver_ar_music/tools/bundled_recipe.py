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
    """The bundled model's `train` flags: the script's COMMON array and its model's shape,
    without --data/--out (the caller's)."""
    text = script.read_text()
    common = shlex.split(re.search(r"^COMMON=\((.*?)\)", text, re.S | re.M).group(1))
    model = shlex.split(re.search(r"^\s+(--dim \d+ --depth .*)$", text, re.M).group(1))
    flags, skip = [], False
    for flag in common + model:
        if skip:
            skip = False
        elif flag in ("--data", "--out"):
            skip = True
        else:
            flags.append(flag)
    return flags


def recipe_configs(flags: list[str], vocab_size: int | None = None) -> tuple[PerceiverARConfig, TrainConfig]:
    """The model and training configs that `perceiver-music train FLAGS` resolves (the model's
    vocabulary set to `vocab_size`, the data's, when given)."""
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    cfg, tc = train_command.resolve_configs(parser.parse_args(flags))
    if vocab_size is not None:
        cfg = PerceiverARConfig.from_dict({**cfg.to_dict(), "num_tokens": vocab_size})
    return cfg, tc
