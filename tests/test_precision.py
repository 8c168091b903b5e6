"""`--precision`: which autocast training and scoring run under, and what it keeps in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from perceiver_ar_music.runtime import devices
from perceiver_ar_music.cli import main as cli_main
from perceiver_ar_music.runtime.devices import autocast, autocast_dtype, describe_precision
from perceiver_ar_music.runtime.errors import UserError
from perceiver_ar_music.training.evaluate import strided_nll
from perceiver_ar_music.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from perceiver_ar_music.runtime.cli_types import PRECISIONS
from perceiver_ar_music.training.presets import RunConfig, TrainConfig
from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.training.train import RUN_CONFIG_NAME, train
from tests.tiny import make_run, MICRO, MICRO_FLAGS, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")


@pytest.mark.parametrize("fast", [True, False])
def test_auto_is_bf16_only_where_the_cpu_is_fast_at_it(monkeypatch, fast: bool) -> None:
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: fast)
    assert autocast_dtype(CPU, "auto") == (torch.bfloat16 if fast else None)
    assert describe_precision(CPU) == ("bf16 autocast" if fast else "fp32")
    assert autocast_dtype(CPU, "bf16") == torch.bfloat16  # forcing works on any CPU
    assert autocast_dtype(CPU, "fp32") is None


def test_bad_precisions_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown precision"):
        autocast_dtype(CPU, "fp16")
    with pytest.raises(UserError, match="not supported on mps"):
        autocast_dtype(torch.device("mps"), "bf16")
    assert autocast_dtype(torch.device("mps"), "auto") is None
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")


def test_autocast_runs_matmuls_in_the_chosen_dtype() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32


def test_old_run_configs_load_with_the_default_precision() -> None:
    config = RunConfig("old", PerceiverARConfig(**MICRO), TrainConfig())
    saved = config.to_dict()
    assert saved["train"]["precision"] == "auto" and set(PRECISIONS) == {"auto", "bf16", "fp32"}
    del saved["train"]["precision"]  # a run_config.json written before the flag existed
    assert RunConfig.from_dict(saved).train.precision == "auto"


def test_bf16_training_keeps_fp32_master_weights_and_runs_the_forward_in_bf16(tmp_path: Path, corpus: Path,
                                                                             monkeypatch) -> None:
    seen: set[torch.dtype] = set()
    run = make_run(tmp_path / "bf16", corpus, max_steps=3, precision="bf16")
    original = PerceiverAR.head

    def spy(self, x):
        logits = original(self, x)
        seen.add(logits.dtype)
        return logits

    monkeypatch.setattr(PerceiverAR, "head", spy)
    result = train(run)
    assert seen == {torch.bfloat16}  # every training and validation forward
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    for row in json.loads("[" + ",".join((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()) + "]"):
        assert all(v is None or v == v for v in row.values())  # no NaN


def test_bf16_scoring_is_close_to_fp32(corpus: Path) -> None:
    data = PreparedData.open(corpus)
    torch.manual_seed(0)
    model = tiny_model(len(data.vocab)).eval()
    torch.nn.init.normal_(model.to_logits.weight, std=0.3)  # input-dependent predictions
    pieces = data.pieces("validation")
    fp32, count = strided_nll(model, pieces, data.vocab, 4, CPU, "fp32")
    bf16, count_bf16 = strided_nll(model, pieces, data.vocab, 4, CPU, "bf16")
    assert count == count_bf16
    assert fp32 != bf16  # it did run in another precision
    assert abs(fp32 - bf16) / count < 0.02


def test_train_and_evaluate_commands_take_and_record_the_precision(tmp_path: Path, corpus: Path, capsys) -> None:
    args = ["train", "--data", str(corpus), "--out", str(tmp_path), "--name", "r", "--preset", "tiny", *MICRO_FLAGS,
            "--max-steps", "2", "--eval-every", "2", "--save-every", "2", "--no-progress", "--precision", "bf16"]
    assert cli_main(args) == 0
    assert "bf16 autocast" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / RUN_CONFIG_NAME).read_text())["train"]["precision"] == "bf16"
    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "r"), "--data", str(corpus), "--precision", "fp32",
                     "--json", str(out)]) == 0
    assert ", fp32" in capsys.readouterr().out and json.loads(out.read_text())["precision"] == "fp32"
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "r"), "--data", str(corpus), "--precision", "fp16"]) == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_resuming_may_change_the_precision(tmp_path: Path, corpus: Path, capsys) -> None:
    base = ["train", "--data", str(corpus), "--out", str(tmp_path), "--name", "r", "--preset", "tiny", *MICRO_FLAGS,
            "--eval-every", "2", "--save-every", "2", "--no-progress"]
    assert cli_main([*base, "--max-steps", "2", "--precision", "fp32"]) == 0
    assert cli_main(["train", "--resume", str(tmp_path / "r"), "--max-steps", "4", "--precision", "bf16",
                     "--no-progress"]) == 0
    assert "'precision': 'bf16'" in capsys.readouterr().out
    saved = RunConfig.from_dict(json.loads((tmp_path / "r" / RUN_CONFIG_NAME).read_text()))
    assert (saved.train.max_steps, saved.train.precision) == (4, "bf16")
