"""DistributedDataParallel on CPU (gloo): ranks stay in sync and match one process with twice the
gradient accumulation; the train command under torchrun writes from rank 0 only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from perceiver_ar_music.model import checkpoint as ckpt
from perceiver_ar_music.runtime import distributed
from perceiver_ar_music.runtime.devices import pick_device
from perceiver_ar_music.training.train import train
from tests.tiny import MICRO_FLAGS, make_run, metrics, prepared_corpus, subprocess_env

pytestmark = pytest.mark.usefixtures("one_thread")

# Same windows either way: rank r of 2 takes samples r, r + 2, ...; one process with 2 micro-batches
# of 1 takes samples 2s and 2s + 1 at step s. Dropouts off so no random numbers differ.
SETTINGS = dict(max_steps=4, batch_size=1, eval_every=2, model={"cross_attn_dropout": 0.0, "dropout": 0.0})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return prepared_corpus(tmp_path_factory.mktemp("corpus"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        info = distributed.from_environment()
        device = pick_device("auto", info.local_rank)
        distributed.init_process_group(info, device)
        result = train(make_run(Path(out) / "ddp", Path(data), grad_accum=1, device=device, **SETTINGS), info)
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, Path(out) / f"rank{rank}.safetensors")
    finally:
        distributed.destroy_process_group()


def test_two_processes_stay_in_sync_and_match_one_process_with_accumulation(tmp_path: Path, corpus: Path) -> None:
    mp.spawn(ddp_worker, args=(2, free_port(), str(corpus), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)

    single = train(make_run(tmp_path / "single", corpus, grad_accum=2, **SETTINGS)).model.state_dict()
    initial = make_run(tmp_path / "x", corpus, **SETTINGS)
    torch.manual_seed(initial.config.train.seed)
    from perceiver_ar_music.model.perceiver_ar import PerceiverAR

    start = PerceiverAR(initial.config.model).state_dict()
    for name in rank0:
        assert not torch.equal(rank0[name], start[name]) or name.startswith("rotary"), name  # it trained
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-5, atol=1e-6)

    ddp_rows, single_rows = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    assert [r["step"] for r in ddp_rows] == [r["step"] for r in single_rows]
    for a, b in zip(ddp_rows, single_rows):
        assert a.keys() == b.keys()
        for key in {"loss", "val_nats", "tokens"} & a.keys():
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    state = ckpt.read_json(tmp_path / "ddp" / "ckpt-4" / ckpt.TRAINER_STATE_NAME)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["progress"]["samples_per_rank"] == 4


def test_torchrun_train_command_writes_from_rank_0_and_resumes_alone(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "perceiver_ar_music", "train", "--data", str(corpus), "--preset", "tiny", *MICRO_FLAGS,
               "--max-steps", "3", "--eval-every", "3", "--log-every", "1", "--out", str(out), "--name", "ddp",
               "--no-progress"]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("finished 3 steps") == 1  # rank 0 reports; rank 1 is silent
    run = out / "ddp"
    assert sorted(p.name for p in run.iterdir()) == ["best", "ckpt-3", "metrics.jsonl", "run_config.json"]
    assert [r["step"] for r in metrics(run) if "loss" in r] == [1, 2, 3]
    state = ckpt.read_json(run / "ckpt-3" / ckpt.TRAINER_STATE_NAME)
    assert state["world_size"] == 2 and state["progress"]["samples_per_rank"] == 3 * 2
    assert json.loads((run / "run_config.json").read_text())["run_name"] == "ddp"

    resumed = subprocess.run([sys.executable, "-m", "perceiver_ar_music", "train", "--resume", str(run),
                              "--max-steps", "4", "--no-progress"], env=subprocess_env(), capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    state = ckpt.read_json(run / "ckpt-4" / ckpt.TRAINER_STATE_NAME)
    assert state["world_size"] == 1 and state["progress"]["samples_per_rank"] == 3 * 2 * 2 + 2
