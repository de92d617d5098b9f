"""The job thread (job_thread.py) of the state file's writes and the kernel's batches: order,
results, errors, cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from xfrmid.job_thread import JobThread
from xfrmid.errors import Failed


async def test_jobs_run_off_the_loop_in_order():
    writer = JobThread("xfrmid-state-writer")
    seen: list[tuple[int, str]] = []
    await asyncio.gather(*(writer.run(lambda i=i: seen.append((i, threading.current_thread().name)))
                           for i in range(50)))
    assert [i for i, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"xfrmid-state-writer"}


async def test_a_failing_job_raises_in_the_waiter_and_the_thread_goes_on():
    writer = JobThread("xfrmid-state-writer")

    def fail() -> None:
        raise Failed("Cannot write state file '/x': No space left on device.")

    with pytest.raises(Failed, match="No space left"):
        await writer.run(fail)
    done = []
    await writer.run(lambda: done.append(1))
    assert done == [1]


async def test_a_cancelled_waiter_leaves_the_job_to_finish_and_the_thread_serving():
    writer = JobThread("xfrmid-state-writer")
    started, release = threading.Event(), threading.Event()
    finished = []

    def slow() -> None:
        started.set()
        release.wait(5)
        finished.append("slow")

    task = asyncio.ensure_future(writer.run(slow))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await writer.run(lambda: finished.append("next"))
    assert finished == ["slow", "next"]


def test_a_new_event_loop_gets_its_answers_too():
    writer = JobThread("xfrmid-state-writer")
    for _ in range(2):  # the thread outlives a loop (tests, a daemon restarted in-process)
        out: list[int] = []
        asyncio.run(writer.run(lambda: out.append(1)))
        assert out == [1]


async def test_a_job_returns_its_result():
    worker = JobThread("xfrmid-test")
    assert await worker.run(lambda: threading.current_thread().name) == "xfrmid-test"
