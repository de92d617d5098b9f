"""The call shortcuts (core/transaction.py, core/reconcile.py): no kernel work for a change
that changes nothing in the kernel when the drift guard vouches for the interface, and a
fresh create without a read before.

Over the in-memory FakeKernel, with the drift watcher as the daemon wires it (the ``core``
fixture, whose watcher hears the fake kernel's events), or with a guard of the test's own
where the decision itself is checked; the kernel side is in tests/kernel/test_call_shortcuts.py.
"""

from __future__ import annotations

import asyncio

import pytest

from xfrmid.core.manager import Manager
from xfrmid.core.views import InterfaceInfo
from xfrmid.core.watch import Watcher
from xfrmid.errors import Conflict, Failed, InvalidArgument, NotFound
from xfrmid.kernel.events import AddressEvent, LinkEvent, ResyncEvent
from xfrmid.kernel.objects import AddressSpec

from fake_kernel import FakeKernel


class Guard:
    """A drift guard (core.guard.DriftGuard) that answers as told and notes what it was asked."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.asked: list[tuple] = []

    def hold(self, key=None):
        from contextlib import nullcontext

        return nullcontext()

    def vouches(self, key, ifindex, since):
        self.asked.append((key, ifindex, since))
        return self.answer


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture
def guard():
    return Guard()


@pytest.fixture
async def guarded(kernel, settings, guard):
    """The manager alone, with the test's guard."""
    m = Manager(kernel, settings, guard=guard)
    await m.start()
    yield m
    await m.stop()


async def healthy(core, name: str, owner: str = "conn-a") -> None:
    """An attached interface whose own events the watcher has judged."""
    await core.manager.attach(name, owner)
    await core.watcher.idle()


# --- with the drift watcher ---------------------------------------------------


async def test_second_owner_attach_does_no_kernel_work_and_persists(core, kernel, settings):
    await healthy(core, "ipsec5")
    kernel.calls.clear()
    result = await core.manager.attach("ipsec5", "conn-b")
    assert kernel.calls == []
    assert result.info.owners == ("conn-a", "conn-b")
    assert core.manager.shortcuts["unchanged"] == 1
    again = Manager(kernel, settings)
    await again.start()
    assert again.get("ipsec5").owners == ("conn-a", "conn-b")
    await again.stop()


async def test_a_pending_event_on_the_interface_means_a_read(core, kernel):
    await healthy(core, "ipsec5")
    await core.manager.add_address("ipsec5", "conn-a", "10.5.9.9/32")
    await core.watcher.idle()
    await kernel.remove_address(None, AddressSpec("ipsec5", "10.5.9.9/32"))  # drift, not judged yet
    kernel.calls.clear()
    await core.manager.attach("ipsec5", "conn-b")
    assert ("link", "ipsec5") in kernel.calls
    assert core.manager.shortcuts["unchanged"] == 0


async def test_pending_additions_and_own_removals_need_no_read(core, kernel):
    """Additions break no promise, and a removal the views no longer list was xfrmid's own."""
    await healthy(core, "ipsec5")
    await core.manager.add_address("ipsec5", "conn-a", "10.5.9.8/32")
    await core.manager.remove_address("ipsec5", "conn-a", "10.5.9.8/32")  # its events not judged yet
    await kernel.add_address(None, AddressSpec("ipsec5", "10.5.9.9/32"))  # someone else's addition
    kernel.calls.clear()
    await core.manager.attach("ipsec5", "conn-b")
    assert kernel.calls == [] and core.manager.shortcuts["unchanged"] == 1


async def test_detach_of_one_of_several_owners_keeping_objects_is_free(core, kernel):
    await healthy(core, "ipsec5")
    await core.manager.attach("ipsec5", "conn-b")
    kernel.calls.clear()
    assert await core.manager.detach("ipsec5", "conn-b") is False
    assert kernel.calls == []
    assert core.manager.get("ipsec5").owners == ("conn-a",)


async def test_detach_that_removes_objects_goes_to_the_kernel(core, kernel):
    await healthy(core, "ipsec5")
    await core.manager.attach("ipsec5", "conn-b")
    await core.manager.add_address("ipsec5", "conn-b", "10.5.0.1/24")
    await core.watcher.idle()
    kernel.calls.clear()
    await core.manager.detach("ipsec5", "conn-b")
    assert ("remove_address", ) == tuple(c[0] for c in kernel.mutations())
    assert kernel.ns[None].addresses["ipsec5"] == set()


async def test_last_detach_deletes(core, kernel):
    await healthy(core, "ipsec5")
    assert await core.manager.detach("ipsec5", "conn-a") is True
    assert "ipsec5" not in kernel.ns[None].links


# --- the decision, with the test's guard ------------------------------------------


async def test_without_a_guard_the_call_reads_the_kernel(kernel, settings):
    m = Manager(kernel, settings)
    await m.start()
    await m.attach("ipsec5", "conn-a")
    kernel.calls.clear()
    await m.attach("ipsec5", "conn-b")
    assert ("link", "ipsec5") in kernel.calls
    assert m.shortcuts["unchanged"] == 0
    await m.stop()


async def test_a_guard_that_declines_means_a_read(guarded, kernel, guard):
    await guarded.attach("ipsec5", "conn-a")
    guard.answer = False
    kernel.calls.clear()
    await guarded.attach("ipsec5", "conn-b")
    assert ("link", "ipsec5") in kernel.calls
    assert guard.asked and guard.asked[-1][:2] == ((None, "ipsec5"), kernel.ns[None].links["ipsec5"].ifindex)


async def test_a_link_seen_down_is_not_vouched_for(guarded, kernel, guard):
    kernel.foreign_link("ipsec5", 5, up=False)  # adopted as it is: xfrmid does not set it up
    await guarded.attach("ipsec5", "conn-a")
    kernel.calls.clear()
    await guarded.attach("ipsec5", "conn-b")
    assert ("link", "ipsec5") in kernel.calls
    assert guard.asked == []  # decided before asking


async def test_unsure_after_a_failed_repair_is_not_vouched(guarded, kernel, guard):
    await guarded.attach("ipsec5", "conn-a")
    await guarded.add_route("ipsec5", "conn-a", "10.9.0.0/16")
    kernel.ns[None].routes.clear()  # drift
    kernel.fail["add_route"] = NotFound("Interface 'ipsec5' does not exist.")
    await guarded.reconcile_interface("ipsec5")  # the repair fails (logged)
    guard.asked.clear()
    await guarded.attach("ipsec5", "conn-b")  # reads, and repairs this time
    assert guard.asked == []
    assert {r.dst for r in kernel.ns[None].routes} == {"10.9.0.0/16"}
    await guarded.attach("ipsec5", "conn-c")  # sure again: the guard is asked
    assert [a[0] for a in guard.asked] == [(None, "ipsec5")]


# --- a fresh create ---------------------------------------------------------------


async def test_fresh_create_reads_once(manager, kernel):
    kernel.calls.clear()
    await manager.attach("ipsec6", "conn-a")
    assert [c[0] for c in kernel.calls] == ["link", "create_link"]
    assert manager.shortcuts["created"] == 1
    assert manager.get("ipsec6").ifindex == kernel.ns[None].links["ipsec6"].ifindex


async def test_fresh_create_interface_with_addresses(manager, kernel):
    kernel.calls.clear()
    info = await manager.create_interface("ipsec6", addresses=["10.6.0.1/24"])
    assert [c[0] for c in kernel.calls] == ["link", "create_link", "add_address"]
    assert kernel.ns[None].addresses["ipsec6"] == {"10.6.0.1/24"}
    assert info.addresses == ("10.6.0.1/24",)


async def test_fresh_create_failing_address_rolls_back(manager, kernel):
    kernel.fail["add_address"] = Failed("Adding address 10.6.0.1/24 to 'ipsec6' failed.")
    with pytest.raises(Failed):
        await manager.create_interface("ipsec6", addresses=["10.6.0.1/24"])
    assert "ipsec6" not in kernel.ns[None].links
    with pytest.raises(NotFound):
        manager.get("ipsec6")


async def test_name_taken_meanwhile_by_identical_foreign_link_is_adopted(manager, kernel):
    kernel.foreign_link("ipsec7", 7)
    kernel.fail["link"] = NotFound("Interface 'ipsec7' does not exist.")  # it came after the get
    result = await manager.attach("ipsec7", "conn-a")
    assert result.info.owned is False
    assert manager.shortcuts["created"] == 0


async def test_name_taken_meanwhile_by_different_link_is_conflict(manager, kernel):
    kernel.foreign_link("ipsec7", 99)
    kernel.fail["link"] = NotFound("Interface 'ipsec7' does not exist.")
    with pytest.raises(Conflict, match="ipsec7"):
        await manager.attach("ipsec7", "conn-a")
    assert kernel.ns[None].links["ipsec7"].if_id == 99
    with pytest.raises(NotFound):
        manager.get("ipsec7")


async def test_absence_is_trusted_only_within_its_call(manager, kernel):
    with pytest.raises(InvalidArgument):
        await manager.create_interface("ipsec8", if_id=9)  # name implies 8: refused after the get
    kernel.foreign_link("ipsec8", 8)  # the name is taken now
    kernel.calls.clear()
    result = await manager.attach("ipsec8", "conn-a")  # a get of its own, not the last call's
    assert kernel.calls[0] == ("link", "ipsec8") and result.info.owned is False


# --- Watcher.vouches ---------------------------------------------------------


class FakeMonitor:
    def __init__(self, netns, running=True):
        self.netns, self.running = netns, running

    async def start(self):
        pass

    async def close(self):
        pass


def view(name="ipsec1", ifindex=10, netns="", addresses=("10.0.0.1/24",)) -> InterfaceInfo:
    return InterfaceInfo(name=name, if_id=1, netns=netns, ifindex=ifindex, link="", mtu=1400, external=False,
                         operstate="up", owned=True, owners=("conn",), addresses=addresses, routes=(), mark=1,
                         mask=0xFFFFFFFF)


@pytest.fixture
async def lone_watcher():
    async def reconcile():
        return {}

    monitors = {}

    def factory(netns, on_event, interest):
        monitors[netns] = FakeMonitor(netns)
        return monitors[netns]

    w = Watcher(reconcile, quiet=0.05, monitor_factory=factory)
    w.set_interfaces([view(), view("ipsec2", 11)])
    await w.start()
    w.monitors = monitors
    yield w
    await w.stop()


def link_event(name="ipsec1", ifindex=10, deleted=True):
    return LinkEvent(None, deleted, ifindex, name, "xfrm", True, "up", 1400, 120, True)


async def test_vouches_when_quiet(lone_watcher):
    assert lone_watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_does_not_vouch_for_unknown_state_or_interface(lone_watcher):
    assert not lone_watcher.vouches((None, "ipsec1"), 10, None)
    assert not lone_watcher.vouches((None, "ipsec1"), 99, 1.0)  # another incarnation
    assert not lone_watcher.vouches((None, "ipsec9"), 12, 1.0)
    assert not lone_watcher.vouches(("other", "ipsec1"), 10, 1.0)  # no monitor there


async def test_pending_event_on_it_blocks_others_do_not(lone_watcher):
    lone_watcher.feed(link_event("ipsec2", 11))
    assert lone_watcher.vouches((None, "ipsec1"), 10, 1.0)
    assert not lone_watcher.vouches((None, "ipsec2"), 11, 1.0)
    lone_watcher.feed(AddressEvent(None, True, 10, "10.0.0.2/24", 0))  # not promised: harmless
    assert lone_watcher.vouches((None, "ipsec1"), 10, 1.0)
    lone_watcher.feed(AddressEvent(None, True, 10, "10.0.0.1/24", 0))  # promised
    assert not lone_watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_pending_resync_blocks(lone_watcher):
    lone_watcher.feed(ResyncEvent(None, "netlink socket overrun (ENOBUFS)", True))
    assert not lone_watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_monitor_not_running_or_stopped_blocks(lone_watcher):
    lone_watcher.monitors[None].running = False
    assert not lone_watcher.vouches((None, "ipsec1"), 10, 1.0)
    lone_watcher.monitors[None].running = True
    await lone_watcher.stop()
    assert not lone_watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_monitor_started_later_vouches_only_for_later_reads(lone_watcher):
    before = asyncio.get_running_loop().time()
    lone_watcher.interface_added(view("ipsec3", 13, netns="blue"))
    await lone_watcher.monitors_started()
    assert not lone_watcher.vouches(("blue", "ipsec3"), 13, before)
    assert lone_watcher.vouches(("blue", "ipsec3"), 13, asyncio.get_running_loop().time())
