"""Generation speed on an idle machine and with one core kept busy, for the old and new thread settings.

Runs `perceiver-music generate` (the bundled model, checkpoints/default; the bundled primer; its
default settings, texture-keeping included) as a user would, and reads the tokens/s per sample it
reports. Side by side in one run, interleaved, each cell `--repeats` times (the median is shown):

- old: torch's default thread count (`--threads` set to it: the behaviour before `threads.py`);
- new: no flag (the cores other programs leave free, `perceiver_ar_music.runtime.threads`);

each idle and with one core kept busy by a plain busy-loop process this script starts before the
run and stops after it (every busy loop ends by itself after `--busy-limit` seconds at most).
Targets (issue 29): new with one core busy >= 0.6x new idle; new idle within 5% of old idle.
The machine's load (/proc/loadavg, and the cores others kept busy just before each run) is
printed: figures taken on a machine that was not idle are said to be so.

    .venv/bin/python scripts/bench_threads.py --length 600 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from perceiver_ar_music.runtime.threads import busy_cores  # noqa: E402

BUSY_LOOP = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"
SPEED = re.compile(r"([\d.]+) tokens/s per sample")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=600, help="tokens per run (default: 600)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell, interleaved (default: 3)")
    parser.add_argument("--busy-limit", type=float, default=120.0, help="seconds a busy loop may run at most")
    parser.add_argument("--old-threads", type=int, help="the old setting's thread count (default: torch's default)")
    return parser.parse_args()


def torch_default_threads() -> int:
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def generate_speed(length: int, threads: int | None, out: Path) -> tuple[float, str]:
    """tokens/s per sample of one `generate` run, and the threads it used (from its stats.json)."""
    command = [sys.executable, "-m", "perceiver_ar_music", "generate", "--primer", str(ROOT / "examples" / "primer.mid"),
               "--length", str(length), "--seed", "0", "--no-audio", "--no-progress", "--out", str(out)]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PERCEIVER_MUSIC_THREADS")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"bench_threads: generate failed: {done.stderr.strip().splitlines()[-1:]}")
    speed = SPEED.search(done.stdout)
    details = json.loads((out / "stats.json").read_text())["details"]
    return float(speed.group(1)), details["speed"].split(", ", 1)[-1]  # "... on cpu, N CPU thread(s) (why)"


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> int:
    args = parse_args()
    old = args.old_threads or torch_default_threads()
    cpus = os.sched_getaffinity(0)
    print(f"{len(cpus)} CPUs, torch's default {old} threads; load average {loadavg()} before", flush=True)
    cells: dict[tuple[str, str], list[float]] = {}
    others: list[float] = []
    notes: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for condition in ("idle", "one core busy"):
                for setting, threads in (("old", old), ("new", None)):
                    others.append(busy_cores(cpus, 0.2))  # what other programs did just before
                    loop = None
                    if condition != "idle":
                        loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(limit=args.busy_limit)])
                        time.sleep(0.3)  # let it take its core
                    try:
                        speed, note = generate_speed(args.length, threads, Path(tmp) / f"run-{len(others)}")
                    finally:
                        if loop is not None:
                            loop.kill()
                            loop.wait()
                    notes.add(f"{condition}, {setting}: {note}")
                    cells.setdefault((setting, condition), []).append(speed)
                    print(f"  repeat {repeat + 1}, {condition:>13}, {setting}: {speed:6.0f} tokens/s per sample", flush=True)
    print(f"load average {loadavg()} after; other programs kept {statistics.median(others):.2f} cores busy "
          f"(median before each run; max {max(others):.2f})")
    if max(others) > 0.3:
        print("NOTE: the machine was not idle (other programs were running): the 'idle' figures are not idle")
    for note in sorted(notes):
        print(f"threads used: {note}")
    median = {cell: statistics.median(values) for cell, values in cells.items()}
    print(f"\n| setting | idle tokens/s | one core busy | busy / idle |")
    print("|---|---|---|---|")
    for setting, label in (("old", f"old ({old} threads)"), ("new", "new (free cores)")):
        idle, busy = median[(setting, "idle")], median[(setting, "one core busy")]
        print(f"| {label} | {idle:.0f} | {busy:.0f} | {busy / idle:.2f}x |")
    idle_ratio = median[("new", "idle")] / median[("old", "idle")]
    busy_ratio = median[("new", "one core busy")] / median[("new", "idle")]
    print(f"\nnew idle / old idle: {idle_ratio:.3f} (target >= 0.95); new busy / new idle: {busy_ratio:.2f} "
          f"(target >= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
