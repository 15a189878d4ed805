"""The sampling worker: a bounded queue of jobs and one thread that samples them, batching jobs
with equal settings into one run.

One thread owns the models, so requests never race on them and a CPU's cores all go to one
run at a time. A job's images come from their own generators (one per image, from the job's
seed), so an image is the same whether it was sampled alone or in a batch. A job whose client
has gone is skipped, and a run whose jobs have all gone stops at its next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .models import Settings

log = logging.getLogger("glide.serve")


class QueueFull(Exception):
    """The queue holds ``queue_size`` jobs already; ``retry_after``: seconds worth waiting."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Every job of a run was cancelled, so the run stopped."""


@dataclass(eq=False)
class Job:
    """``num_images`` images of ``prompt`` with ``settings``; image k draws from ``generator(seed, k)``."""

    settings: Settings
    prompt: str
    num_images: int
    seed: int
    inputs: dict[str, Any] = field(default_factory=dict)
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    on_step: Callable[[dict], None] | None = None  # called on the worker thread after every step (progress)

    def cancel(self) -> None:
        self.cancelled.set()


# run(settings, prompts, generators, inputs, callback) -> images: a ServedModel's sampling, by model name
Sampler = Callable[[Settings, Sequence[str], Sequence[Any], dict[str, Any], Callable[[dict], None]], list[Image.Image]]


class SamplingWorker:
    """``submit`` jobs from any thread; their futures resolve to lists of PIL images (or raise).

    ``sample``: the function that runs one batch; ``generator(seed, k)``: image k's generator;
    ``queue_size``: jobs that may wait (not counting the run in progress); ``max_batch``: images per run.
    """

    def __init__(self, sample: Sampler, generator: Callable[[int, int], Any], *, queue_size: int, max_batch: int,
                 batching: bool = True):
        self.sample, self.generator = sample, generator
        self.queue_size, self.max_batch, self.batching = queue_size, max_batch, batching
        self.pending: list[Job] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.stats = dict(completed=0, cancelled=0, failed=0, batches=0, steps=0)
        self.seconds_per_run = 1.0  # a running estimate, for Retry-After
        self.thread = threading.Thread(target=self._loop, name="glide-sampler", daemon=True)

    def start(self) -> SamplingWorker:
        self.thread.start()
        return self

    def stop(self, timeout: float | None = 10) -> None:
        """Cancel what waits, stop the run in progress at its next step, and end the thread."""
        with self.lock:
            self.stopping = True
            for job in self.pending:
                job.cancel()
            self.lock.notify_all()
        self.thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self.pending)

    def submit(self, job: Job) -> Future:
        with self.lock:
            if self.stopping:
                raise QueueFull(self.retry_after())
            if len(self.pending) >= self.queue_size:
                raise QueueFull(self.retry_after())
            self.pending.append(job)
            self.lock.notify()
        return job.future

    def retry_after(self) -> int:
        return max(1, round(self.seconds_per_run * (1 + len(self.pending) / max(1, self.max_batch))))

    # ---------------------------------------------------------------------------- the thread
    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.stopping:
                    self.lock.wait()
                if self.stopping:
                    self._cancel_all()
                    return
                batch = self._take_batch()
            if batch:
                self._run(batch)

    def _take_batch(self) -> list[Job]:
        """The oldest live job and the live jobs queued after it with the same settings, up to
        ``max_batch`` images; cancelled jobs are dropped on the way. Call with the lock held."""
        batch: list[Job] = []
        images = 0
        for job in list(self.pending):
            if job.cancelled.is_set():
                self.pending.remove(job)
                self._resolve_cancelled(job)
                continue
            if batch and (not self.batching or job.settings != batch[0].settings
                          or images + job.num_images > self.max_batch):
                continue
            self.pending.remove(job)
            batch.append(job)
            images += job.num_images
        return batch

    def _run(self, batch: list[Job]) -> None:
        prompts = [job.prompt for job in batch for _ in range(job.num_images)]
        generators = [self.generator(job.seed, k) for job in batch for k in range(job.num_images)]

        def between_steps(info: dict) -> None:
            self.stats["steps"] += 1
            for job in batch:
                if job.on_step is not None:
                    job.on_step(info)
            if self.stopping or all(job.cancelled.is_set() for job in batch):
                raise Cancelled

        started = time.perf_counter()
        try:
            images = self.sample(batch[0].settings, prompts, generators, batch[0].inputs, between_steps)
        except Cancelled:
            for job in batch:
                self._resolve_cancelled(job)
            return
        except Exception as e:  # the server stays up: the error goes to the jobs' requests
            if not isinstance(e, ValueError):
                log.exception("sampling failed for %d job(s)", len(batch))
            self.stats["failed"] += len(batch)
            for job in batch:
                job.future.set_exception(e)
            return
        self.stats["batches"] += 1
        elapsed = time.perf_counter() - started
        self.seconds_per_run = 0.8 * self.seconds_per_run + 0.2 * elapsed
        start = 0
        for job in batch:
            if job.cancelled.is_set():
                self._resolve_cancelled(job)
            else:
                self.stats["completed"] += 1
                job.future.set_result(images[start:start + job.num_images])
            start += job.num_images

    def _resolve_cancelled(self, job: Job) -> None:
        self.stats["cancelled"] += 1
        job.future.set_exception(Cancelled("the request was cancelled"))

    def _cancel_all(self) -> None:
        for job in self.pending:
            self._resolve_cancelled(job)
        self.pending.clear()
