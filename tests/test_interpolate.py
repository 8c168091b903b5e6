"""Weight interpolation between a checkpoint and one trained on from it (tools/interpolate.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perceiver_ar_music.model.checkpoint import load_model, save_checkpoint
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.tools.interpolate import interpolate_checkpoints, interpolate_weights
from tests.tiny import ROOT, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = tiny_config(max_seq_len=32, num_latents=16)


def random_model(seed: int, **fields) -> PerceiverAR:
    torch.manual_seed(seed)
    model = PerceiverAR(tiny_config(max_seq_len=32, num_latents=16, **fields))
    torch.nn.init.normal_(model.to_logits.weight, std=0.1)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    folder = tmp_path_factory.mktemp("pair")
    tokenizer = load_tokenizer()
    tok = folder / "tokenizer.json"
    tokenizer.save(tok)
    base = save_checkpoint(folder / "base", random_model(0), tok, meta={"step": 10, "run_name": "base"})
    tuned = save_checkpoint(folder / "tuned", random_model(1), tok,
                            meta={"step": 20, "run_name": "tuned", "note_limits": {"max_polyphony": 12}})
    return base, tuned


def test_the_ends_are_the_two_checkpoints_and_the_middle_is_the_mean(pair, tmp_path: Path) -> None:
    base, tuned = pair
    b, t = load_model(base).model.state_dict(), load_model(tuned).model.state_dict()
    for alpha, expected in ((0.0, b), (1.0, t)):
        out = load_model(interpolate_checkpoints(base, tuned, alpha, tmp_path / f"a{alpha}")).model.state_dict()
        assert all(torch.equal(out[k], expected[k]) for k in expected)
    half = load_model(interpolate_checkpoints(base, tuned, 0.5, tmp_path / "half"))
    weights = half.model.state_dict()
    name = "to_logits.weight"
    assert not torch.equal(b[name], t[name])
    torch.testing.assert_close(weights[name], (b[name] + t[name]) / 2)
    assert half.meta["interpolated"]["alpha"] == 0.5 and half.meta["interpolated"]["tuned_run"] == "tuned"
    assert half.meta["note_limits"] == {"max_polyphony": 12}  # the tuned run's guards travel


def test_the_midpoint_is_a_working_model(pair, tmp_path: Path) -> None:
    """The model at alpha 0.5 runs, and its outputs differ from both ends'."""
    base, tuned = pair
    tokens = torch.randint(0, 100, (1, 32))
    outs = [load_model(interpolate_checkpoints(base, tuned, a, tmp_path / str(a))).model(tokens) for a in (0.0, 0.5, 1.0)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.allclose(outs[1], outs[0]) and not torch.allclose(outs[1], outs[2])


def test_mismatches_are_refused() -> None:
    a, b = random_model(0).state_dict(), random_model(1, depth=2).state_dict()
    with pytest.raises(UserError, match="different tensors"):
        interpolate_weights(a, b, 0.5)
    with pytest.raises(UserError, match="alpha"):
        interpolate_weights(a, a, 1.5)
    c = {k: v.clone() for k, v in a.items()}
    c["to_logits.weight"] = c["to_logits.weight"][:, :-1].clone()
    with pytest.raises(UserError, match="shape"):
        interpolate_weights(a, c, 0.5)
    ints = {"counter": torch.tensor([1])}
    with pytest.raises(UserError, match="not a float"):
        interpolate_weights(ints, {"counter": torch.tensor([2])}, 0.5)


def test_script_gives_a_one_line_error_for_different_shapes(pair, tmp_path: Path) -> None:
    base, _ = pair
    other = save_checkpoint(tmp_path / "other", random_model(2, depth=2), base / "tokenizer.json")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "interpolate_checkpoints.py"), str(base), str(other),
                             "--alpha", "0.5", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "different model configs" in result.stderr
    assert not (tmp_path / "x").exists()
