"""A checkpoint's config.json is checked before any model is built: types, ranges, a finite
positive wavelength, a parameter count under the limit and within what its weights file holds.
Each bad value is one line and exit 2, in well under a second (no 1.5 TB allocation, no layer
by layer build of a million layers)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from perceiver_ar_music.cli import main
from perceiver_ar_music.model.perceiver_ar import MAX_PARAMETERS, PerceiverAR, PerceiverARConfig
from perceiver_ar_music.data.tokenizer import load_tokenizer
from tests.tiny import tiny_config, write_tiny_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), load_tokenizer())


# (config.json changes, words of the error)
ROWS = [
    ({"dim": 10**9}, "parameters (the limit is"),
    ({"depth": 10**6}, "does not match config.json (which describes"),
    ({"depth": 10**8}, "parameters (the limit is"),
    ({"num_tokens": 10**12}, "parameters (the limit is"),
    ({"dim": 4096, "depth": 24, "heads": 32, "dim_head": 128}, "does not match config.json (which describes"),
    ({"dim": 32.5}, "dim must be a whole number"),
    ({"dim": 1e9}, "dim must be a whole number"),
    ({"dim": True}, "dim must be a whole number"),
    ({"depth": "3"}, "depth must be a whole number"),
    ({"heads": None}, "heads must be a whole number"),
    ({"max_seq_len": [96]}, "max_seq_len must be a whole number"),
    ({"rotary_max_wavelength": "long"}, "rotary_max_wavelength must be a positive number"),
    ({"rotary_max_wavelength": -4.0}, "rotary_max_wavelength must be a positive number"),
    ({"rotary_max_wavelength": 0}, "rotary_max_wavelength must be a positive number"),
    ({"rotary_max_wavelength": float("nan")}, "rotary_max_wavelength must be a positive number"),
    ({"rotary_max_wavelength": float("inf")}, "rotary_max_wavelength must be a positive number"),
    ({"dropout": float("nan")}, "dropout must be a finite number"),
    ({"rotary_fraction": "half"}, "rotary_fraction must be a finite number"),
    ({"ff_mult": 0}, "ff_mult must be positive"),
    ({"num_latents": 10**6}, "num_latents must be in 1..max_seq_len"),
    ({"depth": -1}, "depth >= 0"),
    ({"width": 3}, "unknown model config keys"),
]


@pytest.mark.parametrize("change, words", ROWS)
def test_a_bad_config_is_refused_before_building(good, tmp_path, capsys, change, words):
    checkpoint = tmp_path / "bad"
    shutil.copytree(good, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, **change}))
    started = time.monotonic()
    code = main(["generate", "--checkpoint", str(checkpoint), "--length", "4", "--no-audio", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0] and "config.json" in err[0], err
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()


def test_the_estimate_is_a_close_lower_bound():
    for config in (PerceiverARConfig(), tiny_config(max_seq_len=96, num_latents=48)):
        actual = sum(p.numel() for p in PerceiverAR(config).parameters())
        assert 0.98 * actual <= config.min_parameters() <= actual
    assert PerceiverARConfig(dim=1024, depth=12, heads=16, dim_head=64).min_parameters() < MAX_PARAMETERS
