"""The sampling worker alone, with a stand-in sampler: which jobs share a run, the queue bound,
cancellation and failures."""

from __future__ import annotations

import threading

import pytest

from glide.pipelines import StageOptions
from glide.serve.models import Settings
from glide.serve.worker import Cancelled, Job, QueueFull, SamplingWorker

FAST = Settings("generate", "m", StageOptions("ddim", 2), False)
OTHER = Settings("generate", "m", StageOptions("ddim", 3), False)


class RecordingSampler:
    """Records each run's prompts; the first run waits for ``release`` so jobs can queue up behind it."""

    def __init__(self, fail_on: str | None = None):
        self.runs: list[list[str]] = []
        self.started, self.release = threading.Event(), threading.Event()
        self.fail_on = fail_on

    def __call__(self, settings, prompts, generators, inputs, callback):
        self.runs.append(list(prompts))
        self.started.set()
        self.release.wait(10)
        for step in range(3):
            callback(dict(i=step))
        if self.fail_on in prompts:
            raise RuntimeError("boom")
        return [f"{p}/{g}" for p, g in zip(prompts, generators, strict=True)]


def worker_with(sampler, **kw) -> SamplingWorker:
    return SamplingWorker(sampler, lambda seed, k: (seed, k), **{"queue_size": 8, "max_batch": 4, **kw}).start()


def job(prompt: str, settings: Settings = FAST, n: int = 1, seed: int = 0) -> Job:
    return Job(settings, prompt, n, seed)


def test_queued_jobs_with_equal_settings_share_one_run():
    sampler = RecordingSampler()
    worker = worker_with(sampler)
    first = worker.submit(job("a"))
    sampler.started.wait(5)
    jobs = [job("b", n=2, seed=7), job("c", OTHER), job("d"), job("e", n=2)]
    futures = [worker.submit(j) for j in jobs]
    sampler.release.set()
    assert first.result(5) == ["a/(0, 0)"]
    assert futures[0].result(5) == ["b/(7, 0)", "b/(7, 1)"]  # its own seed's generators, image by image
    assert futures[1].result(5) and futures[2].result(5) and futures[3].result(5)
    worker.stop()
    # b and d share a run; e would pass max_batch 4, c has other settings
    assert sampler.runs == [["a"], ["b", "b", "d"], ["c"], ["e", "e"]]


def test_without_batching_every_job_runs_alone():
    sampler = RecordingSampler()
    sampler.release.set()
    worker = worker_with(sampler, batching=False)
    worker.submit(job("x")).result(5)
    sampler.started.clear()
    sampler.release.clear()
    worker.submit(job("hold"))
    sampler.started.wait(5)
    futures = [worker.submit(job(p)) for p in "yz"]
    sampler.release.set()
    [f.result(5) for f in futures]
    worker.stop()
    assert sampler.runs == [["x"], ["hold"], ["y"], ["z"]]


def test_a_full_queue_refuses_with_a_retry_time():
    sampler = RecordingSampler()
    worker = worker_with(sampler, queue_size=2)
    worker.submit(job("running"))
    sampler.started.wait(5)
    worker.submit(job("1"))
    worker.submit(job("2"))
    with pytest.raises(QueueFull) as refused:
        worker.submit(job("3"))
    assert refused.value.retry_after >= 1
    sampler.release.set()
    worker.stop()


def test_cancelled_jobs_are_skipped_and_a_run_stops_when_all_its_jobs_are_cancelled():
    sampler = RecordingSampler()
    worker = worker_with(sampler)
    running = job("running")
    future = worker.submit(running)
    sampler.started.wait(5)
    waiting = job("waiting", OTHER)
    waiting_future = worker.submit(waiting)
    waiting.cancel()
    running.cancel()
    sampler.release.set()
    with pytest.raises(Cancelled):
        future.result(5)
    with pytest.raises(Cancelled):
        waiting_future.result(5)
    worker.stop()
    assert worker.stats["steps"] == 1  # the first step's check stopped the run
    assert worker.stats["cancelled"] == 2 and sampler.runs == [["running"]]


def test_a_failing_run_fails_its_jobs_and_the_worker_goes_on():
    sampler = RecordingSampler(fail_on="bad")
    sampler.release.set()
    worker = worker_with(sampler)
    with pytest.raises(RuntimeError, match="boom"):
        worker.submit(job("bad")).result(5)
    assert worker.submit(job("good")).result(5) == ["good/(0, 0)"]
    worker.stop()
    assert worker.stats["failed"] == 1 and worker.stats["completed"] == 1
