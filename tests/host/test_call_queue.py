"""Calls queued on one interface share a transaction, and each still gets its own answer.

A hub's clients pipeline Attach and AddRoute on one interface; the calls that
queue while the lock is held run as one group (call_queue.py). These tests
queue calls for real (a kernel whose requests take a loop turn) and check
what each caller hears, what the kernel and the state file hold, and that a
group's failure fails only the call at fault.
"""

from __future__ import annotations

import asyncio

import pytest

from xfrmid.core.call_queue import CallQueues, Step
from xfrmid.core.gate import CallLocks
from xfrmid.core.guard import NO_GUARD
from xfrmid.core.store import StateStore
from xfrmid.errors import Conflict, NotFound
from xfrmid.kernel.objects import RouteSpec

from fake_kernel import FakeKernel, main_routes, ns


class TurnKernel(FakeKernel):
    """Every request takes a loop turn, as a netlink round trip does: calls queue meanwhile."""

    async def add_route(self, netns, spec, **kw):
        await asyncio.sleep(0)
        return await super().add_route(netns, spec, **kw)

    async def remove_route(self, netns, spec, **kw):
        await asyncio.sleep(0)
        return await super().remove_route(netns, spec, **kw)

    async def link(self, netns, name):
        await asyncio.sleep(0)
        return await super().link(netns, name)


@pytest.fixture
def kernel():
    return TurnKernel()


def route(i: int) -> str:
    return f"10.128.0.{i}/32"


async def connect(manager, i: int):
    result = await manager.attach("ipsec1", f"road-{i}")
    await manager.add_route("ipsec1", f"road-{i}", route(i))
    return result


async def test_pipelined_connections_share_transactions(manager, kernel, settings):
    await manager.attach("ipsec1", "server")
    results = await asyncio.gather(*(connect(manager, i) for i in range(1, 41)))
    assert all(r.if_id == 1 and r.mark == 1 for r in results)
    assert manager.grouped["groups"] > 0 and manager.grouped["grouped"] > manager.grouped["groups"]
    assert manager.grouped["regrouped"] == 0
    info = manager.get("ipsec1")
    assert set(info.owners) == {"server"} | {f"road-{i}" for i in range(1, 41)}
    assert {dst for dst, dev, _t, _m in main_routes(kernel)} == {route(i) for i in range(1, 41)}
    # every group's change is durable: the state file holds all of it
    saved = StateStore.in_dir(settings.state_dir).load()
    owners = saved["interfaces"][0]["owners"]
    assert len(owners) == 41
    assert all(owners[f"road-{i}"]["routes"] for i in range(1, 41))


async def test_a_failing_check_answers_only_its_call(manager, kernel):
    await manager.attach("ipsec1", "server")
    calls = [manager.add_route("ipsec1", "server", route(i)) for i in range(1, 6)]
    calls.insert(2, manager.add_route("ipsec1", "nobody", route(99)))  # not attached
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[2], NotFound)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [None] * 5
    assert {dst for dst, *_ in main_routes(kernel)} == {route(i) for i in range(1, 6)}


async def test_a_route_the_kernel_refuses_fails_only_its_call(manager, kernel, settings):
    await manager.attach("ipsec1", "server")
    ns(kernel).foreign_routes.add(RouteSpec(route(3), "eth0"))
    outcomes = await asyncio.gather(*(manager.add_route("ipsec1", "server", route(i)) for i in range(1, 7)),
                                    return_exceptions=True)
    assert isinstance(outcomes[2], Conflict)
    assert [o for i, o in enumerate(outcomes) if i != 2] == [None] * 5
    assert manager.grouped["regrouped"] > 0  # the group was undone and its calls ran alone
    want = {route(i) for i in range(1, 7) if i != 3}
    assert {dst for dst, *_ in main_routes(kernel)} == want
    assert {r[0] for r in manager.get("ipsec1").routes} == want
    saved = StateStore.in_dir(settings.state_dir).load()
    assert {r["destination"] for r in saved["interfaces"][0]["owners"]["server"]["routes"]} == want


async def test_attach_then_route_of_one_owner_in_one_group(manager, kernel):
    await manager.attach("ipsec1", "server")
    # the AddRoute queues behind its owner's Attach and sees it
    attach = asyncio.ensure_future(manager.attach("ipsec1", "road-1"))
    add = asyncio.ensure_future(manager.add_route("ipsec1", "road-1", route(1)))
    await manager.add_route("ipsec1", "server", route(2))
    assert (await attach).info.name == "ipsec1"
    assert await add is None
    assert {dst for dst, *_ in main_routes(kernel)} == {route(1), route(2)}


async def test_detaches_in_one_group_delete_the_interface_once(manager, kernel):
    for i in range(1, 6):
        await connect(manager, i)
    outcomes = await asyncio.gather(*(manager.detach("ipsec1", f"road-{i}") for i in range(1, 6)),
                                    manager.detach("ipsec1", "road-3"))
    # the last owner's Detach deleted it; the repeated one found nothing to do
    assert outcomes.count(True) == 1 and outcomes[-1] is False
    assert "ipsec1" not in ns(kernel).links and not ns(kernel).routes
    assert manager.interfaces() == []


async def test_attach_that_creates_runs_alone_between_groups(manager, kernel):
    # the first Attach creates the interface (a kernel read): it cannot be grouped,
    # the others queued behind it still are
    results = await asyncio.gather(*(manager.attach("ipsec4", f"c{i}") for i in range(8)))
    assert {r.if_id for r in results} == {4}
    assert set(manager.get("ipsec4").owners) == {f"c{i}" for i in range(8)}
    assert "ipsec4" in ns(kernel).links


async def test_a_cancelled_queued_call_leaves_the_others(manager, kernel):
    await manager.attach("ipsec1", "server")
    tasks = [asyncio.ensure_future(manager.add_route("ipsec1", "server", route(i))) for i in range(1, 6)]
    await asyncio.sleep(0)  # all queued, the first one running
    tasks[3].cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(outcomes[3], asyncio.CancelledError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 4
    assert {dst for dst, *_ in main_routes(kernel)} >= {route(i) for i in (1, 2, 3, 5)}


async def test_stop_waits_for_queued_calls(core, kernel):
    manager = core.manager
    await manager.attach("ipsec1", "server")
    tasks = [asyncio.ensure_future(manager.add_route("ipsec1", "server", route(i))) for i in range(1, 9)]
    await asyncio.sleep(0)
    await manager.stop()
    assert all(t.done() and t.result() is None for t in tasks)


async def test_a_cancelled_runner_hands_the_queue_on():
    """The call that runs the queue is cancelled while it waits for the lock: the calls
    queued behind it are still run (by a task) and answered."""
    locks = CallLocks(NO_GUARD)
    queues = CallQueues(locks, transaction=None, state=None)  # alone steps only: neither is used
    key = (None, "ipsec1")

    def answering(value):
        async def alone():
            return value
        return Step(alone)

    async with locks.everything():  # a full reconcile runs: calls wait
        first = asyncio.ensure_future(queues.run(key, answering(1)))
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(queues.run(key, answering(i))) for i in (2, 3, 4)]
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
    assert await asyncio.gather(*others) == [2, 3, 4]
    assert first.cancelled()
    await asyncio.wait_for(queues.close(), 1)
