"""Manager semantics against the in-memory kernel: refcounting, idempotency, errors, persistence.

``settings`` and ``manager`` come from tests/conftest.py, over this module's FakeKernel.
"""

from __future__ import annotations

import asyncio

import pytest

from xfrmid.errors import Busy, Conflict, InvalidArgument, NotFound, NotOwned
from xfrmid.kernel.objects import RouteSpec
from xfrmid.core.desired import DesiredInterface
from xfrmid.core.manager import Manager
from xfrmid.core.store import StateStore
from xfrmid.settings import Settings, StaticInterface

from fake_kernel import FakeKernel, main_routes, ns


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.removed = asyncio.Event()

    def interface_added(self, info):
        self.events.append(("added", info.name, info))

    def interface_changed(self, info):
        self.events.append(("changed", info.name, info))

    def interface_removed(self, info):
        self.events.append(("removed", info.name, info))
        self.removed.set()

    def repaired(self, info, what):
        self.events.append(("repaired", info.name, what))

    def kinds(self):
        return [e[0] for e in self.events]


@pytest.fixture
def kernel():
    return FakeKernel()


async def test_attach_creates_on_demand_and_returns_mark(manager, kernel):
    result = await manager.attach("ipsec7", "conn-a")
    assert (result.if_id, result.mark, result.mask) == (7, 7, 0xFFFFFFFF)
    assert result.info.owned and result.info.owners == ("conn-a",)
    assert kernel.ns[None].links["ipsec7"].owned
    zero = await manager.attach("ipsec0", "conn-a")
    assert zero.if_id == 16384


async def test_two_owners_refcount_interface_addresses_routes(manager, kernel):
    await manager.attach("ipsec1", "a")
    await manager.attach("ipsec1", "b")
    for owner in ("a", "b"):
        await manager.add_address("ipsec1", owner, "192.0.2.1/24")
        await manager.add_route("ipsec1", owner, "10.0.0.0/8")
    await manager.add_address("ipsec1", "b", "2001:db8::1/64")
    assert ns(kernel).addresses["ipsec1"] == {"192.0.2.1/24", "2001:db8::1/64"}
    assert not await manager.detach("ipsec1", "a")
    # b still holds both: nothing left the kernel
    assert ns(kernel).addresses["ipsec1"] == {"192.0.2.1/24", "2001:db8::1/64"}
    assert main_routes(kernel) == {("10.0.0.0/8", "ipsec1", 254, None)}
    assert manager.get("ipsec1").owners == ("b",)
    await manager.remove_address("ipsec1", "b", "2001:db8::1/64")
    assert ns(kernel).addresses["ipsec1"] == {"192.0.2.1/24"}
    assert await manager.detach("ipsec1", "b")
    assert "ipsec1" not in ns(kernel).links and not ns(kernel).routes
    assert manager.interfaces() == []


async def test_calls_are_idempotent(manager, kernel):
    for _ in range(2):
        await manager.attach("ipsec2", "a")
        await manager.add_address("ipsec2", "a", "192.0.2.2/32")
        await manager.add_route("ipsec2", "a", "0.0.0.0/0")
    info = manager.get("ipsec2")
    assert info.owners == ("a",)
    assert info.addresses == ("192.0.2.2/32",)
    assert info.routes == (("0.0.0.0/1", 254, ""), ("128.0.0.0/1", 254, ""))
    before = len(kernel.mutations())
    await manager.attach("ipsec2", "a")
    assert len(kernel.mutations()) == before  # nothing to do in the kernel
    # one Detach undoes the doubled calls
    assert await manager.detach("ipsec2", "a")
    assert not ns(kernel).links
    # removals of what is not held succeed quietly
    assert not await manager.detach("ipsec2", "a")
    await manager.remove_address("ipsec2", "a", "192.0.2.2/32")
    await manager.remove_route("ipsec2", "a", "0.0.0.0/0")


async def test_default_routes_are_split_never_replacing_default(manager, kernel):
    await manager.attach("ipsec3", "a")
    await manager.add_route("ipsec3", "a", "0.0.0.0/0")
    await manager.add_route("ipsec3", "a", "::/0", metric=50)
    dsts = {r.dst for r in ns(kernel).routes}
    assert dsts == {"0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"}
    await manager.remove_route("ipsec3", "a", "::/0")  # options left out match any
    assert {r.dst for r in ns(kernel).routes} == {"0.0.0.0/1", "128.0.0.0/1"}


async def test_route_needs_attached_owner(manager):
    await manager.attach("ipsec8", "a")
    with pytest.raises(NotFound, match="'nobody' is not attached"):
        await manager.add_route("ipsec8", "nobody", "10.0.0.0/8")
    with pytest.raises(NotFound, match="not managed"):
        await manager.add_address("ipsec9", "a", "192.0.2.1/32")


async def test_delete_busy_force_and_not_owned(manager, kernel):
    await manager.create_interface("ipsec10", addresses=["192.0.2.10/24"])
    await manager.attach("ipsec10", "a")
    with pytest.raises(Busy, match="'ipsec10' is still attached by a"):
        await manager.delete_interface("ipsec10")
    await manager.delete_interface("ipsec10", force=True)
    assert "ipsec10" not in ns(kernel).links
    with pytest.raises(NotFound):
        await manager.delete_interface("ipsec10")
    kernel.foreign_link("ipsec11", 11)
    info = await manager.attach("ipsec11", "a")
    assert not info.info.owned
    with pytest.raises(NotOwned):
        await manager.delete_interface("ipsec11")
    # the last Detach never deletes an adopted interface
    assert not await manager.detach("ipsec11", "a")
    assert "ipsec11" in ns(kernel).links
    assert manager.interfaces() == []


async def test_adopted_interface_deleted_by_its_maker_comes_back_as_ours(manager, kernel):
    kernel.foreign_link("ipsec13", 13)
    assert not (await manager.attach("ipsec13", "keeper")).info.owned
    await manager.add_route("ipsec13", "keeper", "198.18.0.0/24")
    del ns(kernel).links["ipsec13"]  # its maker took it away
    await manager.reconcile_interface("ipsec13")
    assert "ipsec13" in ns(kernel).links and manager.view((None, "ipsec13")).owned
    # ours now: the last Detach deletes it
    assert await manager.detach("ipsec13", "keeper")
    assert "ipsec13" not in ns(kernel).links


async def test_created_interface_survives_detach(manager, kernel):
    await manager.create_interface("ipsec12", mtu=1400)
    await manager.attach("ipsec12", "a")
    assert not await manager.detach("ipsec12", "a")
    assert ns(kernel).links["ipsec12"].mtu == 1400
    # identical create returns it; a different if_id conflicts
    assert (await manager.create_interface("ipsec12", 12)).name == "ipsec12"
    with pytest.raises(InvalidArgument, match="implies if_id 12"):
        await manager.create_interface("ipsec12", 13)
    with pytest.raises(Conflict, match="MTU 1400, not 1300"):
        await manager.create_interface("ipsec12", mtu=1300)


async def test_conflicts_with_foreign_links(manager, kernel):
    kernel.foreign_link("ipsec13", 99)
    with pytest.raises(Conflict, match="if_id 99"):
        await manager.attach("ipsec13", "a")
    kernel.foreign_link("vpn0", 14)
    with pytest.raises(Conflict, match="if_id 14 is already used by interface 'vpn0'"):
        await manager.attach("ipsec14", "a")
    with pytest.raises(InvalidArgument, match="not of the form ipsec"):
        await manager.attach("vpn0", "a")
    assert manager.interfaces() == [] and set(ns(kernel).links) == {"ipsec13", "vpn0"}


async def test_route_slot_conflict_between_interfaces(manager, kernel):
    await manager.attach("ipsec15", "a")
    await manager.attach("ipsec16", "a")
    await manager.add_route("ipsec15", "a", "10.15.0.0/16")
    with pytest.raises(Conflict, match="already held through ipsec15"):
        await manager.add_route("ipsec16", "a", "10.15.0.0/16")
    await manager.add_route("ipsec16", "a", "10.15.0.0/16", metric=10)  # another slot is fine


async def test_kernel_failure_rolls_back(manager, kernel, settings):
    await manager.attach("ipsec17", "a")
    ns(kernel).foreign_routes.add(RouteSpec("128.0.0.0/1", "eth0"))
    with pytest.raises(Conflict):
        await manager.add_route("ipsec17", "a", "0.0.0.0/0")
    assert manager.get("ipsec17").routes == ()
    assert not ns(kernel).routes  # the half that went in was taken out again
    saved = StateStore.in_dir(settings.state_dir).load()
    assert saved["interfaces"][0]["owners"]["a"]["routes"] == []


async def test_bind_to_caller_released(manager, kernel):
    await manager.attach("ipsec18", "nm-uuid", caller=":1.42")
    await manager.attach("ipsec18", "pluto")
    assert manager.bound_callers() == {":1.42"}
    await manager.caller_vanished(":1.42")
    assert manager.get("ipsec18").owners == ("pluto",)
    await manager.caller_vanished(":1.43")  # unknown: nothing
    assert manager.bound_callers() == set()


async def test_listeners_hear_changes(manager):
    rec = Recorder()
    manager.subscribe(rec)
    await manager.attach("ipsec19", "a")
    await manager.add_address("ipsec19", "a", "192.0.2.19/32")
    await manager.add_address("ipsec19", "a", "192.0.2.19/32")  # no change, no event
    await manager.detach("ipsec19", "a")
    assert rec.kinds() == ["added", "changed", "removed"]


async def test_restart_reconciles_to_same_state(kernel, settings):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec20", "a")
    await m1.add_address("ipsec20", "a", "192.0.2.20/24")
    await m1.add_route("ipsec20", "a", "10.20.0.0/16", peer="10.20.0.1")
    await m1.create_interface("ipsec21")
    await m1.stop()
    before = (dict(ns(kernel).links), set(ns(kernel).routes), set(ns(kernel).rules))
    m2 = Manager(kernel, settings)
    assert await m2.start() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}
    assert [i.name for i in m2.interfaces()] == ["ipsec20", "ipsec21"]
    assert (dict(ns(kernel).links), set(ns(kernel).routes), set(ns(kernel).rules)) == before
    # damage while stopped: the restart repairs exactly that
    await m2.stop()
    await kernel.delete_link(None, "ipsec21")
    await kernel.change_link(None, "ipsec20", mtu=1300, up=False)
    kernel.foreign_link("ipsec99", 99, owned=True)  # a marked leftover nobody explains
    m3 = Manager(kernel, settings)
    counts = await m3.start()
    assert counts == {"created": 1, "repaired": 1, "adopted": 0, "removed": 1}
    assert ns(kernel).links["ipsec20"].up and "ipsec21" in ns(kernel).links
    assert "ipsec99" not in ns(kernel).links


async def test_static_interfaces_and_reload(kernel, tmp_path):
    static = StaticInterface(name="ipsec30", addresses=("192.0.2.30/24",))
    settings = Settings(state_dir=str(tmp_path), static_interfaces=(static,))
    m = Manager(kernel, settings)
    assert (await m.start())["created"] == 1
    assert ns(kernel).addresses["ipsec30"] == {"192.0.2.30/24"}
    with pytest.raises(Conflict, match="configuration"):
        await m.delete_interface("ipsec30")
    await m.attach("ipsec30", "a")
    await m.reload(Settings(state_dir=str(tmp_path)))
    # no longer configured, but still attached: kept, configured address gone
    assert m.get("ipsec30").owners == ("a",) and ns(kernel).addresses["ipsec30"] == set()
    assert await m.detach("ipsec30", "a")
    assert "ipsec30" not in ns(kernel).links


async def test_linger_keeps_on_demand_interface(kernel, tmp_path):
    m = Manager(kernel, Settings(state_dir=str(tmp_path), linger=0.2))
    await m.start()
    rec = Recorder()
    m.subscribe(rec)
    await m.attach("ipsec31", "a")
    assert not await m.detach("ipsec31", "a")
    assert "ipsec31" in ns(kernel).links
    await m.attach("ipsec31", "b")  # reused while lingering
    lingering = asyncio.get_running_loop().time()
    await m.detach("ipsec31", "b")
    await asyncio.wait_for(rec.removed.wait(), 5)
    assert asyncio.get_running_loop().time() - lingering >= 0.2
    assert "ipsec31" not in ns(kernel).links and m.interfaces() == []
    assert rec.kinds() == ["added", "changed", "changed", "changed", "removed"]
    await m.stop()


async def test_foreign_objects_untouched_by_reconcile(manager, kernel):
    kernel.foreign_link("ipsec40", 40)
    ns(kernel).foreign_routes.add(RouteSpec("10.40.0.0/16", "ipsec40"))
    await manager.attach("ipsec41", "a")
    await manager.add_route("ipsec41", "a", "10.41.0.0/16")
    ns(kernel).routes.add(RouteSpec("10.99.0.0/16", "ipsec41"))  # ours (proto 120) but unexplained
    counts = await manager.reconcile()
    assert counts["removed"] == 1
    assert "ipsec40" in ns(kernel).links and ns(kernel).foreign_routes
    assert main_routes(kernel) == {("10.41.0.0/16", "ipsec41", 254, None)}
    before = len(kernel.mutations())
    assert await manager.reconcile() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}
    assert len(kernel.mutations()) == before


async def test_preexisting_address_on_adopted_link_stays(manager, kernel):
    kernel.foreign_link("ipsec42", 42)
    ns(kernel).addresses["ipsec42"] = {"192.0.2.42/24"}
    await manager.attach("ipsec42", "a")
    await manager.add_address("ipsec42", "a", "192.0.2.42/24")
    await manager.add_address("ipsec42", "a", "192.0.2.43/24")
    await manager.detach("ipsec42", "a")
    assert ns(kernel).addresses["ipsec42"] == {"192.0.2.42/24"}


async def test_netns_interfaces(manager, kernel):
    kernel.add_netns("blue")
    await manager.attach("ipsec1", "a", netns="blue")
    await manager.attach("ipsec1", "a")
    assert {(i.netns, i.name) for i in manager.interfaces()} == {("", "ipsec1"), ("blue", "ipsec1")}
    assert manager.get("ipsec1", "blue").netns == "blue"
    with pytest.raises(NotFound):
        await manager.attach("ipsec1", "a", netns="nosuch")


async def test_other_interfaces_not_blocked(manager, kernel):
    entered, gate = asyncio.Event(), asyncio.Event()
    real = kernel.create_link

    async def slow_create(netns, spec):
        if spec.name == "ipsec50":
            entered.set()
            await gate.wait()
        return await real(netns, spec)

    kernel.create_link = slow_create
    slow = asyncio.create_task(manager.attach("ipsec50", "a"))
    await entered.wait()  # ipsec50's call is in the kernel
    second = asyncio.create_task(manager.attach("ipsec50", "b"))
    await asyncio.wait_for(manager.attach("ipsec51", "a"), 1)  # not blocked by ipsec50
    # meanwhile the second call on ipsec50 waited its turn: not even its kernel read ran
    assert not second.done() and [c for c in kernel.calls if c == ("link", "ipsec50")] == [("link", "ipsec50")]
    gate.set()
    await slow
    await second
    assert manager.get("ipsec50").owners == ("a", "b")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.attach("eth 0", "a"), "white space"),
        (lambda m: m.attach("ipsec1", ""), "Owner ''"),
        (lambda m: m.attach("ipsec1", "a", netns="../x"), "namespace"),
        (lambda m: m.create_interface("ipsec1", mtu=10), "MTU 10"),
        (lambda m: m.create_interface("ipsec1", addresses=["nope"]), "'nope'"),
        (lambda m: m.add_route("ipsec1", "a", "10.0.0.1/8"), "host bits"),
        (lambda m: m.add_route("ipsec1", "a", "10.0.0.0/8", table=255), "local table"),
        (lambda m: m.add_route("ipsec1", "a", "10.0.0.0/8", src="2001:db8::1"), "same family"),
        (lambda m: m.add_address("ipsec1", "a", "300.1.1.1/24"), "'300.1.1.1/24'"),
    ],
)
async def test_invalid_arguments_named(manager, call, message):
    with pytest.raises(InvalidArgument, match=message):
        await call(manager)


async def test_reconcile_reports_repairs_to_listeners(manager, kernel):
    rec = Recorder()
    await manager.attach("ipsec60", "a")
    await manager.add_route("ipsec60", "a", "10.60.0.0/16")
    manager.subscribe(rec)
    await kernel.change_link(None, "ipsec60", up=False)
    await kernel.remove_route(None, RouteSpec("10.60.0.0/16", "ipsec60"))
    assert await manager.reconcile() == {"created": 0, "repaired": 1, "adopted": 0, "removed": 0}
    (event,) = [e for e in rec.events if e[0] == "repaired"]
    assert event[1] == "ipsec60" and "set up" in event[2] and "10.60.0.0/16" in event[2]
    assert await manager.reconcile_interface("ipsec60") == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}


async def test_reload_adding_an_interface_is_created_not_repaired(kernel, tmp_path):
    m = Manager(kernel, Settings(state_dir=str(tmp_path)))
    await m.start()
    rec = Recorder()
    m.subscribe(rec)
    await m.reload(Settings(state_dir=str(tmp_path), static_interfaces=(StaticInterface(name="ipsec61"),)))
    assert rec.kinds() == ["added"]  # announced as added; nothing was repaired
    await kernel.delete_link(None, "ipsec61")  # drift: now its recreation is a repair
    assert await m.reconcile() == {"created": 1, "repaired": 0, "adopted": 0, "removed": 0}
    assert [e[2] for e in rec.events if e[0] == "repaired"] == ["created interface ipsec61"]
    await m.stop()


async def test_last_detach_logs_why_the_interface_went(manager, kernel, caplog):
    await manager.attach("ipsec62", "conn-a")
    await manager.create_interface("ipsec63")
    kernel.foreign_link("ipsec64", 64, owned=True)  # a marked leftover
    with caplog.at_level("INFO", logger="xfrmid.core"):
        assert await manager.detach("ipsec62", "conn-a")
        await manager.delete_interface("ipsec63")
        await manager.reconcile()
    assert "deleted interface ipsec62: its last owner conn-a detached" in caplog.text
    assert "deleted interface ipsec63: requested by DeleteInterface" in caplog.text
    assert "removed leftover interface ipsec64" in caplog.text
    settings = manager.settings
    await manager.reload(Settings(state_dir=settings.state_dir, static_interfaces=(StaticInterface(name="ipsec65"),)))
    with caplog.at_level("INFO", logger="xfrmid.core"):
        await manager.reload(Settings(state_dir=settings.state_dir))
    assert "deleted interface ipsec65: no longer configured" in caplog.text
    assert "leftover interface ipsec62" not in caplog.text and "leftover interface ipsec63" not in caplog.text


async def test_one_call_plans_and_reads_only_its_interface(manager, kernel, monkeypatch):
    for i in range(70, 80):
        await manager.attach(f"ipsec{i}", "a")
        await manager.add_route(f"ipsec{i}", "a", f"10.{i}.0.0/16")
    expanded = []
    real = DesiredInterface.kernel_routes

    def spy(self, mask, peer):
        expanded.append(self.name)
        return real(self, mask, peer)

    monkeypatch.setattr(DesiredInterface, "kernel_routes", spy)
    kernel.calls.clear()
    await manager.attach("ipsec75", "b")
    await manager.add_route("ipsec76", "a", "10.176.0.0/16")
    assert set(expanded) == {"ipsec75", "ipsec76"}
    assert not [c for c in kernel.calls if c[0] == "xfrm_links"]  # no namespace dump per call


async def test_published_views_equal_interfaces(kernel, settings):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec91", "a")
    await m1.create_interface("ipsec90", addresses=["192.0.2.90/24"])
    await m1.stop()
    m2 = Manager(kernel, settings)
    await m2.start()
    assert m2.published() == m2.interfaces() and [i.name for i in m2.published()] == ["ipsec90", "ipsec91"]
    await m2.stop()
