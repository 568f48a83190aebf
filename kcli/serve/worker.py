"""One thread owns the device: jobs wait in a bounded queue and run one at a time.

A full queue refuses at once (the route answers 503) rather than letting requests pile up. A job that fails
hands its exception to the one request that sent it; the worker goes on with the next job. The worker also
listens to the pipeline's events: that is the progress ``/sdapi/v1/progress`` reports, and where an interrupt
stops the running job between two steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from kcli.pipelines.events import Events
from kcli.serve.errors import ApiError


class Interrupted(Exception):
    """Raised inside the pipeline, between two steps, when ``/sdapi/v1/interrupt`` asks."""


@dataclass
class State:
    """What the worker is doing now (what progress reports)."""

    job: str = ""  # "" when idle
    tag: str = ""  # the client's name for the running job (X-Kandinsky-Job), so it can follow its progress
    started: float = 0.0
    image: int = 0  # the image being made, from 1
    images: int = 0
    stage: str = ""
    done: int = 0
    total: int = 0
    finished: int = 0  # jobs finished since the start
    notes: list = field(default_factory=list)

    def fraction(self) -> float:
        if not self.job or not self.images:
            return 0.0
        within = self.done / self.total if self.total and self.stage == "decoder" else 0.0
        return min(1.0, (self.image - 1 + within) / self.images)


class Worker(Events):
    def __init__(self, models, size: int = 16):
        self.models = models
        self.jobs: queue.Queue = queue.Queue(maxsize=size)
        self.state = State()
        self.lock = threading.Lock()
        self.interrupt = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kandinsky-worker", daemon=True)

    def start(self) -> Worker:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.interrupt.set()
        try:
            self.jobs.put_nowait(None)
        except queue.Full:
            pass

    def submit(self, name: str, job: Callable, tag: str = "") -> Future:
        """Queue ``job(models)``; its future holds the result. A full queue raises a 503 error."""
        future: Future = Future()
        try:
            self.jobs.put_nowait((name, job, future, tag))
        except queue.Full:
            raise ApiError(f"the queue is full ({self.jobs.maxsize} jobs waiting): try again later", 503) from None
        return future

    def waiting(self) -> int:
        return self.jobs.qsize()

    def _loop(self) -> None:
        while (item := self.jobs.get()) is not None:
            name, job, future, tag = item
            if not future.set_running_or_notify_cancel():
                continue
            self.interrupt.clear()
            with self.lock:
                self.state.job, self.state.tag, self.state.started, self.state.notes = name, tag, time.time(), []
                self.state.image = self.state.images = self.state.done = self.state.total = 0
            try:
                future.set_result(job(self.models))
            except BaseException as e:  # noqa: BLE001 - the job's error goes to its request; the worker goes on
                future.set_exception(e)
            finally:
                with self.lock:  # idle again: no step of a finished job is reported as if it were running
                    self.state.job, self.state.tag, self.state.stage = "", "", ""
                    self.state.image = self.state.images = self.state.done = self.state.total = 0
                    self.state.finished += 1

    # ---- the pipeline's events --------------------------------------------------------------------------

    def note(self, message: str) -> None:
        with self.lock:
            self.state.notes.append(message)

    def image(self, index: int, count: int, seed: int, candidate=None) -> None:
        if self.interrupt.is_set():
            raise Interrupted
        with self.lock:
            self.state.image, self.state.images, self.state.stage = index, count, ""
            self.state.done = self.state.total = 0

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.interrupt.is_set() and stage in ("prior", "decoder"):
            raise Interrupted
        with self.lock:
            self.state.stage, self.state.done, self.state.total = stage, done, total


def collect(results) -> tuple[list, bool]:
    """Every result of ``k.run`` until the end or an interrupt (images finished before it are kept)."""
    done = []
    try:
        for result in results:  # one by one: the images finished before an interrupt are kept
            done.append(result)  # noqa: PERF402
    except Interrupted:
        return done, True
    return done, False
