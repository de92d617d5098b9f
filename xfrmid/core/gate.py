"""Where calls wait: one lock per interface, and a gate that a full reconcile closes.

Calls on one interface hold that interface's lock, so they run one after the
other; calls on different interfaces run side by side. A full reconcile (or a
reload) takes the gate exclusively: it waits for running calls to finish and
new calls wait for it, so it never plans against a half-applied change.
Waiting writers go first, so a stream of calls cannot starve a reconcile.
While a call holds its interfaces, the drift guard holds them too: the events
of the call's own changes are judged once it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from .desired import Key
from .guard import DriftGuard


class Gate:
    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            async with self._cond:
                self._writer = False
                self._cond.notify_all()


class KeyedLocks:
    """One asyncio.Lock per key, created on first use."""

    def __init__(self) -> None:
        self._locks: dict[object, asyncio.Lock] = {}

    def __call__(self, key: object) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


class CallLocks:
    """The gate, the per-interface locks and the drift guard's hold, taken in that order."""

    def __init__(self, guard: DriftGuard) -> None:
        self._gate = Gate()
        self._locks = KeyedLocks()
        self._guard = guard

    @asynccontextmanager
    async def one(self, key: Key) -> AsyncIterator[None]:
        """A call on one interface."""
        async with self._gate.shared():
            async with self._locks(key):
                with self._guard.hold(key):
                    yield

    @asynccontextmanager
    async def many(self, keys: list[Key]) -> AsyncIterator[None]:
        """A call on several interfaces; their locks taken in sorted order (no deadlock)."""
        async with self._gate.shared():
            async with AsyncExitStack() as stack:
                for key in sorted(keys, key=lambda k: (k[0] or "", k[1])):
                    await stack.enter_async_context(self._locks(key))
                    stack.enter_context(self._guard.hold(key))
                yield

    @asynccontextmanager
    async def everything(self) -> AsyncIterator[None]:
        """A full reconcile: no call runs meanwhile."""
        async with self._gate.exclusive():
            yield
