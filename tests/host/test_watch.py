"""Watcher: debounce, coalescing, max delay, drift judgement, resync, resilience.

Pure logic: a fake monitor factory, events fed by hand; the kernel side is
tested in the VM (tests/kernel/test_monitor_*.py). Every test runs on a
virtual clock (virtual_clock.py): time passes only while the loop waits, so
the timings asserted are the watcher's own, never the machine's load.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import asynccontextmanager

import pytest

from xfrmid.core.views import InterfaceInfo
from xfrmid.core.watch import COST_FACTOR, Watcher
from xfrmid.errors import Failed, NotFound
from xfrmid.kernel.events import AddressEvent, LinkEvent, ResyncEvent, RouteEvent, RuleEvent

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


@watched
async def test_burst_of_thousands_costs_one_reconcile(env):
    w, rec, *_ = env
    for i in range(5000):
        w.feed(link(up=i % 2 == 0))  # flapping, the last one (4999) down
    await settle(w)
    assert rec.calls == 1
    assert w.events == 5000 and w.bursts == 1


@watched
async def test_many_objects_in_one_burst_coalesce(env):
    w, rec, *_ = env
    for i in range(3000):
        w.feed(RouteEvent(None, True, socket.AF_INET, f"10.{i // 256}.{i % 256}.0/24", 254, 120, 10, None, 99))
    w.feed(link(deleted=True))
    await settle(w)
    assert rec.calls == 1


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


@watched
async def test_continuous_storm_still_reconciles_every_max_delay(env):
    w, rec, *_ = env
    storm = Storm(w)
    await storm.run(0.65)
    await settle(w)
    # while the storm never went quiet: one reconcile per max_delay, from its first event on
    during = storm.during(rec.times)
    assert len(during) == 4, during
    assert during[0] == pytest.approx(MAX_DELAY, abs=0.001)
    assert all(b - a == pytest.approx(MAX_DELAY, abs=QUIET / 4 + 0.001) for a, b in zip(during, during[1:])), during
    assert rec.calls == len(during) + 1, rec.times  # and one for the storm's tail once it is quiet


@watched
async def test_quiet_single_event_is_prompt(env):
    """The reconcile starts within a few loop iterations of the quiet period's end
    (counted in iterations, not seconds: a loaded machine delays both alike)."""
    w, rec, *_ = env
    loop = asyncio.get_running_loop()
    quiet_over = asyncio.Event()
    w.feed(link(deleted=True))
    loop.call_at(loop.time() + QUIET, quiet_over.set)  # due with (just after) the watcher's timer
    await quiet_over.wait()
    for _ in range(5):
        if rec.started.is_set():
            break
        await asyncio.sleep(0)
    assert rec.started.is_set()


@watched
async def test_resync_logs_and_counts(env, caplog):
    w, rec, *_ = env
    caplog.set_level(logging.INFO, logger="xfrmid.watch")
    for _ in range(3):
        w.feed(ResyncEvent("blue", "netlink socket overrun (ENOBUFS)", overrun=True))
    await settle(w)
    assert rec.calls == 1 and w.resyncs == 1 and w.overruns == 3
    assert "netlink overrun in netns 'blue'; resynchronising" in caplog.text


@watched
async def test_namespace_replaced_resyncs(env, caplog):
    w, rec, *_ = env
    caplog.set_level(logging.INFO, logger="xfrmid.watch")
    w.feed(ResyncEvent("blue", "namespace created or replaced"))
    await settle(w)
    assert rec.calls == 1 and "resynchronising" in caplog.text


@pytest.mark.parametrize(
    "event",
    [
        link(deleted=True),
        link(up=False),
        link(mtu=1300),
        link(name="renamed"),  # ifindex 10 under another name
        link(kind="veth"),  # a foreign device took the managed name
        AddressEvent(None, True, 10, "10.1.0.1/24", 4242),
        AddressEvent(None, True, 10, "2001:db8:0::1/64", 0),
        RouteEvent(None, True, socket.AF_INET, "10.2.0.0/16", 254, 120, 10, None, 4242),
        RuleEvent(None, True, socket.AF_INET, 100, 50, 120, "192.0.2.1/32", None, 4242),
    ],
    ids=["link-del", "link-down", "mtu", "renamed", "name-taken", "addr4-del", "addr6-del", "route-del", "rule-del"],
)
@watched
async def test_drift_triggers_repair(env, event):
    w, rec, *_ = env
    w.feed(event)
    await settle(w)
    assert rec.calls == 1


@pytest.mark.parametrize(
    "events",
    [
        [link(name="veth7", ifindex=77, kind="veth", managed=False)],  # foreign
        [link(name="ipsec9", ifindex=99, managed=False, deleted=True)],  # foreign xfrm
        [link(up=False), link(up=True)],  # xfrmid's own create: down, then up
        [link(ifindex=9, deleted=True)],  # an older incarnation of ipsec1 going away
        [AddressEvent(None, False, 10, "10.9.0.1/24", 0)],  # additions are no drift
        [AddressEvent(None, True, 10, "10.9.0.1/24", 0)],  # an address nobody promised
        [AddressEvent(None, True, 10, "2001:db8::1/64", 0), AddressEvent(None, False, 10, "2001:db8::1/64", 0)],
        [RouteEvent(None, True, socket.AF_INET, "10.3.0.0/16", 254, 120, 10, None, 1)],  # released
        [RouteEvent(None, True, socket.AF_INET, "10.2.0.0/16", 254, 2, 10, None, 1)],  # not ours
        [RouteEvent(None, False, socket.AF_INET, "10.2.0.0/16", 254, 120, 10, None, 1)],
        [RuleEvent(None, False, socket.AF_INET, 100, 50, 120, None, None, 1)],
    ],
    ids=["foreign-link", "foreign-xfrm", "own-create", "old-incarnation", "addr-added", "addr-unknown",
         "addr-readded", "route-released", "route-foreign", "route-added", "rule-added"],
)
@watched
async def test_no_drift_no_reconcile(env, events):
    w, rec, *_ = env
    for ev in events:
        w.feed(ev)
    await settle(w)
    assert rec.calls == 0
    assert w.bursts == 1


@watched
async def test_ipv4_address_put_back_in_the_same_burst_still_repairs(env):
    # NetworkManager's reapply on a managed xfrm link removes the address and adds
    # its own copy within a second; the kernel has meanwhile dropped the routes
    # through the link (it was the last IPv4 address) without a notification.
    w, rec, *_ = env
    w.feed(AddressEvent(None, True, 10, "10.1.0.1/24", 0))
    w.feed(AddressEvent(None, False, 10, "10.1.0.1/24", 0))
    await settle(w)
    assert rec.calls == 1 and w.bursts == 1


@watched
async def test_judge_off_reconciles_on_anything(env):
    w, rec, *_ = env
    w.judge = False
    w.feed(AddressEvent(None, False, 10, "10.9.0.1/24", 0))
    await settle(w)
    assert rec.calls == 1


@watched
async def test_removed_interface_is_no_longer_drift(env):
    w, rec, *_ = env
    w.interface_removed(info())
    w.feed(link(deleted=True))
    await settle(w)
    assert rec.calls == 0


@watched
async def test_changed_ifindex_follows_the_manager(env):
    w, rec, *_ = env
    w.repaired(info(ifindex=11), "recreated")
    w.feed(link(ifindex=10, deleted=True))  # the old one: not drift
    await settle(w)
    assert rec.calls == 0
    w.feed(link(ifindex=11, deleted=True))
    await settle(w)
    assert rec.calls == 1


@watched
async def test_failing_reconcile_is_logged_and_retried(env, caplog):
    w, rec, *_ = env
    caplog.set_level(logging.INFO, logger="xfrmid.watch")
    w._backoff = 0.05
    rec.fail_next = 1
    w.feed(link(deleted=True))
    await asyncio.sleep(0.4)
    await asyncio.wait_for(w.idle(), 5)
    assert rec.calls == 2 and w.failures == 1
    assert "retrying" in caplog.text
    # still alive for the next burst
    w.feed(link(up=False))
    await settle(w)
    assert rec.calls == 3


@watched
async def test_reconcile_raising_anything_never_escapes(env):
    w, rec, *_ = env

    async def broken():
        raise RuntimeError("bug")

    w.reconcile = broken
    w._backoff = 10
    w.feed(link(deleted=True))
    await asyncio.sleep(QUIET * 3)
    assert w.failures == 1
    w.reconcile = rec
    w.feed(link(deleted=True))
    await settle(w)
    assert rec.calls == 1


@watched
async def test_events_during_reconcile_get_one_more(env):
    w, rec, *_ = env
    rec.delay = 0.2
    w.feed(link(deleted=True))
    await asyncio.wait_for(rec.started.wait(), 2)
    for _ in range(1000):
        w.feed(link(up=False))
    await asyncio.sleep(0.3)
    await asyncio.wait_for(w.idle(), 5)
    assert rec.calls == 2


@watched
async def test_garbage_event_is_dropped_not_raised(env, caplog):
    w, rec, *_ = env
    w.feed(object())  # type: ignore[arg-type]
    assert "dropping event" in caplog.text
    w.feed(link(deleted=True))
    await settle(w)
    assert rec.calls == 1


@watched
async def test_monitors_follow_the_namespaces_in_use(env):
    w, rec, monitors, missing = env
    assert set(monitors) == {None} and monitors[None].started
    assert monitors[None].interest.names == {"ipsec1"} and 10 in monitors[None].interest.indexes
    w.interface_added(info(name="ipsec2", netns="blue", ifindex=3))
    await w.monitors_started()
    assert monitors["blue"].started and monitors["blue"].interest.names == {"ipsec2"}
    w.interface_removed(info(name="ipsec2", netns="blue", ifindex=3))
    await w.monitors_started()
    assert monitors["blue"].closed
    # the daemon's own namespace is always watched
    w.interface_removed(info())
    await w.monitors_started()
    assert not monitors[None].closed


@watched
async def test_missing_namespace_is_logged_not_raised(env, caplog):
    w, rec, monitors, missing = env
    missing.add("gone")
    w.watch_netns("gone")
    await w.monitors_started()
    assert monitors["gone"].started
    assert "cannot monitor netns 'gone' yet" in caplog.text


class One:
    def __init__(self, fail=False):
        self.calls: list[tuple[str, str | None]] = []
        self.fail = fail

    async def __call__(self, name, netns):
        self.calls.append((name, netns))
        if self.fail:
            raise NotFound(f"Interface {name!r} is not managed by xfrmid.")
        return {"repaired": 1}


@watched
async def test_few_known_interfaces_are_repaired_one_by_one(env):
    w, rec, *_ = env
    one = w.reconcile_one = One()
    w.interface_added(info(name="ipsec2", netns="blue", ifindex=3, routes=(("10.8.0.0/16", 1000, ""),)))
    w.feed(link(deleted=True))
    w.feed(AddressEvent(None, True, 10, "10.1.0.1/24", 0))
    w.feed(RouteEvent("blue", True, socket.AF_INET, "10.8.0.0/16", 1000, 120, 3, None, 1))
    await settle(w)
    assert sorted(one.calls, key=str) == [("ipsec1", None), ("ipsec2", "blue")]
    assert rec.calls == 0 and w.repairs == 2


@pytest.mark.parametrize("event", [
    ResyncEvent(None, "netlink socket overrun (ENOBUFS)", overrun=True),
    RuleEvent(None, True, socket.AF_INET, 100, 50, 120, "192.0.2.1/32", None, 1),
], ids=["resync", "rule"])
@watched
async def test_unattributable_drift_gets_a_full_reconcile(env, event):
    w, rec, *_ = env
    one = w.reconcile_one = One()
    w.feed(link(deleted=True))
    w.feed(event)
    await settle(w)
    assert rec.calls == 1 and one.calls == []


@watched
async def test_many_interfaces_get_one_full_reconcile(env):
    w, rec, *_ = env
    one = w.reconcile_one = One()
    w.set_interfaces([info(name=f"ipsec{i}", ifindex=100 + i) for i in range(40)])
    for i in range(40):
        w.feed(link(name=f"ipsec{i}", ifindex=100 + i, deleted=True))
    await settle(w)
    assert rec.calls == 1 and one.calls == []


@watched
async def test_failing_single_repair_falls_back_to_full(env):
    w, rec, *_ = env
    w.reconcile_one = One(fail=True)
    w.feed(link(deleted=True))
    await settle(w)
    assert rec.calls == 1 and w.failures == 0


@watched
async def test_drift_on_an_interface_being_changed_waits_for_the_change(env):
    w, rec, *_ = env
    one = w.reconcile_one = One()
    with w.holding(None, "ipsec1"):
        w.feed(link(deleted=True))  # xfrmid deleting it on purpose...
        await asyncio.sleep(QUIET * 4)
        assert one.calls == [] and rec.calls == 0
        w.interface_removed(info())  # ...and publishing that when done
    await settle(w)
    assert one.calls == [] and rec.calls == 0


@watched
async def test_held_interface_still_repaired_after_release(env):
    w, rec, *_ = env
    one = w.reconcile_one = One()
    with w.holding(None, "ipsec1"):
        w.feed(link(up=False))
        await asyncio.sleep(QUIET * 3)
        assert one.calls == []
    await settle(w)
    assert one.calls == [("ipsec1", None)]


@watched
async def test_holding_everything_defers_everything(env):
    w, rec, *_ = env
    with w.holding():
        w.feed(link(deleted=True))
        await asyncio.sleep(QUIET * 3)
        assert rec.calls == 0
    await settle(w)
    assert rec.calls == 1


@watched
async def test_other_interfaces_are_not_held_up(env):
    w, rec, *_ = env
    one = w.reconcile_one = One()
    w.interface_added(info(name="ipsec2", ifindex=12))
    with w.holding(None, "ipsec2"):
        w.feed(link(deleted=True))
        await settle(w)
        assert one.calls == [("ipsec1", None)]


@watched
async def test_slow_repairs_stretch_the_storm_interval(env):
    w, rec, *_ = env
    rec.delay = 0.2  # a repair costs more than max_delay
    storm = Storm(w)
    await storm.run(1.2)
    await settle(w)
    # back to back (0.2 s each, max_delay 0.15) would be ~6; stretched to COST_FACTOR x
    # 0.2 s from the first event after each repair, the loop keeps at least as much time
    # for everything else as the repairs take
    during = storm.during(rec.times)
    assert during[0] == pytest.approx(MAX_DELAY, abs=0.001)
    stretched = COST_FACTOR * rec.delay
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert gaps and all(stretched - 0.001 <= gap <= stretched + QUIET / 4 + 0.001 for gap in gaps), gaps
    assert len(during) == 3, during


@watched
async def test_hold_takes_the_managers_key(env):
    w, rec, *_ = env
    with w.hold((None, "ipsec1")):
        assert (None, "ipsec1") in w._held
    with w.hold():
        assert w._held_all == 1
    assert not w._held and w._held_all == 0
