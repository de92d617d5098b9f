"""Calls on one interface queued for its lock, and those queued together run as one transaction.

A road-warrior hub gets a stream of calls on one interface (an Attach and an
AddRoute per client), which its lock runs one after the other; on its own each
pays a journal write, a publish and a PropertiesChanged. Here every call on an
interface joins the interface's queue, in arrival order. Whoever holds the
lock takes the calls queued by then: a run of them that can be grouped becomes
one ``Transaction`` (one save point, one journal write, one kernel apply, one
publish), the others run alone, in order.

A call is a ``Step``. It can be grouped when it has a ``prepare``: its checks
and, when it changes something, the change of the desired state, both free of
kernel reads. In a group each step's prepare runs against the state the steps
before it left, so each call gets the answer it would have had alone: its
own error from its checks, or its result once the group is persisted and
applied. A step whose prepare finds it needs the kernel first (an Attach that
creates the interface) raises ``Ungroupable`` and runs alone. Steps group only
with steps of their ``family``: a Detach may delete the interface, which the
views an Attach returns must not see. When the group's transaction fails
(the kernel refused something, a route collided), it has been undone as a
whole; its steps then run again alone, so only the call at fault fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import XfrmidError
from .desired import Key
from .gate import CallLocks
from .state import CoreState
from .transaction import Transaction

log = logging.getLogger("xfrmid.core")

Change = Callable[[], object]


class Ungroupable(Exception):
    """Raised by a step's prepare: this call needs the kernel before it changes anything."""


class _Unchanged(Exception):
    """A group none of whose steps changes anything: no transaction (and no kernel read)."""


class Step:
    """One call on one interface.

    ``alone``: the whole call, run with the lock held. ``prepare`` (optional): the
    call's checks, returning its change of the desired state (None: nothing to
    change); typed errors are the call's answer. ``finish``: the call's answer
    after its change is persisted and applied. ``why``: the reason the
    interface goes if this call's change removes it (for the log).
    """

    __slots__ = ("alone", "prepare", "finish", "family", "why", "future")

    def __init__(self, alone: Callable[[], Awaitable[Any]], prepare: Callable[[], Change | None] | None = None,
                 finish: Callable[[], Any] | None = None, *, family: str = "", why: str | None = None) -> None:
        self.alone = alone
        self.prepare = prepare
        self.finish = finish
        self.family = family
        self.why = why
        self.future: asyncio.Future[Any] | None = None


class CallQueues:
    """Per interface: the calls waiting for its lock, and the one task that runs them."""

    def __init__(self, locks: CallLocks, transaction: Transaction, state: CoreState) -> None:
        self._locks = locks
        self._transaction = transaction
        self._state = state
        self._queues: dict[Key, deque[Step]] = {}  # a key is here while its calls run
        self._drains: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()  # set while no interface has calls queued or running
        self._idle.set()
        # "groups": transactions of several calls; "grouped": the calls in them;
        # "regrouped": calls run again alone after their group failed
        self.counts: Counter[str] = Counter()

    def step(self, key: Key, prepare: Callable[[], Change | None], finish: Callable[[], Any] = lambda: None, *,
             family: str, why: str | None = None) -> Step:
        """A call whose checks and change need no kernel read: grouped with the calls queued
        beside it, or alone its own transaction."""

        async def alone() -> Any:
            change = prepare()
            if change is not None:
                await self._transaction.run(key[0], [key[1]], change, why=why)
            return finish()

        return Step(alone, prepare, finish, family=family, why=why)

    async def run(self, key: Key, step: Step) -> Any:
        """The step's answer: run now if nothing else is queued on ``key``, else in turn."""
        loop = asyncio.get_running_loop()
        step.future = loop.create_future()
        queue = self._queues.get(key)
        if queue is not None:  # another call runs this interface's queue; ours is answered by it
            queue.append(step)
            return await step.future
        # This call runs the queue while it waits for its own answer: the steps queued
        # behind it while it waited for the lock join its turn; the rest go to a task.
        queue = self._queues[key] = deque([step])
        self._idle.clear()
        try:
            await self._turn(key, queue)
        except BaseException as exc:
            _settle(step, exc)  # this call ends; those queued behind it go on in the task
            raise
        finally:
            self._continue(key, queue)
        return step.future.result()

    def _continue(self, key: Key, queue: deque[Step]) -> None:
        if not queue:
            self._done(key)
            return
        task = asyncio.get_running_loop().create_task(self._drain(key, queue))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, key: Key, queue: deque[Step]) -> None:
        try:
            while queue:
                await self._turn(key, queue)
        except BaseException as exc:
            self._abandon(queue, exc)
            raise
        finally:
            if self._queues.get(key) is queue:
                self._done(key)

    def _done(self, key: Key) -> None:
        del self._queues[key]
        if not self._queues:
            self._idle.set()

    async def _turn(self, key: Key, queue: deque[Step]) -> None:
        """One hold of the lock: every step queued by then (those that joined during it wait
        for the next turn, so other calls waiting for the lock get theirs in between)."""
        async with self._locks.one(key):
            batch = [s for s in queue if not s.future.done()]  # type: ignore[union-attr]
            queue.clear()
            while batch:
                try:
                    batch = await self._some(key, batch)
                except BaseException:
                    queue.extendleft(reversed(batch))
                    raise

    async def _some(self, key: Key, batch: list[Step]) -> list[Step]:
        """Run the first step of ``batch`` and as many after it as group with it; what is left."""
        first = batch[0]
        if len(batch) == 1 or first.prepare is None or not _groupable(first):
            await _answer_alone(first)
            return batch[1:]
        family = first.family
        taken: list[Step] = []
        errors: dict[int, XfrmidError] = {}
        left: list[Step] = []
        why: list[str] = []
        changed: list[Step] = []
        interfaces = self._state.desired.interfaces

        def change() -> None:
            for i, step in enumerate(batch):
                if step.future.done():  # type: ignore[union-attr]  # its caller is gone (cancelled)
                    continue
                if step.prepare is None or step.family != family:
                    left.extend(batch[i:])
                    return
                try:
                    apply = step.prepare()
                except Ungroupable:
                    left.extend(batch[i:])
                    return
                except XfrmidError as exc:  # its checks failed: nothing changed, its answer is the error
                    errors[id(step)] = exc
                    taken.append(step)
                    continue
                taken.append(step)
                if apply is not None:
                    changed.append(step)
                    there = key in interfaces
                    apply()
                    if there and key not in interfaces and step.why and not why:
                        why.append(step.why)
            if not changed:
                raise _Unchanged

        try:
            await self._transaction.run(key[0], [key[1]], change, why=lambda: why[0] if why else None)
        except _Unchanged:
            pass
        except XfrmidError as exc:
            # undone as a whole: each call again on its own, so only the one at fault fails
            log.debug("%d calls on %s failed as one change (%s); each runs alone", len(taken), key[1], exc)
            self.counts["regrouped"] += len(taken)
            for step in taken:
                await _answer_alone(step)
            return left
        except BaseException as exc:
            for step in taken:
                _settle(step, exc)
            if isinstance(exc, Exception):
                return left
            raise
        self.counts["groups"] += 1
        self.counts["grouped"] += len(taken)
        log.debug("%d calls on %s ran as one change", len(taken), key[1])
        for step in taken:
            error = errors.get(id(step))
            if error is not None:
                _settle(step, error)
                continue
            try:
                result = step.finish() if step.finish is not None else None
            except Exception as exc:  # noqa: BLE001 - the call's answer, as alone
                _settle(step, exc)
            else:
                if not step.future.done():  # type: ignore[union-attr]
                    step.future.set_result(result)  # type: ignore[union-attr]
        return left

    @staticmethod
    def _abandon(queue: deque[Step], exc: BaseException) -> None:
        """The runner stopped (cancelled at shutdown, or a bug): the queued calls end with it."""
        while queue:
            _settle(queue.popleft(), exc if isinstance(exc, Exception) else asyncio.CancelledError())

    async def close(self) -> None:
        """Wait until every queued call is answered (the manager's stop)."""
        await self._idle.wait()


def _groupable(step: Step) -> bool:
    """Whether the first step of a batch can open a group: its prepare (pure) does not ask
    for the kernel now. It runs again inside the group, on the same state."""
    try:
        step.prepare()  # type: ignore[misc]
    except Ungroupable:
        return False
    except XfrmidError:
        pass
    return True


async def _answer_alone(step: Step) -> None:
    if step.future.done():  # type: ignore[union-attr]  # its caller is gone (cancelled)
        return
    try:
        result = await step.alone()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - the call's answer goes to its caller
        _settle(step, exc)
    else:
        if not step.future.done():  # type: ignore[union-attr]
            step.future.set_result(result)  # type: ignore[union-attr]


def _settle(step: Step, exc: BaseException) -> None:
    future = step.future
    if future is not None and not future.done():
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)
