"""What the watcher's tests drive it with: fake monitors, an injected reconcile that
counts its calls, and a started watcher on a virtual clock (``watched``).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from xfrmid.core.views import InterfaceInfo
from xfrmid.core.watch import Watcher
from xfrmid.errors import Failed, NotFound
from xfrmid.kernel.events import LinkEvent

from virtual_clock import on_virtual_clock

QUIET = 0.03
MAX_DELAY = 0.15


def info(name="ipsec1", netns="", ifindex=10, mtu=1400, addresses=(), routes=()) -> InterfaceInfo:
    return InterfaceInfo(
        name=name, if_id=1, netns=netns, ifindex=ifindex, link="", mtu=mtu, external=False,
        operstate="up", owned=True, owners=("conn",), addresses=tuple(addresses),
        routes=tuple(routes), mark=1, mask=0xFFFFFFFF,
    )


def link(name="ipsec1", ifindex=10, *, netns=None, deleted=False, up=True, mtu=1400, kind="xfrm", managed=True):
    return LinkEvent(netns, deleted, ifindex, name, kind, up, "up" if up else "down", mtu, 120, managed)


class FakeMonitor:
    def __init__(self, registry, netns, on_event, interest, fail=False):
        self.netns, self.on_event, self.interest, self.fail = netns, on_event, interest, fail
        self.started = self.closed = self.running = False
        registry[netns] = self

    async def start(self):
        self.started = True
        if self.fail:
            raise NotFound(f"Network namespace {self.netns!r} does not exist.")
        self.running = True

    async def close(self):
        self.closed, self.running = True, False


class Recorder:
    """The injected reconcile: counts calls, can fail or be slow."""

    def __init__(self):
        self.calls = 0
        self.times: list[float] = []  # loop time of each call
        self.fail_next = 0
        self.delay = 0.0
        self.started = asyncio.Event()

    async def __call__(self):
        self.calls += 1
        self.times.append(asyncio.get_running_loop().time())
        self.started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            raise Failed("Dumping links failed: the kernel ran out of memory.")
        return {"created": 0, "repaired": 1, "adopted": 0, "removed": 0}


@asynccontextmanager
async def watching():
    """A started watcher over fake monitors, managing ipsec1; (watcher, reconcile, monitors, missing)."""
    rec = Recorder()
    monitors: dict = {}
    missing: set = set()

    def factory(netns, on_event, interest):
        return FakeMonitor(monitors, netns, on_event, interest, fail=netns in missing)

    w = Watcher(rec, quiet=QUIET, max_delay=MAX_DELAY, monitor_factory=factory)
    w.set_interfaces([info(addresses=("10.1.0.1/24", "2001:db8::1/64"), routes=(("10.2.0.0/16", 254, ""),))])
    await w.start()
    try:
        yield w, rec, monitors, missing
    finally:
        await w.stop()


watched = on_virtual_clock(watching)


async def settle(w: Watcher) -> None:
    """Until the events fed so far are judged and what they call for is done."""
    await asyncio.wait_for(w.idle(), 5)


class Storm:
    """Events fed back to back, one every QUIET/4 of loop time: never quiet for QUIET."""

    def __init__(self, w: Watcher) -> None:
        self.w = w
        self.start = self.end = 0.0

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.start = loop.time()
        while loop.time() < self.start + seconds:
            self.w.feed(link(up=False))
            await asyncio.sleep(QUIET / 4)
        self.end = loop.time()

    def during(self, times: list[float]) -> list[float]:
        """The calls that started while the storm went on (since its start)."""
        return [t - self.start for t in times if t < self.end]
