"""An event loop whose clock moves only while the loop would otherwise wait.

asyncio runs timers by ``loop.time()``. Here that is a number that jumps to
the next timer once every ready callback has run and no I/O is ready, instead
of the loop sleeping until then. Code driven by it sees exactly the timings
it asks for, however loaded the machine is: a stall of the process does not
move its clock. Real I/O still works (polled without waiting); a loop with
neither a timer nor I/O to wait for would wait forever, and raises instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


class _Selector(selectors.DefaultSelector):
    def __init__(self, loop: "VirtualClockLoop") -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("the event loop would wait forever: no timer is due and no I/O can come")
        self._loop.now += timeout  # the loop would have slept until its next timer
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self.now


def run_virtual(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on a fresh VirtualClockLoop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def on_virtual_clock(setup: Callable[[], Any]) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., None]]:
    """Decorate an async test ``test(env, **fixtures)`` to run on a VirtualClockLoop, with
    ``env`` from ``async with setup() as env`` on that loop (pytest passes the other fixtures
    and parameters; it does not see ``env``)."""

    def decorate(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            async def body() -> None:
                async with setup() as env:
                    await test(env, *args, **kwargs)

            run_virtual(body())

        signature = inspect.signature(test)
        run.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
        return run

    return decorate
