"""The watcher wired to the real Manager and Kernel as the daemon wires them (build_core):
interference on managed objects is repaired within 2 s and reported through
the listener's ``repaired``; xfrmid's own API calls cost no repair; foreign
look-alikes are left alone."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from xfrmid.core.manager import Manager
from xfrmid.core.watch import Watcher

from .conftest import ip, ip_run, link_exists
from .monitor_util import record

NAME = "ipsec1"
ADDR = "198.51.100.1/24"
ROUTE = "203.0.113.0/24"
PEER = "192.1.2.23"


class Repairs:
    """A ManagerListener that only keeps ``repaired`` calls (the bus turns them into signals)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def interface_added(self, info) -> None: ...
    def interface_changed(self, info) -> None: ...
    def interface_removed(self, info) -> None: ...

    def repaired(self, info, what: str) -> None:
        self.seen.append((info.name, what))


@pytest.fixture
async def wired(core, netns, caplog):
    caplog.set_level(logging.DEBUG, logger="xfrmid")
    repairs = Repairs()
    core.manager.subscribe(repairs)
    return core.manager, core.watcher, repairs, netns


async def promise(manager: Manager, netns: str) -> None:
    await manager.attach(NAME, "conn", netns=netns)
    await manager.add_address(NAME, "conn", ADDR, netns=netns)
    await manager.add_route(NAME, "conn", ROUTE, netns=netns)
    await manager.add_route(NAME, "conn", f"{PEER}/32", netns=netns, peer=PEER)


async def ip_async(netns: str, *args: str) -> list:
    """``ip -j -n NETNS ARGS`` without blocking the loop (the watcher must run meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "-j", "-n", netns, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return json.loads(out) if proc.returncode == 0 and out.strip() else []


async def kept(netns: str) -> dict[str, bool]:
    """Which promises the kernel holds right now (seen with iproute2)."""
    links, addrs, routes, rules = await asyncio.gather(
        ip_async(netns, "link", "show", "dev", NAME),
        ip_async(netns, "addr", "show", "dev", NAME),
        ip_async(netns, "route", "show", "dev", NAME),
        ip_async(netns, "rule", "show"),
    )
    shown = {f"{a['local']}/{a['prefixlen']}" for link in addrs for a in link.get("addr_info", [])}
    return {
        "link": bool(links),
        "up": bool(links) and "UP" in links[0]["flags"],
        "addr": ADDR in shown,
        "route": ROUTE in {r["dst"] for r in routes},
        "rule": any(r.get("protocol") == "xfrmid" for r in rules),
    }


async def settled(watcher: Watcher, monitors, netns: str) -> None:
    """The watcher has been fed every event caused so far and has judged them all."""
    await watcher.monitors_started()  # and closed: a namespace left by its last interface
    await monitors.barrier(netns)
    await asyncio.wait_for(watcher.idle(), 10)


async def test_own_calls_cost_no_repair(wired, monitors):
    """Held by the watcher while they run, xfrmid's own changes never look like drift."""
    manager, watcher, repairs, netns = wired
    await promise(manager, netns)
    await settled(watcher, monitors, netns)
    assert all((await kept(netns)).values())
    assert (watcher.reconciles, watcher.repairs) == (0, 0), watcher.stats()
    await manager.remove_address(NAME, "conn", ADDR, netns=netns)
    await manager.remove_route(NAME, "conn", ROUTE, netns=netns)
    await settled(watcher, monitors, netns)
    assert (watcher.reconciles, watcher.repairs) == (0, 0), watcher.stats()
    await manager.detach(NAME, "conn", netns=netns)
    await settled(watcher, monitors, netns)
    # the peer rule going away is not attributable to an interface: one look at most
    assert watcher.repairs == 0 and watcher.reconciles <= 1, watcher.stats()
    assert repairs.seen == []


INTERFERENCE = [  # each leaves the next something to act on
    ("rule-del", ["rule", "del", "prio", "100"], "rule"),
    ("route-flush", ["route", "flush", "dev", NAME], "route"),
    ("addr-flush", ["addr", "flush", "dev", NAME], "addr"),
    ("link-down", ["link", "set", NAME, "down"], "up"),
    ("link-del", ["link", "del", NAME], "link"),
]


async def test_interference_is_repaired_within_2s(wired, monitors, caplog):
    manager, watcher, repairs, netns = wired
    await promise(manager, netns)
    await settled(watcher, monitors, netns)
    for what, command, _check in INTERFERENCE:
        before = watcher.reconciles + watcher.repairs
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec("ip", "-n", netns, *command)
        assert await proc.wait() == 0
        gone = time.monotonic()  # the damage is done when ip returns: 2 s from here
        # the repair is done when the watcher's reconcile returns (iproute2 is
        # too slow in the VM to poll the kernel within the budget)
        while (watcher.reconciles + watcher.repairs == before or watcher._busy) and time.monotonic() - gone < 10:
            await asyncio.sleep(0.01)
        done = time.monotonic()
        state = await kept(netns)
        if not all(state.values()) or done - gone > 2.0:
            logs = "\n".join(r.getMessage() for r in caplog.records[-30:])
            raise AssertionError(f"{what}: repaired after {done - gone:.2f} s: {state}; {watcher.stats()}\n{logs}")
        record(f"repair_{what}_after_ip_returned_s", done - gone, "s")
        record(f"repair_{what}_after_ip_started_s", done - start, "s")
        await settled(watcher, monitors, netns)
    assert len(repairs.seen) >= len(INTERFERENCE) - 1, repairs.seen  # rule: repaired, maybe not per interface
    assert all(name == NAME for name, _ in repairs.seen)


async def test_foreign_lookalikes_are_not_reverted(wired, monitors):
    manager, watcher, repairs, netns = wired
    await promise(manager, netns)
    twin = NAME + "x"
    ip_run("link", "add", twin, "type", "veth", "peer", "name", twin + "p", netns=netns)
    ip_run("addr", "add", "198.51.100.201/24", "dev", twin, "noprefixroute", netns=netns)
    ip_run("link", "set", twin, "up", netns=netns)
    ip_run("route", "add", "192.0.2.128/25", "dev", twin, netns=netns)
    ip_run("rule", "add", "prio", "150", "to", "192.0.2.24/32", "lookup", "51", netns=netns)
    await settled(watcher, monitors, netns)
    before = watcher.stats()
    ip_run("rule", "del", "prio", "150", netns=netns)
    ip_run("route", "flush", "dev", twin, netns=netns)
    ip_run("addr", "flush", "dev", twin, netns=netns)
    ip_run("link", "set", twin, "down", netns=netns)
    ip_run("link", "del", twin, netns=netns)
    await settled(watcher, monitors, netns)
    assert not link_exists(twin, netns)
    assert not [r for r in ip("rule", "show", netns=netns) if r.get("priority") == 150]
    assert (watcher.reconciles, watcher.repairs) == (before["reconciles"], before["repairs"])
    assert all((await kept(netns)).values())
