"""Torch's thread count: the cores other programs leave free, or what the user asks for."""

from __future__ import annotations

import pytest
import torch

from perceiver_ar_music.runtime import threads
from perceiver_ar_music.cli import main


@pytest.fixture(autouse=True)
def _keep_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("busy, expected", [(0.0, 4), (0.3, 4), (0.6, 3), (1.0, 3), (2.2, 2), (3.9, 1), (4.0, 1)])
def test_the_cores_others_keep_busy_are_left_to_them(monkeypatch, busy, expected):
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, sample_s=threads.SAMPLE_S: busy)
    assert threads.choose(None, default=4).threads == expected
    assert threads.choose(None, default=2).threads == min(2, expected)  # never more than torch's default


def test_a_request_or_the_environment_decides(monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, sample_s=threads.SAMPLE_S: 3.0)
    assert threads.choose(3, default=4) == threads.ThreadChoice(3, "--threads")
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.choose(None, default=4) == threads.ThreadChoice(2, threads.ENV)
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.choose(None, default=4).threads == 4


def test_busy_cores_reads_proc_stat(monkeypatch):
    real = threads._cpu_times({0})  # the real file, where there is one
    assert real is None or real[1] > 0
    readings = iter([(100, 400), (250, 600)])  # others used 150 of 200 jiffies: 0.75 of 4 cores' time
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(readings))
    assert threads.busy_cores({0, 1, 2, 3}, sample_s=0) == pytest.approx(3.0)


def test_generate_takes_threads_and_refuses_a_bad_setting(tmp_path, monkeypatch, capsys):
    seen = {}
    from perceiver_ar_music.commands import generate

    def fake_run(args):
        seen["threads"] = torch.get_num_threads()
        return 0

    monkeypatch.setattr(generate, "run", fake_run)
    assert main(["generate", "--threads", "1", "--out", str(tmp_path / "o")]) == 0 and seen["threads"] == 1
    assert threads.describe() == "1 CPU thread(s) (--threads)"
    monkeypatch.setenv(threads.ENV, "many")
    assert main(["generate", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"perceiver-music generate: error: {threads.ENV} must be a whole number of threads, not 'many'")
