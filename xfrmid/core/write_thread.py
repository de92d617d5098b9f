"""The thread that makes the state file's writes, so the event loop never waits on a disk.

Every call that changes the desired state waits for its write (and fsync)
before it answers, so the hand-off to a thread and back is part of every
Attach. ``asyncio.to_thread`` costs more than twice a plain hand-off: the
executor's bookkeeping, a copied context and a chained future per write
(in the test VM 0.67 ms against 0.29 ms round trip for a small fsync on tmpfs,
whose fsync alone took 0.04 ms; bench/README.md). One long-lived thread
with a queue does only what is needed: run the job, wake the loop.

One thread per process, shared by every store: the daemon has one store,
and its writes are serialised by the store's own lock anyway.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable

_Job = tuple[Callable[[], None], asyncio.AbstractEventLoop, asyncio.Future]


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.cancelled():  # the waiter was cancelled; the write happened or failed all the same
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class WriteThread:
    """Runs blocking jobs one at a time, in order, on one thread; ``run`` awaits one."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the thread; its exception, if any, is raised here."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._ensure_started()
        self._jobs.put((job, loop, future))
        await future

    def _ensure_started(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                # a daemon thread: an idle one must not hold up the interpreter's exit, and the
                # Manager's stop waits for running calls, so no write is cut short by it
                self._thread = threading.Thread(target=self._serve, name="xfrmid-state-writer", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            job, loop, future = self._jobs.get()
            error: BaseException | None = None
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter, raised there
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            del job, loop, future, error  # no reference kept to a finished job while idle


WRITER = WriteThread()
