"""Where calls wait (core.gate): calls side by side, a full reconcile alone, writers first."""

from __future__ import annotations

import asyncio

import pytest

from xfrmid.core.gate import CallLocks
from xfrmid.core.guard import NO_GUARD


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_reconcile_waits_for_calls_and_later_calls_wait_for_it():
    locks = CallLocks(NO_GUARD)
    order: list[str] = []
    release_call = asyncio.Event()

    async def call(name: str, key, wait: asyncio.Event | None = None) -> None:
        async with locks.one(key):
            order.append(f"{name} in")
            if wait is not None:
                await wait.wait()
        order.append(f"{name} out")

    async def reconcile() -> None:
        async with locks.everything():
            order.append("reconcile in")
            await _turns()
        order.append("reconcile out")

    first = asyncio.ensure_future(call("first", (None, "ipsec1"), release_call))
    await _turns()
    full = asyncio.ensure_future(reconcile())
    await _turns()
    late = asyncio.ensure_future(call("late", (None, "ipsec2")))  # behind the waiting reconcile
    await _turns()
    assert order == ["first in"]
    release_call.set()
    await asyncio.gather(first, full, late)
    assert order == ["first in", "first out", "reconcile in", "reconcile out", "late in", "late out"]


async def test_calls_on_one_interface_take_turns_and_others_run_beside_them():
    locks = CallLocks(NO_GUARD)
    inside: set[str] = set()
    most = {"ipsec1": 0, "both": 0}

    async def call(name: str, key) -> None:
        async with locks.one(key):
            inside.add(name)
            most["ipsec1"] = max(most["ipsec1"], sum(n.startswith("a") for n in inside))
            most["both"] = max(most["both"], len(inside))
            await _turns(3)
            inside.discard(name)

    await asyncio.gather(*(call(f"a{i}", (None, "ipsec1")) for i in range(5)),
                         *(call(f"b{i}", (None, f"ipsec{10 + i}")) for i in range(5)))
    assert most["ipsec1"] == 1 and most["both"] > 1


async def test_a_failing_call_releases_everything():
    locks = CallLocks(NO_GUARD)
    with pytest.raises(RuntimeError):
        async with locks.one((None, "ipsec1")):
            raise RuntimeError("boom")
    # the interface and the gate are free again: a reconcile and the next call go through
    async with locks.everything():
        pass
    async with locks.one((None, "ipsec1")):
        pass


async def test_a_call_cancelled_while_waiting_leaves_nothing_held():
    locks = CallLocks(NO_GUARD)
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.one((None, "ipsec1")):
            await release.wait()

    held = asyncio.ensure_future(holder())
    await _turns()
    waiting = asyncio.ensure_future(holder())
    await _turns()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await held
    await asyncio.wait_for(_full_then_call(locks), 5)


async def _full_then_call(locks: CallLocks) -> None:
    async with locks.everything():
        pass
    async with locks.one((None, "ipsec1")):
        pass
