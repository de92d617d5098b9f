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
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager

from .desired import Key
from .guard import DriftGuard


class Gate:
    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    async def enter_shared(self) -> None:
        # No writer in or waiting: nothing to wait for, and no await between the test
        # and the count (the condition's lock for each call was a twentieth of a hub call).
        if self._writer or self._writers_waiting:
            async with self._cond:
                await self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
                self._readers += 1
        else:
            self._readers += 1

    async def exit_shared(self) -> None:
        self._readers -= 1
        if self._writers_waiting:  # only a writer waits for the readers to leave
            async with self._cond:
                self._cond.notify_all()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self.enter_shared()
        try:
            yield
        finally:
            await self.exit_shared()

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


class _OneHeld:
    """CallLocks.one: the gate shared, the interface's lock, the guard's hold; released in
    reverse. A class, not nested generator context managers: every call takes it."""

    __slots__ = ("_gate", "_lock", "_hold")

    def __init__(self, gate: Gate, lock: asyncio.Lock, hold: AbstractContextManager[object]) -> None:
        self._gate, self._lock, self._hold = gate, lock, hold

    async def __aenter__(self) -> None:
        await self._gate.enter_shared()
        try:
            await self._lock.acquire()
        except BaseException:
            await self._gate.exit_shared()
            raise
        try:
            self._hold.__enter__()
        except BaseException:
            self._lock.release()
            await self._gate.exit_shared()
            raise

    async def __aexit__(self, *exc_info: object) -> bool:
        try:
            self._hold.__exit__(*exc_info)
        finally:
            self._lock.release()
            await self._gate.exit_shared()
        return False


class CallLocks:
    """The gate, the per-interface locks and the drift guard's hold, taken in that order."""

    def __init__(self, guard: DriftGuard) -> None:
        self._gate = Gate()
        self._locks = KeyedLocks()
        self._guard = guard

    def one(self, key: Key) -> "_OneHeld":
        """A call on one interface (async context manager)."""
        return _OneHeld(self._gate, self._locks(key), self._guard.hold(key))

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
