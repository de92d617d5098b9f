"""Watcher: drift on a few known interfaces repaired one by one, the fall-back to a full
reconcile, interfaces held while a call changes them, and the storm interval stretched by
slow repairs. Same fakes and virtual clock as test_watch.py (watch_fakes.py).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from xfrmid.core.watch import COST_FACTOR
from xfrmid.errors import NotFound
from xfrmid.kernel.events import AddressEvent, ResyncEvent, RouteEvent, RuleEvent

from watch_fakes import MAX_DELAY, QUIET, Storm, info, link, settle, watched


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
