"""Helpers of the monitor/watcher kernel tests: an event catcher, the watcher's monitors
tapped (to wait until it has been fed an event), unique names, measurements."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from xfrmid.kernel.events import Event, Interest, LinkEvent
from xfrmid.kernel.monitor import NetnsMonitor

from .conftest import ip_run, link_json

_ids = itertools.count(0x7100 + (os.getpid() % 0x100) * 0x40)
MEASUREMENTS = os.path.join("build", "reports", "monitor-measurements.json")


def unique_xfrm(prefix: str = "xw") -> tuple[str, int]:
    """A link name and if_id nobody else in the VM uses (the own namespace is shared)."""
    if_id = next(_ids)
    return f"{prefix}{if_id:x}", if_id


def add_xfrm(name: str, if_id: int, netns: str | None = None, up: bool = True) -> None:
    ip_run("link", "add", name, "type", "xfrm", "if_id", str(if_id), netns=netns)
    if up:
        ip_run("link", "set", name, "up", netns=netns)


def delete_quietly(name: str, netns: str | None = None) -> None:
    os.system(f"ip {'-n ' + netns if netns else ''} link del {name} >/dev/null 2>&1")


class Catch:
    """The monitor's consumer: keeps every event with its arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self._wake = asyncio.Event()

    def __call__(self, ev: Event) -> None:
        self.events.append((time.monotonic(), ev))
        self._wake.set()

    def clear(self) -> None:
        self.events.clear()

    async def wait(self, pred: Callable[[Event], bool], timeout: float = 2.0) -> tuple[Event, float]:
        """The first event matching pred and when it arrived; AssertionError after timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for stamp, ev in self.events[seen:]:
                if pred(ev):
                    return ev, stamp
            seen = len(self.events)
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s; got {[e for _, e in self.events]}")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def quiet(self, seconds: float = 0.3) -> list[Event]:
        """Everything that arrived during ``seconds``."""
        start = len(self.events)
        await asyncio.sleep(seconds)
        return [ev for _, ev in self.events[start:]]


class TappedMonitors:
    """The daemon's monitor factory (NetnsMonitor, one per namespace); every event a monitor
    feeds the watcher is kept here too, so a test can wait until the watcher has been fed
    everything up to a point (``barrier``) instead of sleeping."""

    def __init__(self) -> None:
        self.catch = Catch()
        self.made: dict[str | None, NetnsMonitor] = {}  # the latest per namespace

    def __call__(self, netns: str | None, on_event: Callable[[Event], None], interest: Interest) -> NetnsMonitor:
        def feed(ev: Event) -> None:
            on_event(ev)
            self.catch(ev)

        monitor = self.made[netns] = NetnsMonitor(netns, feed, interest)
        return monitor

    async def barrier(self, netns: str | None, timeout: float = 30.0) -> None:
        """Return once the watcher has been fed every event of ``netns`` caused before the call:
        a foreign xfrm link made and deleted there is the last (netlink keeps the order). A
        namespace the watcher no longer monitors feeds it nothing more: nothing to wait for."""
        monitor = self.made.get(netns)
        if monitor is None or not monitor.running:
            return
        name, if_id = unique_xfrm("xb")
        add_xfrm(name, if_id, netns, up=False)
        ip_run("link", "del", name, netns=netns)
        await self.catch.wait(lambda ev: isinstance(ev, LinkEvent) and ev.deleted and ev.ifname == name
                              and (ev.netns or None) == (netns or None), timeout)


def ifindex(name: str, netns: str | None = None) -> int:
    return int(link_json(name, netns)["ifindex"])


@asynccontextmanager
async def monitoring(netns: str | None, names: set[str], indexes: set[int] = frozenset(), **kwargs):
    catch = Catch()
    mon = NetnsMonitor(netns, catch, Interest(names=set(names), indexes=set(indexes)), **kwargs)
    await mon.start()
    try:
        yield mon, catch
    finally:
        await mon.close()


def record(name: str, value: float, unit: str) -> None:
    """Keep a measurement for the report (build/reports/monitor-measurements.json)."""
    data = {}
    try:
        with open(MEASUREMENTS) as f:
            data = json.load(f)
    except (OSError, ValueError):
        pass
    data[name] = {"value": round(value, 4), "unit": unit}
    os.makedirs(os.path.dirname(MEASUREMENTS), exist_ok=True)
    with open(MEASUREMENTS, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    print(f"measured {name}: {value:.4f} {unit}")
