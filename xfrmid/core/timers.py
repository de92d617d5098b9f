"""Per-key one-shot timers that run a coroutine when they fire (linger of unused interfaces)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable


class KeyedTimers:
    def __init__(self, fire: Callable[[Hashable], Awaitable[None]]) -> None:
        self._fire = fire
        self._handles: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, key: Hashable, delay: float) -> None:
        """(Re)arm the timer of ``key``."""
        self.cancel(key)
        loop = asyncio.get_running_loop()
        self._handles[key] = loop.call_later(max(delay, 0.0), self._spawn, key)

    def cancel(self, key: Hashable) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _spawn(self, key: Hashable) -> None:
        self._handles.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._fire(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel pending timers and running callbacks."""
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
