"""The call shortcuts of core/sync.py: no kernel work for a change that changes nothing in
the kernel (when the drift watcher vouches), and a fresh create without a read before.

Pure logic over the in-memory FakeKernel; the kernel side is in tests/kernel/test_call_shortcuts.py.
"""

from __future__ import annotations

import asyncio

import pytest

from xfrmid.core.manager import Manager
from xfrmid.core.views import InterfaceInfo
from xfrmid.core.watch import Watcher
from xfrmid.errors import Conflict, InvalidArgument, NotFound
from xfrmid.kernel.events import AddressEvent, LinkEvent, ResyncEvent

from fake_kernel import FakeKernel


class Voucher:
    """A listener that vouches like a running watcher (or not)."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.asked: list[tuple] = []

    def vouches(self, key, ifindex, since):
        self.asked.append((key, ifindex, since))
        return self.answer

    def interface_added(self, info): ...
    def interface_changed(self, info): ...
    def interface_removed(self, info): ...
    def repaired(self, info, what): ...


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture
def voucher(manager):
    v = Voucher()
    manager.subscribe(v)
    return v


async def test_second_owner_attach_does_no_kernel_work_and_persists(manager, kernel, voucher, settings):
    await manager.attach("ipsec5", "conn-a")
    kernel.calls.clear()
    result = await manager.attach("ipsec5", "conn-b")
    assert kernel.calls == []
    assert result.info.owners == ("conn-a", "conn-b")
    assert manager._sync.shortcuts["unchanged"] == 1
    again = Manager(kernel, settings)
    await again.start()
    assert again.get("ipsec5").owners == ("conn-a", "conn-b")
    await again.stop()


async def test_without_a_voucher_the_call_reads_the_kernel(manager, kernel):
    await manager.attach("ipsec5", "conn-a")
    kernel.calls.clear()
    await manager.attach("ipsec5", "conn-b")
    assert ("link", "ipsec5") in kernel.calls
    assert manager._sync.shortcuts["unchanged"] == 0


async def test_a_voucher_that_declines_means_a_read(manager, kernel, voucher):
    await manager.attach("ipsec5", "conn-a")
    voucher.answer = False
    kernel.calls.clear()
    await manager.attach("ipsec5", "conn-b")
    assert ("link", "ipsec5") in kernel.calls


async def test_link_seen_wrong_is_not_vouched_and_gets_repaired(manager, kernel, voucher):
    await manager.attach("ipsec5", "conn-a")
    ns = kernel.ns[None]
    state = ns.links["ipsec5"]
    from dataclasses import replace

    ns.links["ipsec5"] = replace(state, up=False)
    manager._sync.links[(None, "ipsec5")] = ns.links["ipsec5"]  # as a reconcile would have seen it
    await manager.attach("ipsec5", "conn-b")
    assert ns.links["ipsec5"].up
    assert voucher.asked == []  # decided before asking


async def test_unsure_after_a_failed_repair_is_not_vouched(manager, kernel, voucher):
    await manager.attach("ipsec5", "conn-a")
    await manager.add_route("ipsec5", "conn-a", "10.9.0.0/16")
    kernel.ns[None].routes.clear()  # drift
    kernel.fail["add_route"] = NotFound("Interface 'ipsec5' does not exist.")
    await manager.reconcile_interface("ipsec5")  # the repair fails (logged)
    assert (None, "ipsec5") in manager._sync.unsure
    await manager.attach("ipsec5", "conn-b")  # reads, and repairs this time
    assert {r.dst for r in kernel.ns[None].routes} == {"10.9.0.0/16"}
    assert (None, "ipsec5") not in manager._sync.unsure


async def test_detach_of_one_of_several_owners_keeping_objects_is_free(manager, kernel, voucher):
    await manager.attach("ipsec5", "conn-a")
    await manager.attach("ipsec5", "conn-b")
    kernel.calls.clear()
    assert await manager.detach("ipsec5", "conn-b") is False
    assert kernel.calls == []
    assert manager.get("ipsec5").owners == ("conn-a",)


async def test_detach_that_removes_objects_goes_to_the_kernel(manager, kernel, voucher):
    await manager.attach("ipsec5", "conn-a")
    await manager.attach("ipsec5", "conn-b")
    await manager.add_address("ipsec5", "conn-b", "10.5.0.1/24")
    kernel.calls.clear()
    await manager.detach("ipsec5", "conn-b")
    assert ("remove_address", ) == tuple(c[0] for c in kernel.mutations())
    assert kernel.ns[None].addresses["ipsec5"] == set()


async def test_last_detach_deletes(manager, kernel, voucher):
    await manager.attach("ipsec5", "conn-a")
    assert await manager.detach("ipsec5", "conn-a") is True
    assert "ipsec5" not in kernel.ns[None].links


async def test_fresh_create_reads_once(manager, kernel):
    kernel.calls.clear()
    await manager.attach("ipsec6", "conn-a")
    assert [c[0] for c in kernel.calls] == ["link", "create_link"]
    assert manager._sync.shortcuts["created"] == 1
    assert manager.get("ipsec6").ifindex == kernel.ns[None].links["ipsec6"].ifindex


async def test_fresh_create_interface_with_addresses(manager, kernel):
    kernel.calls.clear()
    info = await manager.create_interface("ipsec6", addresses=["10.6.0.1/24"])
    assert [c[0] for c in kernel.calls] == ["link", "create_link", "add_address"]
    assert kernel.ns[None].addresses["ipsec6"] == {"10.6.0.1/24"}
    assert info.addresses == ("10.6.0.1/24",)


async def test_fresh_create_failing_address_rolls_back(manager, kernel):
    from xfrmid.errors import Failed

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
    assert manager._sync.shortcuts["created"] == 0


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
    assert (None, "ipsec8") not in manager._sync.absent


# --- Watcher.vouches ---------------------------------------------------------


class FakeMonitor:
    def __init__(self, netns, running=True):
        self.netns, self.running = netns, running

    async def start(self):
        pass

    async def close(self):
        pass


def view(name="ipsec1", ifindex=10, netns="") -> InterfaceInfo:
    return InterfaceInfo(name=name, if_id=1, netns=netns, ifindex=ifindex, link="", mtu=1400, external=False,
                         operstate="up", owned=True, owners=("conn",), addresses=(), routes=(), mark=1,
                         mask=0xFFFFFFFF)


@pytest.fixture
async def watcher():
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


async def test_vouches_when_quiet(watcher):
    assert watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_does_not_vouch_for_unknown_state_or_interface(watcher):
    assert not watcher.vouches((None, "ipsec1"), 10, None)
    assert not watcher.vouches((None, "ipsec1"), 99, 1.0)  # another incarnation
    assert not watcher.vouches((None, "ipsec9"), 12, 1.0)
    assert not watcher.vouches(("other", "ipsec1"), 10, 1.0)  # no monitor there


async def test_pending_event_on_it_blocks_others_do_not(watcher):
    watcher.feed(link_event("ipsec2", 11))
    assert watcher.vouches((None, "ipsec1"), 10, 1.0)
    assert not watcher.vouches((None, "ipsec2"), 11, 1.0)
    watcher.feed(AddressEvent(None, True, 10, "10.0.0.1/24", 0))
    assert not watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_pending_resync_blocks(watcher):
    watcher.feed(ResyncEvent(None, "netlink socket overrun (ENOBUFS)", True))
    assert not watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_monitor_not_running_or_stopped_blocks(watcher):
    watcher.monitors[None].running = False
    assert not watcher.vouches((None, "ipsec1"), 10, 1.0)
    watcher.monitors[None].running = True
    await watcher.stop()
    assert not watcher.vouches((None, "ipsec1"), 10, 1.0)


async def test_monitor_started_later_vouches_only_for_later_reads(watcher):
    before = asyncio.get_running_loop().time()
    watcher.interface_added(view("ipsec3", 13, netns="blue"))
    await asyncio.sleep(0.01)  # the monitor task
    assert not watcher.vouches(("blue", "ipsec3"), 13, before)
    assert watcher.vouches(("blue", "ipsec3"), 13, asyncio.get_running_loop().time())
