"""Drift repair while running: netlink events -> debounced reconcile.

The Watcher keeps one kernel monitor per namespace that holds managed
interfaces (and always the daemon's own), collects their events and, once
things are quiet for ``quiet`` seconds (or at the latest ``max_delay`` after
the first event of a burst), decides whether anything it saw breaks a promise
(``drift.Managed.is_drift``: a managed link deleted or set down, a promised
address, route or rule deleted, the event stream lost...).

Only then it repairs: with the injected ``reconcile_one(name, netns)`` (the
manager's ``reconcile_interface``) when the drift concerns a few known
interfaces, else with the injected ``reconcile`` (a full one; always after a
resync or a deleted rule). A storm of thousands of events costs one repair,
and xfrmid's own changes (which also produce events) cost none. Only the
last event per object counts, so a link created down and then set up by
xfrmid is not mistaken for drift; the removal of an IPv4 address is its own
object (``drift.event_key``), since putting the address back does not bring
back the routes the kernel dropped with it.

It learns what is managed from the manager's listener calls (it implements
``ManagerListener``), is the manager's drift guard (``guard.DriftGuard``:
``hold`` and ``vouches``), and never raises into its caller: failures of the
reconcile are logged and retried with backoff. The monitors come from the
injected ``monitor_factory`` (the daemon's: ``kernel.monitor.NetnsMonitor``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from ..errors import XfrmidError
from ..kernel.events import AddressEvent, Event, Interest, LinkEvent, ResyncEvent, RouteEvent, RuleEvent
from .desired import Key
from .drift import Managed, event_key
from .views import InterfaceInfo

log = logging.getLogger("xfrmid.watch")

Reconcile = Callable[[], Awaitable[dict[str, int]]]
ReconcileOne = Callable[[str, "str | None"], Awaitable[dict[str, int]]]  # (name, netns)
ONE_BY_ONE_MAX = 16  # drift on more interfaces than this: one full reconcile instead
QUIET = 0.1  # seconds without events that end a burst
MAX_DELAY = 1.0  # a continuous storm still reconciles this often
MAX_PENDING = 100_000  # distinct objects remembered per burst; beyond: just reconcile
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
COST_FACTOR = 2.0  # a storm waits at least this many times the last repair's duration
JUDGE_CHUNK = 2000  # events judged between two yields to the event loop


class Monitor(Protocol):
    """The events of one namespace, delivered to the ``on_event`` it was made with."""

    @property
    def running(self) -> bool:
        """Subscribed and reading: no event is lost without a ResyncEvent."""
        ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...


# (namespace, on_event, the namespace's Interest) -> its monitor, not started yet
MonitorFactory = Callable[[str | None, Callable[[Event], None], Interest], Monitor]


def _label(netns: str | None) -> str:
    return repr(netns) if netns else "<own>"


class Watcher:
    """Turns kernel events into calls of ``reconcile``; see the module doc."""

    def __init__(
        self,
        reconcile: Reconcile,
        *,
        reconcile_one: ReconcileOne | None = None,
        quiet: float = QUIET,
        max_delay: float = MAX_DELAY,
        monitor_factory: MonitorFactory,
        judge: bool = True,
    ) -> None:
        self.reconcile = reconcile
        self.reconcile_one = reconcile_one
        self.quiet = quiet
        self.max_delay = max(max_delay, quiet)
        self.judge = judge  # False: every event the monitors pass triggers a reconcile
        self._factory = monitor_factory
        self._managed = Managed()
        self._monitors: dict[str | None, Monitor] = {}
        self._extra_netns: set[str | None] = {None}
        self._pending: dict[tuple, Event] = {}
        # the pending events a vouch must look at (not additions, not yet judged harmless)
        self._suspects: dict[tuple, Event] = {}
        self._overflow = False
        self._first = self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._due = asyncio.Event()
        self._retry = False  # a failed reconcile is due again
        self._retry_handle: asyncio.TimerHandle | None = None
        self._backoff = RETRY_FIRST
        self._runner: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._busy = False
        self._ran = asyncio.Event()  # set after every turn of the runner (idle() waits for it)
        self._started = False
        self._held: Counter[Key] = Counter()  # interfaces xfrmid is changing
        self._held_all = 0
        self._cost = 0.0  # seconds the last repair took
        # loop time since when each namespace's monitor is subscribed; -inf for those
        # start() subscribes (the daemon starts the watcher right after its reconcile)
        self._since: dict[str | None, float] = {}
        self._initial = True
        # counters
        self.events = 0  # events received from the monitors
        self.bursts = 0  # debounced batches judged
        self.reconciles = 0  # full reconcile calls made
        self.repairs = 0  # reconcile_one calls made
        self.resyncs = 0  # of which caused by a lost event stream
        self.failures = 0  # reconcile calls that raised
        self.overruns = 0  # overrun events seen

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start monitoring the namespaces in use; returns once they are subscribed."""
        self._started = True
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="xfrmid-watch")
        await asyncio.gather(*(self._start_monitor(ns) for ns in self._wanted_netns()))
        self._initial = False

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop monitors and the runner; a reconcile in progress gets ``timeout`` seconds."""
        self._started = False
        for handle in (self._timer, self._retry_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry_handle = None
        self._since.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            if self._busy:
                try:
                    await asyncio.wait_for(asyncio.shield(self._idle_runner()), timeout)
                except asyncio.TimeoutError:
                    log.warning("stopping while a reconcile is still running")
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        monitors, self._monitors = self._monitors, {}
        for monitor in monitors.values():
            try:
                await monitor.close()
            except Exception:
                log.exception("closing a monitor failed")

    async def _idle_runner(self) -> None:
        while self._busy:
            self._ran.clear()
            await self._ran.wait()

    async def monitors_started(self) -> None:
        """Wait until every monitor asked for so far has started (or failed to)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no events are pending and no reconcile runs (tests, benchmarks)."""
        while self._pending or self._overflow or self._busy or self._due.is_set() or self._retry:
            self._ran.clear()
            await self._ran.wait()

    def vouches(self, key: Key, ifindex: int, since: float | None) -> bool:
        """Whether drift of managed interface ``key`` since ``since`` (loop time of the
        kernel state the caller holds, link ``ifindex``) would be in the watcher's hands.

        True only while the namespace's monitor is subscribed and was before ``since``
        (the monitors start() subscribes count as subscribed before the start-up
        reconcile, which the daemon runs before taking calls), the watcher knows the
        interface by that ifindex (a deletion of that link is judged drift), no repair
        waits for a retry, and no pending event may concern it: an addition, or an event
        on another interface, is fine; on it, on a rule, or a lost stream in its namespace,
        is not, unless it breaks no promise by the views published since (xfrmid's own
        removals). Each such event is judged once, so a vouch costs O(1) amortised while
        a hub's own events wait for their burst. Events still in the socket are a race
        no read closes (see ``Reconciler.vouched``).
        """
        netns = key[0] or None
        monitor = self._monitors.get(netns)
        started = self._since.get(netns)
        if not self._started or monitor is None or started is None or since is None or since < started:
            return False
        if not monitor.running or self._retry or self._overflow:
            return False
        info = self._managed.infos.get((netns, key[1]))
        if info is None or info.ifindex != ifindex or ifindex <= 0:
            return False
        suspects = self._suspects
        for event_id, ev in list(suspects.items()):
            if (ev.netns or None) != netns:
                continue
            if not isinstance(ev, (ResyncEvent, RuleEvent)):
                if not self._managed.is_drift(ev):
                    del suspects[event_id]  # harmless now, and stays so (see above)
                    continue
                target = self._managed.target(ev)
                if target is not None and target != (netns, key[1]):
                    continue
            return False
        return True

    def stats(self) -> dict[str, int]:
        return {
            "events": self.events,
            "bursts": self.bursts,
            "reconciles": self.reconciles,
            "repairs": self.repairs,
            "resyncs": self.resyncs,
            "failures": self.failures,
            "overruns": self.overruns,
        }

    @contextmanager
    def holding(self, netns: str | None = None, name: str | None = None) -> Iterator[None]:
        """xfrmid itself is changing this interface (every one when ``name`` is None).

        Its own changes make events too, and the manager publishes the new
        state only when the change is done; drift on a held interface is
        judged once it is released, against what the manager published.
        """
        key = (netns or None, name) if name is not None else None
        if key is None:
            self._held_all += 1
        else:
            self._held[key] += 1
        try:
            yield
        finally:
            if key is None:
                self._held_all -= 1
            else:
                self._held[key] -= 1
                if self._held[key] <= 0:
                    del self._held[key]

    def hold(self, key: Key | None = None) -> AbstractContextManager[None]:
        """``holding`` for the manager's key type: (netns, name), or None for everything."""
        return self.holding() if key is None else self.holding(key[0], key[1])

    # -- what is managed (ManagerListener) -----------------------------------

    def set_interfaces(self, infos: Iterable[InterfaceInfo]) -> None:
        """Replace everything known, e.g. with the manager's views after the start-up reconcile."""
        self._managed.clear()
        for info in infos:
            self._managed.remember(info)
        self._sync_monitors()

    def interface_added(self, info: InterfaceInfo) -> None:
        self._managed.remember(info)
        self._sync_monitors()

    def interface_changed(self, info: InterfaceInfo) -> None:
        self._managed.remember(info)
        self._sync_monitors()

    def repaired(self, info: InterfaceInfo, what: str) -> None:
        self._managed.remember(info)
        self._sync_monitors()

    def interface_removed(self, info: InterfaceInfo) -> None:
        self._managed.forget(info)
        self._sync_monitors()

    def watch_netns(self, netns: str | None) -> None:
        """Monitor a namespace even while no managed interface lives there."""
        self._extra_netns.add(netns or None)
        self._sync_monitors()

    def unwatch_netns(self, netns: str | None) -> None:
        if netns:
            self._extra_netns.discard(netns)
            self._sync_monitors()

    def _wanted_netns(self) -> set[str | None]:
        return self._extra_netns | self._managed.namespaces()

    def _sync_monitors(self) -> None:
        if not self._started:
            return
        wanted = self._wanted_netns()
        for netns in wanted - set(self._monitors):
            self._spawn(self._start_monitor(netns))
        for netns in set(self._monitors) - wanted:
            self._since.pop(netns, None)
            monitor = self._monitors.pop(netns)
            self._spawn(monitor.close())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_monitor(self, netns: str | None) -> None:
        if netns in self._monitors:
            return
        monitor = self._factory(netns, self.feed, self._managed.interest_of(netns))
        self._monitors[netns] = monitor
        initial = self._initial
        try:
            await monitor.start()
            if self._monitors.get(netns) is monitor:
                self._since[netns] = float("-inf") if initial else asyncio.get_running_loop().time()
        except Exception as exc:
            # a missing namespace is watched for; the monitor resyncs when it appears
            log.warning("cannot monitor netns %s yet: %s", _label(netns), exc)

    # -- events -> debounced reconcile ---------------------------------------

    def feed(self, ev: Event) -> None:
        """Take one event (the monitors' callback); cheap, never raises."""
        if not self._started:
            return  # stopping: a monitor's last words
        try:
            self.events += 1
            loop = asyncio.get_running_loop()
            now = loop.time()
            if not self._pending and not self._overflow:
                self._first = now
            self._last = now
            if isinstance(ev, ResyncEvent) and ev.overrun:
                self.overruns += 1
            if len(self._pending) < MAX_PENDING:
                event_id = event_key(ev)
                self._pending[event_id] = ev
                if isinstance(ev, (AddressEvent, RouteEvent, RuleEvent)) and not ev.deleted:  # never drift
                    self._suspects.pop(event_id, None)  # a newer event on the object supersedes it
                else:
                    self._suspects[event_id] = ev
            else:
                self._overflow = True
            if self._timer is None and not self._busy:
                self._timer = loop.call_at(now + self.quiet, self._tick)
        except Exception:
            log.exception("dropping event %r", ev)

    def _tick(self) -> None:
        """Timer: fire once quiet for ``quiet`` s, or ``max_delay`` after a burst began."""
        self._timer = None
        if self._busy:
            return  # the runner looks again when it is done
        if not (self._pending or self._overflow):
            if self._retry:
                self._due.set()
            return
        loop = asyncio.get_running_loop()
        due = min(self._last + self.quiet, self._first + max(self.max_delay, COST_FACTOR * self._cost))
        if loop.time() + 0.001 < due:
            self._timer = loop.call_at(due, self._tick)
        else:
            self._due.set()

    def _retry_now(self) -> None:
        self._retry_handle = None
        self._retry = True
        if self._timer is None:
            self._tick()

    async def _run(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            pending, overflow, retry = self._pending, self._overflow, self._retry
            self._pending, self._overflow, self._retry = {}, False, False
            self._suspects = {}
            self._busy = True
            try:
                await self._burst(list(pending.values()), overflow, retry)
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any bug below
                log.exception("drift repair failed")
            finally:
                self._busy = False
            if self._timer is None:
                self._tick()  # events that came during the reconcile
            self._ran.set()

    async def _burst(self, events: list[Event], overflow: bool, retry: bool) -> None:
        self.bursts += 1
        resync = [ev for ev in events if isinstance(ev, ResyncEvent)]
        for netns in sorted({ev.netns or "" for ev in resync}):
            evs = [ev for ev in resync if (ev.netns or "") == netns]
            if any(ev.overrun for ev in evs):
                log.warning("netlink overrun in netns %s; resynchronising", _label(netns or None))
            else:
                log.info("netns %s: %s; resynchronising", _label(netns or None), evs[-1].reason)
        drift = []
        for start in range(0, len(events), JUDGE_CHUNK):
            if start:
                await asyncio.sleep(0)  # thousands of distinct objects: let the bus in between
            drift.extend(ev for ev in events[start:start + JUDGE_CHUNK]
                         if not self.judge or self._managed.is_drift(ev))
        if self._held or self._held_all:
            drift = self._defer_held(drift)
        if not (drift or overflow or retry):
            log.debug("%d events, no drift", len(events))
            return
        if resync or overflow:
            self.resyncs += 1
        targets = None if (overflow or retry) else self._targets(drift)
        started = asyncio.get_running_loop().time()
        try:
            if targets is not None:
                counts = await self._repair_each(targets)
            else:
                self.reconciles += 1
                log.debug("full reconcile #%d after %d kernel events%s", self.reconciles, len(events),
                          " (event stream lost)" if resync or overflow else "")
                counts = await self.reconcile()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._cost = asyncio.get_running_loop().time() - started
            self.failures += 1
            self._retry_handle = asyncio.get_running_loop().call_later(self._backoff, self._retry_now)
            log.error("repair after kernel changes failed (%s); retrying in %.0f s", exc, self._backoff,
                      exc_info=not isinstance(exc, XfrmidError))
            self._backoff = min(self._backoff * 2, RETRY_MAX)
            return
        self._cost = asyncio.get_running_loop().time() - started
        self._backoff = RETRY_FIRST
        done = {k: v for k, v in (counts or {}).items() if v}
        if done:
            log.info("repaired after kernel changes: %s", ", ".join(f"{k} {v}" for k, v in sorted(done.items())))
        else:
            log.debug("%d drift events: nothing to repair", len(drift))

    def _defer_held(self, drift: list[Event]) -> list[Event]:
        """Put drift on interfaces xfrmid is changing back to pending; the rest."""
        rest = []
        now = asyncio.get_running_loop().time()
        for ev in drift:
            target = self._managed.target(ev)
            if self._held_all or (target is not None and target in self._held):
                if not self._pending and not self._overflow:
                    self._first = now
                self._last = now
                event_id = event_key(ev)
                if event_id not in self._pending:  # a newer event on it wins
                    self._pending[event_id] = ev
                    self._suspects[event_id] = ev
            else:
                rest.append(ev)
        return rest

    def _targets(self, drift: list[Event]) -> set[Key] | None:
        """The interfaces the drift is about, when there are few and all are known; else None."""
        if self.reconcile_one is None:
            return None
        targets: set[Key] = set()
        for ev in drift:
            target = self._managed.target(ev)
            if target is None:
                return None  # rules, resyncs: only a full reconcile knows
            targets.add(target)
            if len(targets) > ONE_BY_ONE_MAX:
                return None
        return targets

    async def _repair_each(self, targets: set[Key]) -> dict[str, int]:
        assert self.reconcile_one is not None
        totals: dict[str, int] = {}
        for netns, name in sorted(targets, key=lambda k: (k[0] or "", k[1])):
            if (netns, name) not in self._managed.infos:
                continue  # no longer managed: nothing to keep
            self.repairs += 1
            log.debug("repair #%d: reconciling %s in netns %s", self.repairs, name, _label(netns))
            try:
                counts = await self.reconcile_one(name, netns)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. it stopped being managed meanwhile: look at everything
                log.info("repairing %r alone failed (%s); reconciling everything", name, exc)
                self.reconciles += 1
                return await self.reconcile()
            for key, value in (counts or {}).items():
                totals[key] = totals.get(key, 0) + value
        return totals
