"""Checkpoints: round trip, run-folder resolution, clear errors, no pickle, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.model.checkpoint import find_checkpoint, load_model, save_checkpoint
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from tests.tiny import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = tiny_config(max_seq_len=32, num_latents=16)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> tuple[Path, str]:
    from perceiver_ar_music.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(path)
    return path, tokenizer.hash


def random_model(seed: int = 0) -> PerceiverAR:
    torch.manual_seed(seed)
    model = PerceiverAR(CONFIG)
    torch.nn.init.normal_(model.to_logits.weight, std=0.1)  # not the zero init: outputs differ per input
    return model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_and_interface(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    model = random_model()
    path = save_checkpoint(tmp_path / "ck", model, tok_path, tokenizer_hash=tok_hash, meta={"step": 7, "val_nats": 1.5})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "meta.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((path / "config.json").read_text()) == CONFIG.to_dict()
    loaded = load_model(path)
    assert same_weights(loaded.model, model)
    assert not loaded.model.training
    assert loaded.config == CONFIG
    assert loaded.tokenizer_path == path / "tokenizer.json"
    assert loaded.tokenizer_path.read_bytes() == tok_path.read_bytes()
    assert loaded.tokenizer_hash == tok_hash
    assert loaded.meta["step"] == 7 and loaded.meta["val_nats"] == 1.5
    assert loaded.meta["torch_version"] == torch.__version__ and loaded.meta["num_params"] == model.num_params()
    tokens = torch.randint(3, 200, (2, CONFIG.max_seq_len))
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens), model(tokens))


def test_hash_defaults_to_the_tokenizer_files(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    path = save_checkpoint(tmp_path / "ck", random_model(), tok_path)
    assert load_model(path).tokenizer_hash == tok_hash


def test_loading_never_unpickles(tmp_path: Path, tokenizer_file, monkeypatch) -> None:
    tok_path, tok_hash = tokenizer_file
    path = save_checkpoint(tmp_path / "ck", random_model(), tok_path, tokenizer_hash=tok_hash)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    load_model(path)


def test_run_folder_resolves_to_best_then_latest(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    run = tmp_path / "run"
    for step in (2, 10, 3):
        save_checkpoint(run / f"ckpt-{step}", random_model(step), tok_path, tokenizer_hash=tok_hash, meta={"step": step})
    (run / "ckpt-11").mkdir()  # incomplete: ignored
    assert find_checkpoint(run) == run / "ckpt-10"
    assert load_model(run).meta["step"] == 10
    save_checkpoint(run / "best", random_model(3), tok_path, tokenizer_hash=tok_hash, meta={"step": 3})
    assert find_checkpoint(run) == run / "best"
    assert same_weights(load_model(run).model, random_model(3))


def test_prune_keeps_the_newest(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    run = tmp_path / "run"
    for step in (1, 5, 10, 20):
        save_checkpoint(run / f"ckpt-{step}", random_model(), tok_path, tokenizer_hash=tok_hash)
    save_checkpoint(run / "best", random_model(), tok_path, tokenizer_hash=tok_hash)
    ckpt.prune_checkpoints(run, keep_last=2)
    assert sorted(p.name for p in run.iterdir()) == ["best", "ckpt-10", "ckpt-20"]


def one_line_error(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_clear_errors_for_bad_checkpoints(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    assert "does not exist" in one_line_error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "neither a checkpoint nor a run folder" in one_line_error(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_line_error(tmp_path / "file")

    good = save_checkpoint(tmp_path / "good", random_model(), tok_path, tokenizer_hash=tok_hash)

    def broken(name: str, damage) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        damage(path)
        return path

    assert "incomplete (missing meta.json)" in one_line_error(broken("no-meta", lambda p: (p / "meta.json").unlink()))
    weights = broken("bad-weights", lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 100))
    assert "model.safetensors is corrupt" in one_line_error(weights)
    truncated = broken("cut-weights", lambda p: (p / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:500]))
    assert "model.safetensors is corrupt" in one_line_error(truncated)
    assert "config.json is corrupt" in one_line_error(broken("bad-json", lambda p: (p / "config.json").write_text("{")))
    bad_key = broken("bad-key", lambda p: (p / "config.json").write_text(json.dumps({**CONFIG.to_dict(), "wings": 2})))
    assert "not a valid model config" in one_line_error(bad_key)
    wider = broken("wider", lambda p: (p / "config.json").write_text(json.dumps({**CONFIG.to_dict(), "dim": 64})))
    assert "does not match config.json" in one_line_error(wider)
    deeper = broken("deeper", lambda p: (p / "config.json").write_text(json.dumps({**CONFIG.to_dict(), "depth": 2})))
    assert "does not match config.json (missing layers.1" in one_line_error(deeper)


def test_optimizer_state_round_trip_continues_identically(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    tokens = torch.randint(3, 200, (2, CONFIG.max_seq_len))

    def step(model: PerceiverAR, optimizer: torch.optim.Optimizer) -> None:
        model(tokens).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    model = random_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        step(model, optimizer)
    path = save_checkpoint(tmp_path / "ck", model, tok_path, tokenizer_hash=tok_hash, trainer_state={"step": 3},
                           optimizer=optimizer)
    restored = random_model(seed=99)
    ckpt.load_weights(restored, path)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1e-2)
    ckpt.load_optimizer_state(restored_opt, path)
    step(model, optimizer)
    step(restored, restored_opt)
    assert same_weights(model, restored)
    assert ckpt.latest_resumable(tmp_path) is None  # not named ckpt-<step>
    shutil.copytree(path, tmp_path / "ckpt-3")
    assert ckpt.latest_resumable(tmp_path) == tmp_path / "ckpt-3"

    other = torch.optim.AdamW(PerceiverAR(PerceiverARConfig(**{**CONFIG.to_dict(), "dim": 64})).parameters())
    with pytest.raises(UserError, match="does not match the model's parameters"):
        ckpt.load_optimizer_state(other, path)


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, tokenizer_file, monkeypatch) -> None:
    tok_path, tok_hash = tokenizer_file
    run = tmp_path / "run"
    save_checkpoint(run / "best", random_model(1), tok_path, tokenizer_hash=tok_hash, meta={"step": 1})
    import safetensors.torch

    real = safetensors.torch.save_file

    def crash_after_writing(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_after_writing)
    with pytest.raises(OSError):
        save_checkpoint(run / "best", random_model(2), tok_path, tokenizer_hash=tok_hash, meta={"step": 2})
    monkeypatch.undo()
    assert load_model(run).meta["step"] == 1
    assert same_weights(load_model(run).model, random_model(1))
    assert sorted(p.name for p in run.iterdir()) == ["best"]


def test_recover_run_dir_after_a_kill_between_renames(tmp_path: Path, tokenizer_file) -> None:
    tok_path, tok_hash = tokenizer_file
    run = tmp_path / "run"
    save_checkpoint(run / "ckpt-4", random_model(), tok_path, tokenizer_hash=tok_hash)
    save_checkpoint(run / "best", random_model(1), tok_path, tokenizer_hash=tok_hash, meta={"step": 1})
    # The state a kill leaves between "best -> .best.old" and ".best.xyz.tmp -> best":
    (run / "best").rename(run / ".best.old")
    (run / ".best.xyz.tmp").mkdir()
    (run / ".best.xyz.tmp" / "model.safetensors").write_bytes(b"partial")
    (run / ".ckpt-5.abc.tmp").mkdir()
    assert find_checkpoint(run) == run / "ckpt-4"  # still loadable before any repair
    ckpt.recover_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["best", "ckpt-4"]
    assert load_model(run).meta["step"] == 1


ROOT = Path(__file__).resolve().parents[1]


def test_the_bundled_checkpoint_loads_bit_exactly_with_its_known_outputs() -> None:
    """State-dict names and the layer math are kept: every stored tensor lands unchanged, and the
    logits equal those the model gave before the layers were refactored (issue 14)."""
    from safetensors.torch import load_file

    from perceiver_ar_music.sampling.decoding import CachedDecoder

    folder = ROOT / "checkpoints" / "default"
    model = load_model(folder).model
    stored = load_file(str(folder / "model.safetensors"))
    state = model.state_dict()
    assert state.keys() == stored.keys()
    assert all(torch.equal(state[name], stored[name]) for name in stored)
    seq = torch.randint(3, model.config.num_tokens, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(seq)[0, -1]
        decoder = CachedDecoder(model, mode="dynamic")
        cached = decoder.prefill(seq[:, :30])
        for t in range(30, 40):
            cached = decoder.step(seq[:, t])
    known = torch.tensor([-1.0043, -1.567886, -1.011527, -1.0043])  # this model's logits computed with e6e2c73's code
    torch.testing.assert_close(full[:4], known, rtol=0, atol=1e-4)
    torch.testing.assert_close(cached[0, :4], known, rtol=0, atol=1e-4)
    assert abs(float(full.sum()) - 100.221) < 1e-2


def test_precision_is_chosen_at_load_time(tmp_path: Path, tokenizer_file) -> None:
    from perceiver_ar_music.runtime.devices import inference_dtype

    assert inference_dtype("cpu") == torch.float32 and inference_dtype(torch.device("cuda")) == torch.bfloat16
    model = random_model()
    save_checkpoint(tmp_path / "ck", model, tokenizer_file[0], tokenizer_hash=tokenizer_file[1])
    as_stored = load_model(tmp_path / "ck").model
    half = load_model(tmp_path / "ck", dtype=torch.bfloat16).model
    assert {p.dtype for p in as_stored.parameters()} == {torch.float32}
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.rotary.inv_freq.dtype == torch.float64 and not half.training
    assert all(torch.equal(a.to(torch.bfloat16), b) for a, b in zip(as_stored.parameters(), half.parameters()))
