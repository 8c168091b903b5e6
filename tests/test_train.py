"""Training: schedule, presets, exact resume, NaN stop, signals, kill -9, the train command, learning.

Models here are micro-sized (width 32, context 64) so each step takes milliseconds; torch runs on
one thread (a busy 2-core machine makes multi-threaded tiny ops very slow).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.cli import main
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.model.perceiver_ar import PerceiverAR
from perceiver_ar_music.training.presets import PRESETS, RunConfig, TrainConfig, resolve
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.training.train import (
    StopRequest,
    TrainingDiverged,
    lr_at,
    make_optimizer,
    stop_on_signals,
    train,
)
from tests.tiny import make_run, metrics, MICRO_FLAGS, prepared_corpus, same_weights, subprocess_env, tiny_config, write_corpus

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- schedule and presets


def test_warmup_then_cosine_to_the_minimum() -> None:
    tc = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(1e-4)
    assert lr_at(4, tc) == pytest.approx(5e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(10, tc) == pytest.approx(1e-3)
    assert lr_at(60, tc) == pytest.approx(0.55e-3)  # half way down the cosine
    assert lr_at(110, tc) == pytest.approx(1e-4)
    assert lr_at(500, tc) == pytest.approx(1e-4)
    lrs = [lr_at(s, tc) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(0, TrainConfig(warmup_steps=0, lr=2e-3, max_steps=5)) == pytest.approx(2e-3)


def test_presets() -> None:
    small, _ = resolve("small", {}, {})
    assert PerceiverAR(small).num_params() == pytest.approx(28.5e6, rel=0.01)
    maestro, _ = resolve("maestro", {}, {})
    assert (maestro.max_seq_len, maestro.num_latents, maestro.depth, maestro.dim, maestro.heads, maestro.dim_head) == (
        4096, 2048, 12, 1024, 16, 64)
    tiny, tiny_train = resolve("tiny", {"dim": 64}, {"lr": 5e-4, "seed": None})
    assert tiny.dim == 64 and tiny.max_seq_len == 256 and tiny_train.lr == 5e-4 and tiny_train.seed == 0
    for preset in PRESETS.values():
        assert preset.train.z_loss == 1e-4 and preset.train.grad_clip == 1.0
    with pytest.raises(ValueError, match="num_latents"):
        resolve("tiny", {"num_latents": 1000}, {})
    with pytest.raises(ValueError, match="learning rate"):
        resolve("tiny", {}, {"lr": 0.0})


def test_weight_decay_only_on_matrices() -> None:
    model = PerceiverAR(tiny_config())
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_the_fused_cpu_optimizer_matches_the_plain_adamw_loop() -> None:
    """The training optimizer (fused AdamW) against torch's one-op-at-a-time AdamW, same groups."""
    torch.manual_seed(0)
    fused_model = PerceiverAR(tiny_config())
    plain_model = PerceiverAR(tiny_config())
    plain_model.load_state_dict(fused_model.state_dict())
    tc = TrainConfig(lr=1e-2, weight_decay=0.1)
    fused = make_optimizer(fused_model, tc, torch.device("cpu"))
    assert fused.defaults["fused"]
    matrices = [q for q in plain_model.parameters() if q.dim() >= 2]
    rest = [q for q in plain_model.parameters() if q.dim() < 2]
    plain = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                              lr=1e-2, betas=(tc.beta1, tc.beta2), foreach=False)
    start = [p.detach().clone() for p in fused_model.parameters()]
    for _ in range(3):
        for model in (fused_model, plain_model):
            for p in model.parameters():
                p.grad = torch.sin(p.detach() * 7 + 1)  # the same gradients for both
        fused.step()
        plain.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(fused_model.parameters(), start))  # every tensor moved


# ----------------------------------------------------------------------------- the loop


def test_a_run_logs_validates_and_keeps_the_best(tmp_path: Path, corpus: Path) -> None:
    result = train(make_run(tmp_path / "run", corpus, max_steps=6, save_every=4, keep_last=1))
    run = tmp_path / "run"
    rows = metrics(run)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["tokens"] > 0 and r["lr"] > 0 for r in steps)
    # scored targets: every latent position of 6 steps x 2 x 2 windows, less the padding of
    # windows that end in a piece's opening
    assert 0.5 * result.model.config.num_latents * 2 * 2 * 6 < steps[-1]["tokens"] <= result.model.config.num_latents * 2 * 2 * 6
    vals = [r for r in rows if "val_nats" in r]
    assert [r["step"] for r in vals] == [3, 6]
    assert vals[0]["val_bits"] == pytest.approx(vals[0]["val_nats"] / math.log(2))
    assert sorted(p.name for p in run.iterdir()) == ["best", "ckpt-6", "metrics.jsonl"]  # ckpt-4 pruned
    best = ckpt.load_model(run)
    assert best.path == run / "best"
    assert best.meta["val_nats"] == pytest.approx(min(r["val_nats"] for r in vals))
    assert best.meta["step"] == min(vals, key=lambda r: r["val_nats"])["step"]
    final = ckpt.load_model(run / "ckpt-6")
    assert same_weights(final.model, result.model)
    assert final.meta["tokens_seen"] == steps[-1]["tokens"]
    assert result.best_val_nats == pytest.approx(best.meta["val_nats"])
    limits = best.meta["note_limits"]  # the sampler's guard limits, from the training pieces
    assert limits["max_note_seconds"] > 0 and limits["max_polyphony"] >= 1 and limits["notes"] > 0


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, corpus: Path) -> None:
    straight = train(make_run(tmp_path / "a", corpus, max_steps=6))
    stop = StopRequest()
    first = train(make_run(tmp_path / "b", corpus, max_steps=6), stop=stop,
                  on_step=lambda step: stop.set() if step == 4 else None)
    assert first.step == 4 and first.stopped_by_signal == signal.SIGINT
    assert first.last_checkpoint == tmp_path / "b" / "ckpt-4"
    resume_from = ckpt.latest_resumable(tmp_path / "b")
    assert resume_from == tmp_path / "b" / "ckpt-4"
    resumed = train(make_run(tmp_path / "b", corpus, max_steps=6, resume_from=resume_from))
    assert resumed.step == 6
    straight_rows, resumed_rows = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in straight_rows]
    for a, b in zip(straight_rows, resumed_rows):
        assert a.get("loss") == b.get("loss") and a.get("val_nats") == b.get("val_nats"), (a, b)
        assert a.get("grad_norm") == b.get("grad_norm") and a.get("tokens") == b.get("tokens")
    assert same_weights(straight.model, resumed.model)


def test_resuming_with_another_world_size_keeps_the_sample_position(tmp_path: Path, corpus: Path) -> None:
    first = train(make_run(tmp_path / "r", corpus, max_steps=2, grad_accum=1, save_every=2))
    state = ckpt.read_json(first.last_checkpoint / ckpt.TRAINER_STATE_NAME)
    assert state["progress"]["samples_per_rank"] == 4 and state["world_size"] == 1
    assert len(state["rng"]) == 1 and state["rng"][0]["cpu"]
    assert state["progress"]["step"] == 2


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, corpus: Path, monkeypatch) -> None:
    import perceiver_ar_music.training.loss as loss_module

    real = loss_module.lm_loss
    calls = {"n": 0}

    def poisoned(logits, targets, mask, z_loss):
        calls["n"] += 1
        loss, nats = real(logits, targets, mask, z_loss)
        if calls["n"] > 2 * 4:  # from step 5 on (2 micro-batches per step)
            return loss * float("nan"), nats * float("nan")
        return loss, nats

    monkeypatch.setattr(loss_module, "lm_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(make_run(run, corpus, max_steps=10, save_every=2, eval_every=100))
    message = str(info.value)
    assert "\n" not in message
    assert "nan at step 5" in message and f"last good checkpoint is {run / 'ckpt-4'}" in message
    assert info.value.exit_code == 1
    assert ckpt.latest_resumable(run) == run / "ckpt-4"
    assert not (run / "ckpt-5").exists() and not (run / "ckpt-6").exists()
    loaded = ckpt.load_model(run)
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


@pytest.mark.parametrize("huge_lr", [1e38, 1e20])  # (--lr itself is capped at 1 by the command line)
def test_a_huge_lr_never_saves_bad_weights_and_resume_recovers(tmp_path: Path, corpus: Path, huge_lr: float) -> None:
    run = tmp_path / "run"
    train(make_run(run, corpus, max_steps=2, save_every=1, eval_every=1, keep_last=10))
    good = ckpt.latest_resumable(run)
    assert good == run / "ckpt-2"
    with pytest.raises(TrainingDiverged) as info:
        train(make_run(run, corpus, max_steps=8, save_every=1, eval_every=1, keep_last=10, lr=huge_lr,
                       warmup_steps=0, resume_from=good))
    message = str(info.value)
    assert "\n" not in message and "stopped without saving" in message
    last_good = Path(re.search(r"last good checkpoint is (\S+)", message).group(1).rstrip(" ("))
    for folder in [*ckpt.step_checkpoints(run), run / ckpt.BEST_NAME]:  # every checkpoint called good is good
        loaded = ckpt.load_model(folder)
        assert all(torch.isfinite(p).all() for p in loaded.model.parameters()), folder
    assert last_good in ckpt.step_checkpoints(run)

    # Resuming with a sane learning rate recovers from the last good checkpoint.
    resumed = train(make_run(run, corpus, max_steps=8, save_every=1, eval_every=4, keep_last=10,
                             resume_from=ckpt.latest_resumable(run)))
    assert resumed.step == 8
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in rows)


def test_resume_falls_back_past_corrupt_checkpoints(tmp_path: Path, corpus: Path, capsys) -> None:
    run = tmp_path / "run"
    train(make_run(run, corpus, max_steps=4, save_every=1, eval_every=100, keep_last=10))
    (run / "ckpt-4" / ckpt.TRAINER_STATE_NAME).write_text(json.dumps(
        {"progress": {"step": 4}, "world_size": 1, "rng": [{"cpu": "not base64!"}]}))
    from safetensors.torch import load_file, save_file

    weights = load_file(run / "ckpt-3" / ckpt.WEIGHTS_NAME)
    next(iter(weights.values()))[0] = float("nan")
    save_file(weights, run / "ckpt-3" / ckpt.WEIGHTS_NAME)
    (run / "ckpt-2" / ckpt.OPTIMIZER_NAME).write_bytes(b"garbage")
    capsys.readouterr()
    resumed = train(make_run(run, corpus, max_steps=5, save_every=1, eval_every=100, keep_last=10,
                             resume_from=ckpt.latest_resumable(run)))
    out = capsys.readouterr().out
    warning = next(line for line in out.splitlines() if line.startswith("warning: not resuming"))
    assert "ckpt-4" in warning and "ckpt-3" in warning and "ckpt-2" in warning
    assert warning.endswith(f"resuming from {run / 'ckpt-1'} instead")
    assert "resuming at step 1" in out and resumed.step == 5

    for folder in ckpt.step_checkpoints(run):  # nothing valid left: one clear error
        (folder / ckpt.TRAINER_STATE_NAME).write_text("{")
    with pytest.raises(UserError, match="can be resumed"):
        train(make_run(run, corpus, max_steps=6, resume_from=ckpt.latest_resumable(run)))


def test_workers_give_the_same_batches(tmp_path: Path, corpus: Path) -> None:
    train(make_run(tmp_path / "w0", corpus, max_steps=2))
    train(dataclasses.replace(make_run(tmp_path / "w2", corpus, max_steps=2), workers=2))
    assert [r.get("loss") for r in metrics(tmp_path / "w0")] == [r.get("loss") for r in metrics(tmp_path / "w2")]


# ----------------------------------------------------------------------------- the command


def run_cli(*args: str) -> int:
    return main(["train", *args, "--no-progress"])


def test_train_command_from_a_midi_folder_and_resume(tmp_path: Path, capsys) -> None:
    midi = write_corpus(tmp_path / "midi", files=6, notes=60)
    out = tmp_path / "runs"
    common = ["--data", str(midi), "--preset", "tiny", *MICRO_FLAGS, "--out", str(out)]
    assert run_cli(*common, "--max-steps", "2", "--eval-every", "2", "--name", "first",
                   "--velocity-windows", "0.5", "--velocity-noise", "8", "--stretch-windows", "0.25") == 0
    text = capsys.readouterr().out
    assert "tokenized 6 files" in text and "finished 2 steps" in text
    from perceiver_ar_music.data.store_builder import prepared_cache

    prepared = prepared_cache(midi)  # the project's cache: the user's MIDI folder is left as it was
    assert (prepared / "manifest.json").is_file() and sorted(p.name for p in midi.iterdir()) == [
        f"piece{i:02d}.mid" for i in range(6)]
    run = out / "first"
    config = json.loads((run / "run_config.json").read_text())
    assert config["preset"] == "tiny" and config["model"]["dim"] == 32 and config["model"]["num_tokens"] == 391
    assert config["train"]["max_steps"] == 2 and config["train"]["lr"] == PRESETS["tiny"].train.lr
    augment = config["train"]["augment"]
    assert (augment["velocity_windows"], augment["velocity_noise"], augment["max_velocity_shift"]) == (0.5, 8.0, 24)
    assert augment["stretch_windows"] == 0.25
    assert config["data"]["prepared"] == str(prepared.resolve())
    assert ckpt.load_model(run).meta["step"] == 2

    # The same data again: the preparation is reused; the run name must be new.
    assert run_cli(*common, "--max-steps", "1", "--name", "first") == 2
    assert "already exists: add --resume" in capsys.readouterr().err
    assert run_cli(*common, "--max-steps", "1", "--name", "second") == 0
    assert "tokenized 0 files, reused 6" in capsys.readouterr().out

    # Resume the newest run (second) by default, the named one with --name; extend max steps.
    assert main(["train", "--resume", "--out", str(out), "--max-steps", "3", "--no-progress"]) == 0
    assert "second: resuming at step 1" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resuming with changed settings: {'max_steps': 4}" in text and "finished 4 steps" in text
    assert json.loads((run / "run_config.json").read_text())["train"]["max_steps"] == 4
    assert ckpt.latest_resumable(run) == run / "ckpt-4"

    # A run folder saved before the augmentation was nested (flat fields) resumes as it was.
    saved = json.loads((run / "run_config.json").read_text())
    nested = saved["train"].pop("augment")
    saved["train"].update(augment=True, max_transpose=nested["max_transpose"], stretch=0.05,
                          stretch_windows=nested["stretch_windows"], velocity_windows=nested["velocity_windows"],
                          velocity_shift=nested["max_velocity_shift"], velocity_noise=nested["velocity_noise"])
    (run / "run_config.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resuming with changed settings: {'max_steps': 5}" in text and "finished 5 steps" in text
    assert json.loads((run / "run_config.json").read_text())["train"]["augment"] == nested

    assert main(["train", "--resume", str(run), "--dim", "64", "--no-progress"]) == 2
    assert "--dim cannot change when resuming" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "tiny"], "--data is required"),
        (["--data", "{tmp}/nothing"], "is not a folder"),
        (["--data", "{corpus}", "--lr", "-1"], "argument --lr: must be in (0, 1], got -1"),
        (["--data", "{corpus}", "--lr", "1e39"], "argument --lr: must be in (0, 1], got 1e39"),
        (["--data", "{corpus}", "--lr", "nan"], "argument --lr: must be a finite number"),
        (["--data", "{corpus}", "--max-seq-len", "1e8"], "argument --max-seq-len: expected a whole number"),
        (["--data", "{corpus}", "--max-seq-len", "100000000"], "argument --max-seq-len: must be a whole number in"),
        (["--data", "{corpus}", "--seed", str(2**70)], "argument --seed: must be a whole number in [0, "),
        (["--data", "{corpus}", "--workers", "-1"], "argument --workers"),
        (["--data", "{corpus}", "--dropout", "1"], "argument --dropout: must be in [0, 1)"),
        (["--data", "{corpus}", "--out", "{tmp}/file/runs"], "which is a file"),
        (["--data", "{corpus}", "--num-latents", "999", "--max-seq-len", "64"], "invalid configuration: num_latents"),
        (["--resume", "--out", "{tmp}/none"], "no run to resume"),
        (["--resume", "{tmp}"], "is not a run folder"),
        (["--data", "{corpus}", "--device", "cuda:banana"], "unknown device"),
        (["--data", "{corpus}", "--perform-windows", "1.5"], "argument --perform-windows: must be in [0, 1]"),
        (["--data", "{corpus}", "--tempo-drift", "1"], "argument --tempo-drift: must be in [0, 1)"),
        (["--data", "{corpus}", "--precision", "fp16"], "argument --precision: invalid choice"),
    ],
)
def test_train_command_errors(tmp_path: Path, corpus: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("x")
    args = [a.format(tmp=tmp_path, corpus=corpus) for a in ["--out", "{tmp}/runs", *args]]
    try:
        code = run_cli(*args)
    except SystemExit as exc:  # argparse refused a flag: its usage lines, then the error line
        code = exc.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1] and [line for line in lines if "error:" in line] == lines[-1:]
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path, corpus: Path, capsys) -> None:
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "run_config.json").write_text("{}")
    assert run_cli("--resume", str(tmp_path / "runs" / "x")) == 2
    assert "has no resumable checkpoint yet" in capsys.readouterr().err


def test_a_run_killed_before_its_first_checkpoint_starts_again_under_its_name(tmp_path: Path, corpus: Path,
                                                                              capsys) -> None:
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "run_config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (run / "ckpt-3").mkdir()  # half-deleted by an in-place prune: not a checkpoint
    (run / "ckpt-3" / "config.json").write_text("{}")
    assert run_cli("--data", str(corpus), *MICRO_FLAGS, "--out", str(tmp_path / "runs"), "--name", "x",
                   "--max-steps", "2", "--eval-every", "2") == 0
    assert "starting " + str(run) + " again: it has no checkpoint yet" in capsys.readouterr().out
    assert [r["step"] for r in metrics(run) if "loss" in r] == [2]  # the old run's rows are gone
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt")) == ["ckpt-2"]


# ----------------------------------------------------------------------------- signals and kills


def start_training(out: Path, corpus: Path, *extra: str, driver: list[str] | None = None) -> subprocess.Popen:
    args = ["train", "--data", str(corpus), "--preset", "tiny", *MICRO_FLAGS, "--out", str(out), "--name", "r",
            "--log-every", "1", "--no-progress", *extra]
    command = driver or [sys.executable, "-m", "perceiver_ar_music"]
    return subprocess.Popen(command + args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=out.parent)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def metric_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_signal_handling_in_process() -> None:
    # As in a terminal: Ctrl-C raises KeyboardInterrupt (a shell's background job inherits SIGINT ignored).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_signal_handling()
    finally:
        signal.signal(signal.SIGINT, outer)


def _check_signal_handling() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM lets the save finish
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C once more aborts
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    stop = StopRequest()
    with stop_on_signals(stop, second_interrupt_aborts=False):  # under torchrun
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
    assert stop.signum == signal.SIGINT
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_and_exits_cleanly(tmp_path: Path, corpus: Path, sig: int) -> None:
    out = tmp_path / "runs"
    proc = start_training(out, corpus, "--max-steps", "100000", "--save-every", "100000", "--eval-every", "100000")
    try:
        wait_for(lambda: metric_rows(out / "r" / "metrics.jsonl") >= 3 or proc.poll() is not None)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    step = int(re.search(rf"stopped by {signal.Signals(sig).name} at step (\d+): saved", stdout).group(1))
    assert step >= 3
    assert ckpt.latest_resumable(out / "r") == out / "r" / f"ckpt-{step}"
    assert ckpt.load_model(out / "r").meta["step"] == step
    assert f"--resume {out / 'r'}" in stdout


KILL_DRIVER = """
import pathlib, sys, time
import safetensors.torch
real = safetensors.torch.save_file
def slow_save(tensors, filename, *args, **kwargs):
    real(tensors, filename, *args, **kwargs)
    if ".ckpt-4." in str(filename):
        pathlib.Path(sys.argv[1]).write_text("inside")
        time.sleep(120)
safetensors.torch.save_file = slow_save
from perceiver_ar_music.cli import main
from perceiver_ar_music.runtime.errors import UserError
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_while_saving_leaves_the_last_checkpoint_usable(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    marker = tmp_path / "marker"
    proc = start_training(out, corpus, "--max-steps", "100", "--save-every", "2", "--eval-every", "100",
                          driver=[sys.executable, "-c", KILL_DRIVER, str(marker)])
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    run = out / "r"
    assert marker.exists(), proc.stderr.read()
    assert any(p.name.startswith(".ckpt-4.") for p in run.iterdir())  # the half-written checkpoint
    assert ckpt.latest_resumable(run) == run / "ckpt-2"
    assert ckpt.load_model(run).meta["step"] == 2
    result = subprocess.run([sys.executable, "-m", "perceiver_ar_music", "train", "--resume", str(run),
                             "--max-steps", "5", "--no-progress"], env=subprocess_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "resuming at step 2" in result.stdout
    assert not any(p.name.startswith(".") for p in run.iterdir())
    assert ckpt.latest_resumable(run) == run / "ckpt-5"


@pytest.mark.slow
def test_kill_9_at_random_moments_always_leaves_a_loadable_run(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    rng = np.random.default_rng(0)
    for attempt in range(4):
        resume = ["--resume", str(out / "r")] if attempt else []
        proc = start_training(out, corpus, "--max-steps", "100000", "--save-every", "1", "--eval-every", "3",
                              "--keep-last", "2", *resume)
        try:
            before = ckpt.latest_resumable(out / "r")
            wait_for(lambda: ckpt.latest_resumable(out / "r") not in (None, before) or proc.poll() is not None)
            time.sleep(float(rng.uniform(0.0, 0.5)))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
        loaded = ckpt.load_model(out / "r")
        assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
        latest = ckpt.latest_resumable(out / "r")
        assert latest is not None
        ckpt.load_optimizer_state(
            make_optimizer(ckpt.load_model(latest).model, TrainConfig(), torch.device("cpu")), latest)


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_tiny_preset_learns_well_below_the_unigram_entropy(tmp_path: Path, capsys) -> None:
    data = prepared_corpus(tmp_path, files=16, notes=300)
    assert run_cli("--data", str(data), "--preset", "tiny", "--max-steps", "300", "--eval-every", "100",
                   "--eval-windows", "0", "--out", str(tmp_path / "runs"), "--name", "learn") == 0
    rows = [r for r in metrics(tmp_path / "runs" / "learn") if "val_nats" in r]
    validation = PreparedData.open(data)
    targets = np.concatenate([np.append(np.asarray(p, dtype=np.int64), validation.vocab.eos_id)
                              for p in validation.pieces("validation")])
    freq = np.bincount(targets) / len(targets)
    unigram = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())  # the best any unigram model does
    assert rows[0]["val_nats"] > rows[-1]["val_nats"]
    assert rows[-1]["val_nats"] < 0.8 * unigram, (rows, unigram)


def test_the_augmentation_flags_reach_the_one_augmentation_config_field_by_field() -> None:
    import argparse

    from perceiver_ar_music.commands import train as train_command
    from perceiver_ar_music.training.augment import AugmentConfig

    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    flags = ["--preset", "tiny", "--max-transpose", "5", "--stretch", "0.2", "--stretch-windows", "0.3",
             "--velocity-windows", "0.6", "--velocity-shift", "17", "--velocity-noise", "4.5", "--perform-windows",
             "0.4", "--onset-jitter", "0.03", "--tempo-drift", "0.1", "--velocity-arc", "9", "--pedal-hold", "1.5"]
    _, tc = train_command.resolve_configs(parser.parse_args(flags))
    assert tc.augment == AugmentConfig(max_transpose=5, min_stretch=0.8, max_stretch=1.2, stretch_windows=0.3,
                                       velocity_windows=0.6, max_velocity_shift=17, velocity_noise=4.5,
                                       perform_windows=0.4, onset_jitter=0.03, tempo_drift=0.1, velocity_arc=9.0,
                                       pedal_hold=1.5)
    assert train_command.resolve_configs(parser.parse_args(["--preset", "tiny"]))[1].augment == AugmentConfig()
    assert train_command.resolve_configs(parser.parse_args([*flags, "--no-augment"]))[1].augment is None


def test_old_flat_run_configs_load_as_the_nested_augmentation() -> None:
    from perceiver_ar_music.training.augment import AugmentConfig

    for path in sorted((ROOT / "checkpoints" / "default" / "training").glob("*run_config.json")):
        config = RunConfig.from_dict(json.loads(path.read_text()))
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    old = {"lr": 1e-3, "augment": True, "max_transpose": 2, "stretch": 0.25, "stretch_windows": 0.5,
           "velocity_windows": 0.5, "velocity_shift": 20, "velocity_noise": 8.0}
    tc = TrainConfig.from_dict(old)
    assert tc.lr == 1e-3 and tc.augment == AugmentConfig(max_transpose=2, min_stretch=0.75, max_stretch=1.25,
                                                         stretch_windows=0.5, velocity_windows=0.5,
                                                         max_velocity_shift=20, velocity_noise=8.0)
    assert TrainConfig.from_dict({**old, "augment": False}).augment is None
    assert TrainConfig.from_dict({"max_transpose": 1}).augment == AugmentConfig(max_transpose=1)
    with pytest.raises(ValueError, match="unknown augmentation config keys: bogus"):
        TrainConfig.from_dict({"augment": {"bogus": 1}})
