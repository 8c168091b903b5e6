"""How many CPU threads torch uses: as many as the machine has free, not as many as it has.

Torch splits every op over its threads and waits for the slowest. When another program keeps a
core busy (a DAW, a browser tab, a build), the thread that shares that core runs a fraction of
the time, and every small op of decoding waits for it: on 2 cores with one busy, `generate` ran
5-8x slower with 2 threads than with 1 (docs/benchmarks.md, "Threads on a busy machine").
So a command counts the cores other programs keep busy (their share of /proc/stat over a tenth
of a second) and uses the rest, never more than torch's own default; on an idle machine that is
the default. `--threads N` or `PERCEIVER_MUSIC_THREADS=N` sets the count instead (and `OMP_NUM_THREADS`,
when set, is respected as torch respects it).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

ENV = "PERCEIVER_MUSIC_THREADS"
SAMPLE_S = 0.1  # how long the other programs' load is sampled
BUSY_THRESHOLD = 0.5  # a core counts as taken when others use at least half of it


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count chosen and why."""

    threads: int
    reason: str


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The `--threads` flag of the commands that run the model on the CPU."""
    from perceiver_ar_music.runtime.cli_types import bounded_int

    parser.add_argument("--threads", type=bounded_int(1, 1024), metavar="N",
                        help=f"CPU threads for torch (default: the cores other programs leave free, "
                        f"at most torch's default; also ${ENV})")


def _cpu_times(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over `cpus` from /proc/stat; None where it cannot be read."""
    busy = total = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                    continue
                values = [int(v) for v in fields[:8]]
                idle = values[3] + values[4]  # idle + iowait
                busy += sum(values) - idle
                total += sum(values)
    except (OSError, ValueError):
        return None
    return busy, total


def busy_cores(cpus: set[int], sample_s: float = SAMPLE_S) -> float:
    """How many of `cpus` other programs keep busy (0.0 where /proc/stat is not there)."""
    first = _cpu_times(cpus)
    time.sleep(sample_s)
    second = _cpu_times(cpus)
    if first is None or second is None or second[1] <= first[1]:
        return 0.0
    return len(cpus) * (second[0] - first[0]) / (second[1] - first[1])


def choose(requested: int | None = None, default: int | None = None) -> ThreadChoice:
    """The thread count to use: `requested`, else $PERCEIVER_MUSIC_THREADS, else $OMP_NUM_THREADS
    (torch's own reading of it), else the free cores (at most `default`, torch's default)."""
    import torch

    if requested:
        return ThreadChoice(requested, "--threads")
    if os.environ.get(ENV):
        try:
            return ThreadChoice(max(1, int(os.environ[ENV])), ENV)
        except ValueError:
            from perceiver_ar_music.runtime.errors import UserError

            raise UserError(f"{ENV} must be a whole number of threads, not {os.environ[ENV]!r}") from None
    default = default or torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(default, "OMP_NUM_THREADS")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    taken = int(busy_cores(cpus) + 1 - BUSY_THRESHOLD)  # 0.5 of a core or more counts as one
    free = max(0, len(cpus) - taken)
    return ThreadChoice(max(1, min(default, free)), f"{free} of {len(cpus)} cores free")


_DEFAULT: int | None = None  # torch's own count, read before the first change
_REQUESTED: int | None = None
_CHOICE: ThreadChoice | None = None


def configure(requested: int | None = None) -> ThreadChoice:
    """Choose (see `choose`) and set torch's thread count; remembered for `refresh`."""
    import torch

    global _DEFAULT, _REQUESTED, _CHOICE
    if _DEFAULT is None:
        _DEFAULT = torch.get_num_threads()
    _REQUESTED = requested
    _CHOICE = choice = choose(requested, _DEFAULT)
    torch.set_num_threads(choice.threads)
    return choice


def describe() -> str:
    """The thread count in use and why, in words (for a run's details)."""
    import torch

    reason = f" ({_CHOICE.reason})" if _CHOICE is not None and _CHOICE.threads == torch.get_num_threads() else ""
    return f"{torch.get_num_threads()} CPU thread(s){reason}"


def refresh() -> ThreadChoice | None:
    """Choose again for a long-lived process (the studio, before each job); None when it was
    never configured."""
    return configure(_REQUESTED) if _DEFAULT is not None else None
