"""The rtnetlink monitor on a real kernel: what iproute2 does to managed objects
is seen within 2 s, foreign noise is not, in the daemon's namespace and named ones."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from xfrmid.errors import NotFound
from xfrmid.kernel.events import AddressEvent, LinkEvent, ResyncEvent, RouteEvent, RuleEvent
from xfrmid.kernel.monitor import NetnsMonitor
from xfrmid.kernel.objects import XFRMID_PROTO

from .conftest import ip_run, sh
from .monitor_util import add_xfrm, delete_quietly, ifindex, monitoring, record, unique_xfrm


@pytest.fixture(params=["own", "named"])
def where(request, netns_factory):
    """None (the daemon's own namespace) or a fresh named one."""
    return None if request.param == "own" else netns_factory("xm")


@pytest.fixture
def managed(where):
    """A managed-looking xfrm link (up) in ``where``; removed afterwards."""
    name, if_id = unique_xfrm()
    add_xfrm(name, if_id, where)
    yield name
    delete_quietly(name, where)


def n(where):
    return ["-n", where] if where else []


def run(where, *args):
    ip_run(*args, netns=where)


async def test_link_delete_is_seen(where, managed):
    async with monitoring(where, {managed}) as (mon, catch):
        # ip runs beside the loop, so the event is taken when it comes, not after ip exits
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec("ip", *n(where), "link", "del", managed)
        ev, at = await catch.wait(lambda e: isinstance(e, LinkEvent) and e.deleted and e.ifname == managed)
        assert await proc.wait() == 0
        exited = time.monotonic()
    assert ev.managed and ev.kind == "xfrm" and ev.netns == where
    kind = "own" if where is None else "named"
    record(f"ip_link_del_start_to_event_{kind}_s", at - t0, "s")
    record(f"ip_link_del_command_{kind}_s", exited - t0, "s")


async def test_link_down_is_seen(where, managed):
    async with monitoring(where, {managed}) as (mon, catch):
        run(where, "link", "set", managed, "down")
        ev, _ = await catch.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == managed and not e.up)
    assert not ev.deleted and ev.operstate == "down"


async def test_mtu_change_is_seen(where, managed):
    async with monitoring(where, {managed}) as (mon, catch):
        run(where, "link", "set", managed, "mtu", "1280")
        await catch.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == managed and e.mtu == 1280)


async def test_addr_flush_is_seen(where, managed):
    run(where, "addr", "add", "198.51.100.1/24", "dev", managed)
    run(where, "addr", "add", "2001:db8:77::1/64", "dev", managed, "nodad")
    # the manager tells the watcher the ifindex of what it manages
    async with monitoring(where, {managed}, indexes={ifindex(managed, where)}) as (mon, catch):
        run(where, "addr", "flush", "dev", managed)
        deleted = lambda addr: lambda e: isinstance(e, AddressEvent) and e.deleted and e.address == addr  # noqa: E731
        await catch.wait(deleted("198.51.100.1/24"))
        await catch.wait(deleted("2001:db8:77::1/64"))


async def test_route_flush_proto_120_is_seen(where, managed):
    run(where, "route", "add", "203.0.113.0/24", "dev", managed, "proto", str(XFRMID_PROTO))
    run(where, "route", "add", "2001:db8:99::/48", "dev", managed, "proto", str(XFRMID_PROTO))
    async with monitoring(where, set()) as (mon, catch):  # found by the marker alone
        run(where, "route", "flush", "dev", managed, "proto", str(XFRMID_PROTO))
        run(where, "-6", "route", "flush", "dev", managed, "proto", str(XFRMID_PROTO))
        ev, _ = await catch.wait(lambda e: isinstance(e, RouteEvent) and e.deleted and e.dst == "203.0.113.0/24")
        assert ev.protocol == XFRMID_PROTO and ev.family == socket.AF_INET and ev.table == 254
        await catch.wait(lambda e: isinstance(e, RouteEvent) and e.deleted and e.dst == "2001:db8:99::/48")


async def test_rule_del_is_seen(where):
    run(where, "rule", "add", "prio", "4711", "to", "192.0.2.23/32", "not", "fwmark", "0x1/0xffffffff",
        "lookup", "50", "protocol", str(XFRMID_PROTO))
    try:
        async with monitoring(where, set()) as (mon, catch):
            run(where, "rule", "del", "prio", "4711")
            ev, _ = await catch.wait(lambda e: isinstance(e, RuleEvent) and e.deleted)
    finally:
        sh(f"ip {' '.join(n(where))} rule del prio 4711 2>/dev/null", check=False)
    assert (ev.priority, ev.table, ev.protocol, ev.dst) == (4711, 50, XFRMID_PROTO, "192.0.2.23/32")


async def test_foreign_noise_is_ignored(where, managed):
    """Same commands on foreign objects with similar names give no event."""
    foreign = managed + "x"  # a veth whose name starts like the managed one
    # the daemon's monitor (kernel filter on) beside one that sees every message
    async with monitoring(where, {managed}) as (mon, catch), \
            monitoring(where, {managed}, kernel_filter=False) as (ref, ref_catch):
        run(where, "link", "add", foreign, "type", "veth", "peer", "name", foreign + "p")
        run(where, "link", "set", foreign, "up")
        run(where, "addr", "add", "198.51.100.9/24", "dev", foreign)
        run(where, "route", "add", "192.0.2.0/28", "dev", foreign)
        run(where, "rule", "add", "prio", "4712", "lookup", "60")
        run(where, "route", "flush", "dev", foreign)
        run(where, "addr", "flush", "dev", foreign)
        run(where, "rule", "del", "prio", "4712")
        run(where, "link", "set", foreign, "down")
        run(where, "link", "del", foreign)
        noise = await catch.quiet(0.5)
    assert noise == [] and ref_catch.events == [], (noise, ref_catch.events)
    assert ref.parser.messages >= 10  # they were received, and dropped by the parser
    # the kernel dropped the links', routes' and rules' messages (only addresses pass)
    assert mon.filtered and not ref.filtered
    assert mon.parser.messages <= ref.parser.messages - 8, (mon.parser.messages, ref.parser.messages)


async def test_foreign_xfrm_link_is_reported_as_not_managed(where):
    name, if_id = unique_xfrm("xf")
    async with monitoring(where, set()) as (mon, catch):
        add_xfrm(name, if_id, where, up=False)
        ev, _ = await catch.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == name)
        run(where, "link", "del", name)
        await catch.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == name and e.deleted)
    assert not ev.managed and ev.kind == "xfrm" and not ev.marked


async def test_managed_links_created_later_are_followed(where):
    name, if_id = unique_xfrm()
    async with monitoring(where, {name}) as (mon, catch):
        add_xfrm(name, if_id, where)
        created, _ = await catch.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == name and e.up)
        assert created.ifindex in mon.interest.indexes
        run(where, "addr", "add", "198.51.100.5/32", "dev", name)
        await catch.wait(lambda e: isinstance(e, AddressEvent) and e.address == "198.51.100.5/32" and not e.deleted)
        run(where, "link", "del", name)
        await catch.wait(lambda e: isinstance(e, LinkEvent) and e.deleted)
        assert created.ifindex not in mon.interest.indexes


async def test_missing_namespace_is_not_created():
    name = f"xnone{os.getpid()}"
    mon = NetnsMonitor(name, lambda ev: None)
    with pytest.raises(NotFound, match=name):
        await mon.start()
    await mon.close()
    assert not os.path.exists(f"/run/netns/{name}")


async def test_namespace_deleted_then_recreated_resyncs(netns_factory):
    where = netns_factory("xd")
    async with monitoring(where, set(), ns_poll=0.1) as (mon, catch):
        ip_run("netns", "del", where)
        ev, _ = await catch.wait(lambda e: isinstance(e, ResyncEvent), timeout=3)
        assert "deleted" in ev.reason and not mon.running
        ip_run("netns", "add", where)
        ev, _ = await catch.wait(lambda e: isinstance(e, ResyncEvent) and "replaced" in e.reason, timeout=3)
        assert mon.running
        # and the new namespace is the one monitored now
        name, if_id = unique_xfrm()
        mon.interest.names.add(name)
        add_xfrm(name, if_id, where)
        await catch.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == name, timeout=3)


async def test_close_stops_events(where, managed):
    async with monitoring(where, {managed}) as (mon, catch):
        pass
    async with monitoring(where, {managed}) as (_still, reference):
        run(where, "link", "set", managed, "down")
        # the open monitor hears it: a closed one still subscribed would have by now
        await reference.wait(lambda e: isinstance(e, LinkEvent) and e.ifname == managed and not e.up)
    assert catch.events == []


async def test_namespace_created_after_start_is_picked_up():
    name = f"xlate{os.getpid()}"
    events = []
    mon = NetnsMonitor(name, events.append, ns_poll=0.1)
    try:
        with pytest.raises(NotFound):
            await mon.start()
        ip_run("netns", "add", name)
        for _ in range(50):
            if events:
                break
            await asyncio.sleep(0.05)
        assert mon.running and isinstance(events[0], ResyncEvent)
    finally:
        await mon.close()
        sh(f"ip netns del {name}", check=False)
