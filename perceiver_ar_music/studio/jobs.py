"""A first-in, first-out queue that runs one job at a time on a worker thread.

The studio loads its model once and samples one request at a time; further requests wait here and
can ask for their place in the line. A job can be stopped: a waiting one is dropped, a running one
is asked to stop (its work function reads `Job.stop_requested`) and keeps what it made.

Job ids are random (``job-`` and 16 hex digits): they cannot be guessed by another page, and a
restarted studio never hands out the id a page still polls.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from perceiver_ar_music.runtime.errors import UserError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class QueueFull(UserError):
    """Too many requests are already waiting (HTTP 429: try again later)."""

    status = 429


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return f"job-{secrets.token_hex(8)}"


@dataclass(eq=False)
class Job:
    """One request and what became of it."""

    id: str
    request: Any
    state: str = QUEUED
    result: Any = None
    error: str | None = None
    progress: Any = None  # set by the work function while it runs
    submitted: float = field(default_factory=time.monotonic)
    finished: float | None = None  # time.monotonic() when it finished
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def stop_requested(self) -> bool:
        return self.stop_event.is_set()


class JobQueue:
    """Runs `work(job)` for each submitted job in order, one at a time, on one daemon thread.

    `work` returns the job's result; a `UserError` fails the job with its message, any other
    exception with a one-line summary (the traceback goes to stderr), and the queue goes on.
    """

    def __init__(self, work: Callable[[Job], Any], max_waiting: int = 16, keep_finished: int = 200) -> None:
        self.work = work
        self.max_waiting = max_waiting
        self.keep_finished = keep_finished
        self.jobs: dict[str, Job] = {}
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self.closed = False
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="studio-jobs", daemon=True)
        self.thread.start()

    def submit(self, request: Any) -> Job:
        """Queue a request; QueueFull when `max_waiting` jobs already wait."""
        with self.lock:
            if self.closed:
                raise UserError("the studio is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting: try again later")
            job = Job(new_job_id(), request)
            self.jobs[job.id] = job
            self.waiting.append(job)
            self._prune()
            self.lock.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def jobs_list(self) -> list[Job]:
        """Every job the queue knows, oldest first."""
        with self.lock:
            return sorted(self.jobs.values(), key=lambda job: job.submitted)

    def position(self, job: Job) -> int:
        """How many jobs run or wait before `job` (0 when it runs or has finished)."""
        with self.lock:
            if job.state != QUEUED:
                return 0
            ahead = list(self.waiting).index(job) if job in self.waiting else 0
            return ahead + (self.running is not None)

    def stop(self, job_id: str) -> bool:
        """Drop a waiting job or ask a running one to stop; False for an unknown or finished job."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.state in FINISHED:
                return False
            job.stop_event.set()
            if job.state == QUEUED:
                self.waiting.remove(job)
                job.state, job.finished = CANCELLED, time.monotonic()
                self.lock.notify_all()
            return True

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until `job` has finished (True) or `timeout` seconds passed (False)."""
        with self.lock:
            return self.lock.wait_for(lambda: job.state in FINISHED, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Cancel the waiting jobs, stop the running one and end the worker thread."""
        with self.lock:
            self.closed = True
            for job in self.waiting:
                job.state, job.finished = CANCELLED, time.monotonic()
            self.waiting.clear()
            if self.running is not None:
                self.running.stop_event.set()
            self.lock.notify_all()
        self.thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self.waiting or self.closed)
                if self.closed:
                    return
                job = self.running = self.waiting.popleft()
                job.state = RUNNING
            state, result, error = DONE, None, None
            try:
                result = self.work(job)
            except UserError as exc:
                state, error = FAILED, str(exc)
            except OSError as exc:  # the file system said no (a full disk): one line, no traceback
                where = f": {os.path.basename(exc.filename)}" if exc.filename else ""
                state, error = FAILED, f"{exc.strerror or type(exc).__name__}{where}"
            except Exception as exc:  # a bug must not end the queue: report it and go on
                traceback.print_exc()
                state, error = FAILED, f"internal error: {type(exc).__name__}: {exc}"
            with self.lock:
                job.state, job.result, job.error = state, result, error
                job.finished = time.monotonic()
                self.running = None
                self.lock.notify_all()

    def _prune(self) -> None:
        finished = [job_id for job_id, job in self.jobs.items() if job.state in FINISHED]
        for job_id in finished[: max(0, len(finished) - self.keep_finished)]:
            del self.jobs[job_id]
