"""Fine-tuning (issue 26): `train --init-from`, its schedule, time budget, early stopping, the
base model's data mixed back in, the Python entry point, and bad inputs. Micro models (width
32, context 96) on one thread: each test takes seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver_ar_music.cli import main
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.data.tokenizer import load_tokenizer
from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.sampling.note_limits import note_limits
from perceiver_ar_music.training import finetune
from perceiver_ar_music.training.train import StopRequest, Trainer, train
from perceiver_ar_music.tools import midi_factory
from tests.tiny import make_run, prepared_corpus, tiny_config, tiny_model, write_tiny_checkpoint

FAST = ["--batch-size", "2", "--eval-windows", "4", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")  # (conftest.py)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("base"), load_tokenizer())


def midi_folder(folder: Path, files: int = 10, notes: int = 60, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        midi_factory.write_performance(folder / f"song{i:02d}.mid", seed=seed + i, num_notes=notes)
    return folder


def cli(*args: str) -> int:
    return main(["train", *args])


def test_fine_tuning_a_folder_of_ten_pieces_keeps_the_shape_and_records_its_origin(tmp_path: Path, base: Path,
                                                                                    capsys) -> None:
    midi = midi_folder(tmp_path / "midi")
    out = tmp_path / "runs"
    assert cli("--data", str(midi), "--init-from", str(base), "--out", str(out), "--name", "ft",
               "--max-steps", "4", "--eval-every", "2", *FAST) == 0
    text = capsys.readouterr().out
    assert f"fine-tuning {base}" in text and "validating on" in text and "held-out piece" in text
    assert "finished 4 steps" in text
    run = out / "ft"
    config = json.loads((run / "run_config.json").read_text())
    assert config["model"] == ckpt.read_config(base).to_dict()  # the checkpoint's shape
    assert config["init_from"]["checkpoint"] == str(base.resolve()) and config["preset"] is None
    assert config["train"]["lr"] == finetune.LR and config["train"]["patience"] == finetune.PATIENCE
    meta = ckpt.load_model(run).meta
    assert meta["fine_tuned_from"]["checkpoint"] == str(base.resolve())
    data = PreparedData.open(config["data"]["prepared"])
    assert meta["note_limits"] == note_limits(data.pieces("train"), data.vocab)  # from the new data
    assert f"Fine-tuned from `{base.resolve()}`" in (run / "README.md").read_text()

    # --resume continues it like any run (and the card follows).
    assert cli("--resume", str(run), "--max-steps", "6", "--no-progress") == 0
    text = capsys.readouterr().out
    assert "ft: resuming at step 4" in text and "finished 6 steps" in text
    assert "steps: 6" in (run / "README.md").read_text()


def test_a_fine_tuning_run_starts_from_the_checkpoint_weights(tmp_path: Path, base: Path) -> None:
    midi = midi_folder(tmp_path / "midi", files=4)
    found = finetune.plan(midi, init_from=base, out=tmp_path / "runs", name="w", progress=False)
    from perceiver_ar_music.runtime.distributed import DistInfo
    from perceiver_ar_music.training.train import TrainRun

    trainer = Trainer(TrainRun(found.run_dir, found.config, found.data, progress=False,
                               init_from=found.init_checkpoint), DistInfo(), StopRequest())
    loaded = ckpt.load_model(base).model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in trainer.model.state_dict().items())


def test_the_default_schedule_is_a_fine_tuning_one(tmp_path: Path) -> None:
    from perceiver_ar_music.training.presets import PRESETS

    data = PreparedData.open(prepared_corpus(tmp_path))
    cfg = tiny_config(num_tokens=len(data.vocab), max_seq_len=96,
                            num_latents=48)
    tc = finetune.schedule(cfg, data, minutes=None)
    assert tc.lr < PRESETS["tiny"].train.lr and tc.warmup_steps <= 20
    assert finetune.MIN_STEPS <= tc.max_steps <= finetune.MAX_STEPS and tc.patience > 0
    assert tc.eval_every == tc.save_every and 10 <= tc.eval_every <= 250
    timed = finetune.schedule(cfg, data, minutes=3)
    assert timed.max_minutes == 3 and timed.max_steps == finetune.TIMED_MAX_STEPS


def test_a_time_budget_ends_the_run_saved(tmp_path: Path, base: Path, capsys) -> None:
    midi = midi_folder(tmp_path / "midi", files=4)
    assert cli("--data", str(midi), "--init-from", str(base), "--out", str(tmp_path / "runs"), "--name", "t",
               "--minutes", "0.03", "--eval-every", "5", *FAST) == 0
    text = capsys.readouterr().out
    assert "ended by the time budget" in text
    run = tmp_path / "runs" / "t"
    step = ckpt.load_model(ckpt.latest_resumable(run)).meta["step"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["step"] == step and "val_nats" in r for r in rows)  # validated at the end
    state = ckpt.read_json(ckpt.latest_resumable(run) / ckpt.TRAINER_STATE_NAME)
    assert state["progress"]["wall_seconds"] >= 0.03 * 60


def test_early_stopping_ends_after_patience_validations_without_a_new_best(tmp_path: Path, monkeypatch) -> None:
    corpus = prepared_corpus(tmp_path / "c")
    values = iter([2.0, 1.0, 1.5, 1.2, 1.1, 0.5])
    monkeypatch.setattr(Trainer, "validate", lambda self: next(values))
    result = train(make_run(tmp_path / "run", corpus, max_steps=100, eval_every=2, patience=3))
    assert (result.ended_by, result.step, result.best_val_nats) == ("early stopping", 10, 1.0)
    assert ckpt.latest_resumable(tmp_path / "run") == tmp_path / "run" / "ckpt-10"


def test_the_base_data_is_mixed_back_in_at_its_share(tmp_path: Path, base: Path) -> None:
    from perceiver_ar_music.training.windows import MixedWindows, TrainWindows

    vocab = load_tokenizer().vocab
    main_pieces = [np.full(50, 200, dtype=np.uint16)]
    other_pieces = [np.full(50, 300, dtype=np.uint16)]
    mixed = MixedWindows(TrainWindows(main_pieces, vocab, 16, seed=1), TrainWindows(other_pieces, vocab, 16, seed=2), 0.2)
    share = np.mean([int(mixed[i]["tokens"][-1]) == 300 for i in range(2000)])
    assert 0.17 < share < 0.23 and torch.equal(mixed[7]["tokens"], mixed[7]["tokens"])

    midi = midi_folder(tmp_path / "midi", files=4)
    mix = midi_folder(tmp_path / "base-midi", files=4, seed=50)
    assert cli("--data", str(midi), "--init-from", str(base), "--mix-data", str(mix), "--mix-share", "0.3",
               "--out", str(tmp_path / "runs"), "--name", "m", "--max-steps", "2", *FAST) == 0
    config = json.loads((tmp_path / "runs" / "m" / "run_config.json").read_text())
    assert config["train"]["mix_share"] == 0.3 and PreparedData.open(config["data"]["mix_prepared"])
    assert "30% of the windows" in (tmp_path / "runs" / "m" / "README.md").read_text()
    # the note guards' limits cover the music it learnt: the new pieces and the mixed-in ones
    data, base_data = PreparedData.open(config["data"]["prepared"]), PreparedData.open(config["data"]["mix_prepared"])
    limits = ckpt.load_model(tmp_path / "runs" / "m").meta["note_limits"]
    assert limits == note_limits([*data.pieces("train"), *base_data.pieces("train")], data.vocab)
    assert limits["notes"] > note_limits(data.pieces("train"), data.vocab)["notes"]


def test_the_python_entry_point_reports_progress_and_stops_when_asked(tmp_path: Path, base: Path) -> None:
    midi = midi_folder(tmp_path / "midi", files=4)
    stop, seen = StopRequest(), []

    def on_step(step: int, progress) -> None:
        seen.append((step, progress.step))
        if step == 3:
            stop.set()

    result = finetune.finetune(midi, init_from=base, out=tmp_path / "runs", name="api", on_step=on_step, stop=stop,
                               train_overrides={"batch_size": 2, "eval_windows": 4})
    assert result.ended_by == "signal" and result.step == 3 and seen == [(1, 1), (2, 2), (3, 3)]
    assert ckpt.latest_resumable(tmp_path / "runs" / "api") == tmp_path / "runs" / "api" / "ckpt-3"


# ----------------------------------------------------------------------------- bad inputs


def _one_line_error(capsys, *args: str) -> str:
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1] and "Traceback" not in err, err
    return errors[0]


def test_bad_inputs_are_one_line_errors_that_leave_nothing(tmp_path: Path, base: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PERCEIVER_MUSIC_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    common = ["--out", str(runs), "--name", "bad", *FAST]

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.mid").write_bytes(b"not a midi file")
    midi_factory.write_empty(junk / "b.mid")
    assert "could be prepared" in _one_line_error(capsys, "--data", str(junk), "--init-from", str(base), *common)

    one = midi_folder(tmp_path / "one", files=1)
    assert "is a file" in _one_line_error(capsys, "--data", str(one / "song00.mid"), "--init-from", str(base), *common)

    other = tmp_path / "other-tokenizer"
    shutil.copytree(base, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "tokenizer_hash": "f" * 64}))
    prepared = prepared_corpus(tmp_path / "p", files=4)
    assert "another tokenizer" in _one_line_error(capsys, "--data", str(prepared), "--init-from", str(other), *common)

    assert "does not exist" in _one_line_error(capsys, "--data", str(one), "--init-from", str(tmp_path / "nope"), *common)
    assert "cannot be set when fine-tuning" in _one_line_error(capsys, "--data", str(one), "--init-from", str(base),
                                                               "--dim", "64", *common)
    assert "go with --init-from" in _one_line_error(capsys, "--data", str(one), "--mix-data", str(one), *common)
    assert not runs.exists()
    assert not any((tmp_path / "cache").rglob("manifest.json")) or all(
        "junk" not in str(p) for p in (tmp_path / "cache").rglob("manifest.json"))


def test_a_folder_of_one_piece_fine_tunes_on_its_held_out_end(tmp_path: Path, base: Path, capsys) -> None:
    one = midi_folder(tmp_path / "one", files=1, notes=200)
    assert cli("--data", str(one), "--init-from", str(base), "--out", str(tmp_path / "runs"), "--name", "o",
               "--max-steps", "2", *FAST) == 0
    assert "last 10% of the piece is held out" in capsys.readouterr().out


def test_a_folder_of_three_pieces_trains_on_all_three_and_validates_on_their_ends(tmp_path: Path, base: Path, capsys) -> None:
    three = midi_folder(tmp_path / "three", files=3, notes=200)
    assert cli("--data", str(three), "--init-from", str(base), "--out", str(tmp_path / "runs"), "--name", "t",
               "--max-steps", "2", *FAST) == 0
    out = capsys.readouterr().out
    assert "training on 3 piece(s); too few pieces to hold one out, so the last 10% of each of the 3 pieces" in out
    assert "step 0: validation" in out and "before fine-tuning" in out


def test_short_windows_skip_their_shared_padding_and_score_the_same() -> None:
    from perceiver_ar_music.training.loss import trim_padding, window_loss

    vocab = load_tokenizer().vocab
    torch.manual_seed(0)
    model = tiny_model(len(vocab), max_seq_len=96,
                        num_latents=24).eval()
    tokens = torch.full((2, 97), vocab.pad_id)
    tokens[0, -40:] = torch.randint(3, len(vocab), (40,))
    tokens[1, -30:] = torch.randint(3, len(vocab), (30,))
    batch = {"tokens": tokens, "target_mask": tokens[:, 1:] != vocab.pad_id}
    trimmed, mask = trim_padding(batch["tokens"], batch["target_mask"], vocab.pad_id, 25)
    assert trimmed.shape == (2, 40) and torch.equal(trimmed, tokens[:, -40:]) and mask.shape == (2, 39)
    cpu = torch.device("cpu")
    with torch.no_grad():
        full = window_loss(model, batch, vocab.pad_id, cpu, "fp32")
        short = window_loss(model, batch, vocab.pad_id, cpu, "fp32", min_tokens=25)
    assert short[2] == full[2] and float(short[1]) == pytest.approx(float(full[1]), rel=1e-5)
    tokens[1, -60:] = torch.randint(3, len(vocab), (60,))  # more real tokens than the latents: kept whole
    assert trim_padding(tokens, tokens[:, 1:] != vocab.pad_id, vocab.pad_id, 25)[0].shape == (2, 60)
    assert trim_padding(torch.randint(3, 300, (2, 97)), torch.ones(2, 96, dtype=torch.bool), vocab.pad_id, 25)[0].shape == (2, 97)


@pytest.mark.slow
def test_fine_tuning_under_torchrun_with_a_time_budget_and_mixed_data(tmp_path: Path, base: Path) -> None:
    import subprocess
    import sys

    from tests.test_train import subprocess_env

    midi = midi_folder(tmp_path / "midi", files=4)
    mix = prepared_corpus(tmp_path / "mix", files=4)
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "perceiver_ar_music", "train", "--data", str(midi), "--init-from", str(base), "--mix-data",
               str(mix), "--minutes", "0.05", "--eval-every", "3", "--out", str(out), "--name", "ddp", *FAST]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert result.stdout.count("ended by the time budget") == 1
    assert sum(line.startswith("fine-tuning ") for line in lines) == 1  # rank 0 speaks
    assert sum(line.endswith("before fine-tuning") for line in lines) == 1
    run = out / "ddp"
    state = ckpt.read_json(ckpt.latest_resumable(run) / ckpt.TRAINER_STATE_NAME)
    assert state["world_size"] == 2 and state["progress"]["wall_seconds"] >= 3
    assert ckpt.load_model(run).meta["fine_tuned_from"]["checkpoint"] == str(base.resolve())
    assert (run / "README.md").is_file()
