"""Watcher on a real kernel: each interference command on a managed object calls
the reconcile within 2 s; the same commands on foreign look-alikes do not."""

from __future__ import annotations

import asyncio
import time

import pytest

from xfrmid.core.views import InterfaceInfo
from xfrmid.core.watch import Watcher
from xfrmid.kernel.objects import XFRMID_PROTO

from .conftest import ip_run
from .monitor_util import TappedMonitors, add_xfrm, ifindex, record, unique_xfrm

P = str(XFRMID_PROTO)


class Stamps:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.called = asyncio.Event()

    async def __call__(self) -> dict[str, int]:
        self.times.append(time.monotonic())
        self.called.set()
        return {"repaired": 1}


def setup_objects(where: str, name: str) -> None:
    """A managed-looking xfrm link with what xfrmid would put on it, and a foreign twin."""
    ip_run("addr", "add", "198.51.100.1/24", "dev", name, netns=where)
    ip_run("route", "add", "203.0.113.0/24", "dev", name, "proto", P, netns=where)
    ip_run("rule", "add", "prio", "100", "to", "192.0.2.23/32", "not", "fwmark", "0x1/0xffffffff",
           "lookup", "50", "protocol", P, netns=where)
    twin = name + "f"
    ip_run("link", "add", twin, "type", "veth", "peer", "name", twin + "p", netns=where)
    ip_run("link", "set", twin, "up", netns=where)
    ip_run("addr", "add", "198.51.100.201/24", "dev", twin, "noprefixroute", netns=where)
    ip_run("route", "add", "192.0.2.128/25", "dev", twin, netns=where)
    ip_run("rule", "add", "prio", "101", "to", "192.0.2.24/32", "lookup", "51", netns=where)


# in an order where each leaves the next something to act on
INTERFERENCE = [
    ("rule-del", ["rule", "del", "prio", "{prio}"]),
    ("route-flush", ["route", "flush", "dev", "{dev}"]),
    ("addr-flush", ["addr", "flush", "dev", "{dev}"]),
    ("link-down", ["link", "set", "{dev}", "down"]),
    ("link-del", ["link", "del", "{dev}"]),
]


@pytest.fixture
async def watched(netns_factory):
    where = netns_factory("xw")
    name, if_id = unique_xfrm()
    add_xfrm(name, if_id, where)
    setup_objects(where, name)
    stamps = Stamps()
    monitors = TappedMonitors()
    watcher = Watcher(stamps, monitor_factory=monitors)
    watcher.set_interfaces([InterfaceInfo(
        name=name, if_id=if_id, netns=where, ifindex=ifindex(name, where), link="", mtu=1500,
        external=False, operstate="up", owned=True, owners=("t",), addresses=("198.51.100.1/24",),
        routes=(("203.0.113.0/24", 254, ""),), mark=if_id, mask=0xFFFFFFFF,
    )])
    await watcher.start()
    yield where, name, stamps, watcher, monitors
    await watcher.stop()


async def settled(watcher: Watcher, monitors: TappedMonitors, where: str) -> None:
    """The watcher has been fed every event caused so far and has judged them all."""
    await watcher.monitors_started()
    await monitors.barrier(where)
    await asyncio.wait_for(watcher.idle(), 10)


async def test_each_interference_calls_reconcile_once_within_2s(watched):
    where, name, stamps, watcher, monitors = watched
    for what, template in INTERFERENCE:
        before = len(stamps.times)
        t0 = time.monotonic()
        ip_run(*[a.format(dev=name, prio="100") for a in template], netns=where)
        deadline = time.monotonic() + 2.0
        while len(stamps.times) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(stamps.times) == before + 1, f"{what}: no reconcile within 2 s"
        record(f"watch_{what}_to_reconcile_s", stamps.times[-1] - t0, "s")
        await settled(watcher, monitors, where)
        assert len(stamps.times) == before + 1, f"{what}: more than one reconcile"


async def test_interference_on_foreign_lookalikes_is_ignored(watched):
    where, name, stamps, watcher, monitors = watched
    for _what, template in INTERFERENCE:
        ip_run(*[a.format(dev=name + "f", prio="101") for a in template], netns=where)
    await settled(watcher, monitors, where)
    # the barrier's own two events are all the kernel let through
    assert stamps.times == [] and watcher.reconciles == 0 and watcher.events == 2
