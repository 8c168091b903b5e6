"""kill -9 of a running `prepare --workers 2`: no worker outlives it, and the next run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perceiver_ar_music.data.token_store import PreparedData
from perceiver_ar_music.tools.midi_factory import write_performance

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG"),
    pytest.mark.slow,  # two interpreter starts and a full small preparation: 10-15 s on a busy 2-core machine
]
REPO = Path(__file__).resolve().parents[1]


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def prepare_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "perceiver_ar_music", "prepare", "--data", str(data), "--out", str(out),
            "--workers", "2", "--no-progress"]


def test_kill_9_leaves_no_worker_and_no_lock(tmp_path: Path) -> None:
    data = tmp_path / "midi"
    data.mkdir()
    for index in range(24):
        write_performance(data / f"piece{index:02d}.mid", seed=index, num_notes=120)
    out = tmp_path / "prepared"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(prepare_command(data, out), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: set[int] = set()
    deadline = time.monotonic() + 30
    while len(workers) < 2 and process.poll() is None and time.monotonic() < deadline:
        workers |= children_of(process.pid)
        time.sleep(0.005)
    assert len(workers) == 2, f"the pool never started: {process.communicate()[1].decode()[-500:]}"
    process.send_signal(signal.SIGKILL)  # mid-run: the pool is up, nothing committed yet
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:  # do not leak them into the rest of the test session
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "pool workers outlived their killed parent"

    again = subprocess.run(prepare_command(data, out), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-500:]
    assert PreparedData.open(out).manifest["totals"]["num_files"] == 24
