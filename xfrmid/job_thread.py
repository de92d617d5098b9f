"""A thread that runs blocking jobs for the event loop, one at a time, in order.

The state file's writes use one, so the loop never waits on a disk (core/store.py);
the kernel's batches of link requests use another (kernel/batch.py). Every call
that changes the desired state waits for its write before it answers, so the
hand-off to a thread and back is part of every Attach. ``asyncio.to_thread``
costs more than twice a plain hand-off: the executor's bookkeeping, a copied
context and a chained future per job (in the test VM 0.67 ms against 0.29 ms
round trip for a small fsync on tmpfs, whose fsync alone took 0.04 ms;
bench/README.md). One long-lived thread with a queue does only what is needed:
run the job, wake the loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future]


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the waiter was cancelled; the job ran or failed all the same
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class JobThread:
    """Runs blocking jobs one at a time, in order, on one thread; ``run`` awaits one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the thread; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_started()
        self._jobs.put((job, loop, future))
        return await future

    def _ensure_started(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                # a daemon thread: an idle one must not hold up the interpreter's exit, and the
                # Manager's stop waits for running calls, so no job is cut short by it
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            job, loop, future = self._jobs.get()
            result: Any = None
            error: BaseException | None = None
            try:
                result = job()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter, raised there
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del job, loop, future, result, error  # no reference kept to a finished job while idle
