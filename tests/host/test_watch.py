"""Watcher: debounce, coalescing, max delay, drift judgement, resync, resilience.

Pure logic: a fake monitor factory, events fed by hand (watch_fakes.py); the
kernel side is tested in the VM (tests/kernel/test_monitor_*.py). Every test
runs on a virtual clock (virtual_clock.py): time passes only while the loop
waits, so the timings asserted are the watcher's own, never the machine's load.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from xfrmid.kernel.events import AddressEvent, ResyncEvent, RouteEvent, RuleEvent

from watch_fakes import MAX_DELAY, QUIET, Storm, info, link, settle, watched


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
