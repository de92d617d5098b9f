"""Event storms on a real kernel: an overrun becomes one resync, a burst a few
reconcile calls, foreign devices' events are dropped by the kernel filter
before they take room in the socket, and the rest is processed fast (measured)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from xfrmid.core.views import InterfaceInfo
from xfrmid.core.watch import Watcher
from xfrmid.kernel.events import LinkEvent, ResyncEvent
from xfrmid.kernel.monitor import NetnsMonitor

from .conftest import ip_run
from .monitor_util import add_xfrm, ifindex, monitoring, record, unique_xfrm

# The burst: foreign xfrm links created and deleted and MTU flips on a foreign
# xfrm link (1 event each, several times cheaper for the slow VM): 5,200. Of
# another kind (veth) they would not reach the monitor at all (kernel filter).
PAIRS = 400
FLIPS = 4400
SMALL_RCVBUF = 4096  # the kernel's minimum: a few link messages
FOREIGN_IF_ID = 0x6000  # if_ids of the foreign xfrm links (fresh namespaces: no collision)


def foreign_xfrm_storm(flipper: str) -> list[str]:
    """ip -batch lines: PAIRS foreign xfrm links added and deleted, FLIPS MTU flips on ``flipper``."""
    return ([f"link add xo{i} type xfrm if_id {FOREIGN_IF_ID + i}" for i in range(PAIRS)]
            + [f"link set dev {flipper} mtu {1400 + i % 2}" for i in range(FLIPS)]
            + [f"link del xo{i}" for i in range(PAIRS)])


def write_batch(path: str, lines: list[str]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


async def ip_batch(netns: str, path: str) -> float:
    """Run ``ip -n NETNS -batch PATH`` without blocking the loop; its duration."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec("ip", "-n", netns, "-batch", path)
    assert await proc.wait() == 0
    return time.monotonic() - t0


async def drained(mon: NetnsMonitor, settle: float = 0.5, timeout: float = 60) -> float:
    """Wait until the monitor stops receiving; when it last did."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last, at = -1, time.monotonic()
    while loop.time() < end:
        if mon.parser.messages != last:
            last, at = mon.parser.messages, time.monotonic()
        elif time.monotonic() - at > settle:
            break
        await asyncio.sleep(0.05)
    return at


def info_of(name: str, netns: str) -> InterfaceInfo:
    return InterfaceInfo(
        name=name, if_id=0, netns=netns, ifindex=ifindex(name, netns), link="", mtu=1500,
        external=False, operstate="up", owned=True, owners=("t",), addresses=(), routes=(),
        mark=0, mask=0,
    )


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, int]:
        self.calls += 1
        await asyncio.sleep(0.05)  # a reconcile takes a while
        return {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}


async def test_overrun_resyncs_and_burst_costs_few_reconciles(netns_factory, caplog):
    caplog.set_level(logging.INFO, logger="xfrmid")
    where = netns_factory("xo")
    name, if_id = unique_xfrm()
    add_xfrm(name, if_id, where)
    ip_run("link", "add", "xflip", "type", "xfrm", "if_id", str(FOREIGN_IF_ID - 1), netns=where)
    path = write_batch(f"build/tmp-monitor/storm-{where}", foreign_xfrm_storm("xflip"))
    reconcile = Counting()
    small: list[NetnsMonitor] = []

    def factory(netns, on_event, interest):
        mon = NetnsMonitor(netns, on_event, interest, rcvbuf=SMALL_RCVBUF)
        small.append(mon)
        return mon

    watcher = Watcher(reconcile, monitor_factory=factory)
    watcher.set_interfaces([info_of(name, where)])
    await watcher.start()
    try:
        # a reference subscriber with room for the whole burst counts it
        async with monitoring(where, set(), rcvbuf=64 << 20, kernel_filter=False) as (ref, _catch):
            took = await ip_batch(where, path)
            await drained(ref)
        await asyncio.wait_for(watcher.idle(), 30)
        storm_reconciles = reconcile.calls
        mon = next(m for m in small if m.netns == where)
        assert ref.overruns == 0 and ref.parser.messages >= 5000, ref.parser.messages
        assert mon.overruns >= 1 and mon.reopens >= 1 and mon.running
        assert watcher.resyncs >= 1 and watcher.overruns >= 1
        assert f"netlink overrun in netns '{where}'; resynchronising" in caplog.text
        # the whole burst: about one reconcile per max_delay while it overruns, not thousands
        assert 1 <= storm_reconciles <= took / watcher.max_delay + 5, (storm_reconciles, took)
        assert storm_reconciles * 50 <= ref.parser.messages
        record("overrun_burst_link_events", ref.parser.messages, "events")
        record("overrun_burst_seconds", took, "s")
        record("overrun_burst_reconcile_calls", storm_reconciles, "calls")
        record("overrun_burst_overruns_small_buffer", mon.overruns, "overruns")
        # still subscribed after all that: managed objects are still watched
        ip_run("link", "set", name, "down", netns=where)
        deadline = time.monotonic() + 2
        while reconcile.calls == storm_reconciles and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert reconcile.calls == storm_reconciles + 1
    finally:
        await watcher.stop()


async def test_foreign_event_throughput(netns_factory):
    """Foreign link events queued in the kernel, then drained: the monitor's rate, and what the
    kernel filter leaves of them (nothing, even in the smallest buffer)."""
    where = netns_factory("xt")
    ip_run("link", "add", "vt0", "type", "veth", "peer", "name", "vt0p", netns=where)
    count = 2000
    path = write_batch(f"build/tmp-monitor/mtu-{where}", [f"link set dev vt0 mtu {1400 + i % 2}" for i in range(count)])
    async with monitoring(where, {"ipsec1", "ipsec2"}, rcvbuf=64 << 20, kernel_filter=False) as (mon, catch), \
            monitoring(where, {"ipsec1", "ipsec2"}, rcvbuf=SMALL_RCVBUF) as (filtered, filtered_catch):
        t0 = time.monotonic()
        os.system(f"ip -n {where} -batch {path}")  # blocks the loop: the kernel queues them all
        made = time.monotonic() - t0
        start = time.monotonic()
        last = await drained(mon)
    assert mon.overruns == 0 and mon.parser.messages >= count
    assert catch.events == [] and filtered_catch.events == []
    assert filtered.filtered and filtered.overruns == 0 and filtered.parser.messages == 0
    rate = mon.parser.messages / max(last - start, 1e-6)
    record("foreign_link_events_per_s", rate, "events/s")
    record("ip_batch_link_changes_per_s", count / made, "events/s")


async def test_storm_with_default_buffer(netns_factory):
    """A realistic storm (veth pairs churned while the monitor runs): the kernel filter keeps it
    out of the socket, so the default buffer never overruns and the managed link is still seen."""
    where = netns_factory("xs")
    name, if_id = unique_xfrm()
    add_xfrm(name, if_id, where)
    pairs = 100
    path = write_batch(
        f"build/tmp-monitor/storm2-{where}",
        [f"link add vs{i} type veth peer name vq{i}" for i in range(pairs)] + [f"link del vs{i}" for i in range(pairs)],
    )
    async with monitoring(where, {name}) as (mon, catch):
        took = await ip_batch(where, path)
        end = time.monotonic()
        last = await drained(mon)
        ip_run("link", "del", name, netns=where)
        await catch.wait(lambda e: isinstance(e, LinkEvent) and e.deleted and e.ifname == name)
    resyncs = [ev for _, ev in catch.events if isinstance(ev, ResyncEvent)]
    assert mon.filtered and mon.overruns == 0 and resyncs == []
    record("default_buffer_storm_events", mon.parser.messages, "events")
    record("default_buffer_storm_seconds", took, "s")
    record("default_buffer_storm_lag_after_burst_s", max(0.0, last - end), "s")
    record("default_buffer_storm_overruns", mon.overruns, "overruns")
