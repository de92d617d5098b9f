"""The benchmarks of many interfaces, each beside its baseline in the same run (the hub: hub.py).

Every timing row is ``{"name", "xfrmid", "baseline", "ratio", "n", ...}`` in
seconds; ``ratio`` = xfrmid / baseline. The memory row is absolute (``rss_mb``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from xfrmid.bus.names import MANAGER_IFACE
from xfrmid.client import Client
from xfrmid.core.desired import DesiredInterface, Owner
from xfrmid.core.desired_state import DesiredState
from xfrmid.core.routes_policy import RouteRequest
from xfrmid.core.store import StateStore
from xfrmid.kernel.events import Interest, LinkEvent
from xfrmid.kernel.monitor import NetnsMonitor

from . import kernel_reads as kernel_reads_mod
from .harness import TOP, Daemon, ip_batch, median, percentile, timed

# Calls in flight at once: the client pipelines, as a real client may. A system
# bus lets one connection wait for at most 128 replies (dbus-daemon's
# max_replies_per_connection); beyond that it answers LimitsExceeded, so a
# real client of the system bus pipelines at most that deep.
WINDOW = 100
ADDRESS_BASE = ipaddress.ip_address("10.64.0.0")
ROUTE_BASE = ipaddress.ip_address("10.128.0.0")


def row(name: str, xfrmid: float | None, baseline: float | None, n: int, target: float, **extra) -> dict:
    ratio = None if xfrmid is None or not baseline else round(xfrmid / baseline, 3)
    return {"name": name, "xfrmid": _r(xfrmid), "baseline": _r(baseline), "ratio": ratio, "n": n,
            "target": target, "ok": ratio is not None and ratio <= target, **extra}


def _r(value: float | None) -> float | None:
    # microseconds: a 3 ms Get rounded to 0.1 ms would put the ratio a few percent off
    return None if value is None else round(value, 6)


def names(n: int) -> list[str]:
    return [f"ipsec{i}" for i in range(1, n + 1)]


def link_lines(n: int, *, marked: bool = True, first: int = 1) -> list[str]:
    """The links xfrmid makes, in the two requests it makes: create with the group, then alias + up.

    ``marked=False``: the bare create alone (one RTM_NEWLINK per link), the kernel's floor.
    ``first``: the links first..n only.
    """
    lines = []
    for i in range(first, n + 1):
        if marked:
            lines.append(f"link add name ipsec{i} group 120 type xfrm if_id {i}")
            lines.append(f"link set dev ipsec{i} alias xfrmid up")
        else:
            lines.append(f"link add name ipsec{i} type xfrm if_id {i}")
    return lines


def xfrm_count(netns: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "xfrm"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


async def pipelined(calls, seconds: float, window: int = WINDOW) -> tuple[float, int]:
    """Run coroutine factories with ``window`` in flight until done or ``seconds`` have passed.

    (seconds, calls completed); fewer than asked means the time limit cut it short
    (calls already sent are waited for and counted).
    """
    sem = asyncio.Semaphore(window)
    done = 0
    start = time.perf_counter()
    stop_at = start + seconds if seconds > 0 else float("inf")

    async def one(factory):
        nonlocal done
        async with sem:
            if time.perf_counter() < stop_at:
                await factory()
                done += 1

    await asyncio.gather(*(one(c) for c in calls))
    return time.perf_counter() - start, done


SETTLE_S = 2.0  # > the watcher's MAX_DELAY: its repairs after the create are done and logged


async def create_delete(client: Client, xfrmid_ns: str, base_ns: str, n: int, deadline: float,
                        window: int = WINDOW, single: bool = False,
                        resyncs: Callable[[], int] = lambda: 0,
                        progress: Callable[[str], None] = lambda _: None) -> list[dict]:
    """create and delete: n interfaces through the API vs ip -batch of the same links.

    ``single``: one CreateInterface/DeleteInterface call per interface, ``window`` in
    flight, instead of one CreateInterfaces/DeleteInterfaces call for all.
    ``deadline`` (seconds, 0 none; single calls only): each of create and delete stops sending calls
    after that long; a row cut short says so (xfrmid and ratio null, completed,
    elapsed_s, and the per-call ratio of what was done).
    ``resyncs``: how often the daemon has resynchronised so far (its log), for each row's
    ``daemon_resyncs``: an overrun of its monitor during that operation.
    """
    progress(f"ip -batch baselines: create and delete {n} links, bare link add, group delete")
    base_create = ip_batch(base_ns, link_lines(n))
    base_delete = ip_batch(base_ns, [f"link del dev {name}" for name in names(n)])
    # the kernel's floor: one bare RTM_NEWLINK per link (xfrmid needs two: markers, then up)
    floor_create = ip_batch(base_ns, link_lines(n, marked=False))
    # bulk deletion the kernel offers: one RTM_DELLINK for a link group (one
    # unregister batch), after moving the links into a group of their own
    bulk_delete = ip_batch(base_ns, [f"link set dev {name} group 121" for name in names(n)] + ["link del group 121"])
    if xfrm_count(base_ns):
        raise RuntimeError(f"link del group 121 left {xfrm_count(base_ns)} links in {base_ns}")
    # what the bus alone costs: n Properties.Get through the same pipeline (no kernel work)
    bus_floor, _ = await pipelined([lambda: get_version(client) for _ in range(n)], 0, window)
    progress(f"ip -batch create {base_create:.1f}s, delete {base_delete:.1f}s; xfrmid creating {n}")
    if single:
        took_create, created = await pipelined(
            [lambda nm=nm: client.create_interface(nm) for nm in names(n)], deadline, window)
    else:  # one CreateInterfaces call (bulk calls where single calls cannot reach the target)
        start = time.perf_counter()
        await client.create_interfaces([(nm, 0, {}) for nm in names(n)])
        took_create, created = time.perf_counter() - start, n
    await asyncio.sleep(SETTLE_S)  # the watcher's burst after the create (an overrun is logged then)
    resyncs_created = resyncs()
    if xfrm_count(xfrmid_ns) != created:
        raise RuntimeError(f"create left {xfrm_count(xfrmid_ns)} links in the kernel after {created} calls")
    progress(f"created {created} in {took_create:.1f}s ({resyncs_created} resyncs); deleting")
    if single:
        took_delete, deleted = await pipelined(
            [lambda nm=nm: client.delete_interface(nm) for nm in names(created)], deadline, window)
    else:  # one DeleteInterfaces call
        start = time.perf_counter()
        await client.delete_interfaces(names(created))
        took_delete, deleted = time.perf_counter() - start, created
    await asyncio.sleep(SETTLE_S)
    resyncs_deleted = resyncs() - resyncs_created
    if xfrm_count(xfrmid_ns) != created - deleted:
        raise RuntimeError(f"delete left {xfrm_count(xfrmid_ns)} links in the kernel, not {created - deleted}")

    def explained(took: float, done: int, base: float) -> dict:
        per_call = took / done if done else None
        return {"completed": done, "elapsed_s": _r(took), "window": window, "cut_short": done < n,
                "per_call_ms": _r(per_call * 1000) if per_call else None,
                "baseline_per_link_ms": _r(base / n * 1000),
                "per_call_ratio": round(per_call / (base / n), 3) if per_call else None}

    return [
        row("create", took_create if created == n else None, base_create, n, 1.5,
            baseline_tool="ip -batch (link add group 120 + link set alias xfrmid up)", api="CreateInterface per interface" if single else "CreateInterfaces, one call",
            kernel_floor_s=_r(floor_create), kernel_floor_tool="ip -batch (bare link add type xfrm)",
            daemon_resyncs=resyncs_created,
            bus_floor_s=_r(bus_floor), bus_floor_tool=f"{n} Properties.Get, {window} in flight",
            **explained(took_create, created, base_create)),
        row("delete", took_delete if created == n and deleted == n else None, base_delete, n, 1.0,
            baseline_tool="ip -batch (link del)", kernel_bulk_s=_r(bulk_delete), daemon_resyncs=resyncs_deleted, api="DeleteInterface per interface" if single else "DeleteInterfaces, one call",
            kernel_bulk_tool="ip -batch (link set group 121 per link, then one link del group 121)",
            **explained(took_delete, deleted, base_delete)),
    ]


def scale_state(n: int) -> dict:
    """Desired state of n on-demand interfaces, each with one owner, one address and one route."""
    state = DesiredState()
    for i in range(1, n + 1):
        iface = DesiredInterface(netns=None, name=f"ipsec{i}", if_id=i, owned=True)
        iface.owners[f"bench-{i}"] = Owner(
            name=f"bench-{i}", addresses={f"{ADDRESS_BASE + i}/32"},
            routes={RouteRequest(destination=f"{ROUTE_BASE + i}/32")},
        )
        state.put(iface)
    return state.to_json()


PREPARE_CHUNK = 1000  # interfaces per ip -batch: a progress line each, the kernel's work unchanged


def prepare_scale(netns: str, state_dir: Path, n: int, progress: Callable[[str], None] = lambda _: None) -> float:
    """Put n managed interfaces in the kernel (ip -batch) and in the state file; ip -batch's seconds.

    The interfaces go in batches of PREPARE_CHUNK (their links, then addresses, then
    routes), so ``progress`` can say how far a preparation of hours has come; one batch
    of all took as long (A/B in the VM, 3,000 interfaces).
    """
    took = 0.0
    for first in range(1, n + 1, PREPARE_CHUNK):
        last = min(n, first + PREPARE_CHUNK - 1)
        span = range(first, last + 1)
        lines = (link_lines(last, first=first) + [f"address add {ADDRESS_BASE + i}/32 dev ipsec{i}" for i in span]
                 + [f"route add {ROUTE_BASE + i}/32 dev ipsec{i} proto 120" for i in span])
        chunk = ip_batch(netns, lines)
        took += chunk
        if n > PREPARE_CHUNK:
            progress(f"prepared {last} of {n} interfaces in {took:.0f}s "
                     f"({chunk / (last - first + 1) * 1000:.1f}s per 1,000 in the last batch)")
    start = time.perf_counter()
    StateStore.in_dir(state_dir).write(scale_state(n))
    progress(f"state file of {n} interfaces written in {time.perf_counter() - start:.1f}s")
    return took


def kernel_reads(netns: str) -> dict:
    """The reads of the start-up reconcile, by iproute2 and by a bare netlink reader (kernel_reads.py)."""
    return {"iproute2": kernel_reads_mod.iproute2_reads(netns), "raw": kernel_reads_mod.raw_reads(netns),
            **kernel_reads_mod.python_floor(str(TOP))}


def startup_row(daemon: Daemon, listing: tuple[float, float, float], n: int, reads: dict,
                name: str = "startup") -> dict:
    """READY=1 after the exec, with the phases (seconds from the exec) from the daemon's log.

    The baseline (target 1.0): iproute2 reading what the start-up reconcile must read
    (links, addresses, routes of both families in all tables, rules; ``reads``, from
    kernel_reads()). Beside it: ``listing``, (wall, user, sys) of ``ip -d link show``
    (links only), and the bare dumps' times, whose system CPU time is the kernel's share
    (``kernel_reads_sys_s``), beside the daemon's own CPU time.
    """
    user, system = daemon.cpu_s()
    iproute2, raw = reads.get("iproute2") or {}, reads.get("raw") or {}
    return row(name, daemon.ready - daemon.started, iproute2.get("wall_s"), n, 1.0,
               baseline_tool="iproute2 reading links (ip -d link show), addresses, routes (IPv4 and IPv6, "
                             "all tables) and rules, one after the other",
               phases=daemon.phases(),
               iproute2_reads_s=_r(iproute2.get("wall_s")), iproute2_reads_user_s=_r(iproute2.get("user_s")),
               iproute2_reads_sys_s=_r(iproute2.get("sys_s")),
               ip_link_show_s=_r(listing[0]), ip_link_show_user_s=_r(listing[1]), ip_link_show_sys_s=_r(listing[2]),
               ip_link_show_ratio=round((daemon.ready - daemon.started) / listing[0], 3) if listing[0] else None,
               kernel_reads_s=_r(raw.get("wall_s")), kernel_reads_user_s=_r(raw.get("user_s")),
               kernel_reads_sys_s=_r(raw.get("sys_s")), kernel_reads_messages=raw.get("messages"),
               kernel_reads_tool="bare netlink dumps (xfrm links, addresses, routes of protocol 120, rules), "
                                 "replies unparsed; sys = the kernel's work",
               daemon_user_s=_r(user), daemon_sys_s=_r(system),
               python_start=reads.get("python_start"), python_imports=reads.get("python_imports"),
               includes="python start and imports, kernel probe, start-up reconcile (dumps, state file, "
                        "plan), watcher, bus connection, objects exported, bus name, READY=1")


RSS_TARGET_MB = 100.0  # the daemon's RSS with make bench's 10,000 interfaces
KB_PER_INTERFACE_TARGET = 5.0  # KiB of RSS per interface above the daemon with none, at any scale


def memory_row(daemon: Daemon, n: int, empty_rss_mb: float | None, per_interface: bool) -> dict:
    """RSS of the daemon holding n interfaces, beside the same daemon started with none.

    Two targets: the absolute ``rss_target_mb`` and ``kb_per_interface`` (RSS above
    ``empty_rss_mb``, divided by n); ``per_interface`` picks the one ``ok`` judges,
    which ``judged_on`` names.
    """
    rss, hwm = daemon.rss_mb()
    per_kb = None if empty_rss_mb is None or not n else (rss - empty_rss_mb) * 1024 / n
    if per_interface:
        judged_on, target, ok = "kb_per_interface", KB_PER_INTERFACE_TARGET, per_kb is not None and per_kb <= KB_PER_INTERFACE_TARGET
    else:
        judged_on, target, ok = "rss_mb", RSS_TARGET_MB, rss <= RSS_TARGET_MB
    empty = None if empty_rss_mb is None else round(empty_rss_mb, 1)
    return {"name": "memory", "xfrmid": round(rss, 1), "baseline": empty, "ratio": None, "n": n,
            "rss_mb": round(rss, 1), "hwm_mb": round(hwm, 1), "empty_rss_mb": empty,
            "kb_per_interface": None if per_kb is None else round(per_kb, 2),
            "rss_target_mb": RSS_TARGET_MB, "kb_per_interface_target": KB_PER_INTERFACE_TARGET,
            "judged_on": judged_on, "target": target, "ok": ok}


async def get_version(client: Client) -> None:
    await client.call("Get", "ss", [MANAGER_IFACE, "Version"], interface="org.freedesktop.DBus.Properties")


async def latency(client: Client, n: int, samples: int) -> dict:
    """Sequential Attach of a new owner on existing interfaces vs Properties.Get, same daemon.

    Get and Attach alternate, so a stall of the (emulated, shared) machine
    falls on either alike; ``get_p99_over_median`` is that noise floor.
    """
    samples = min(samples, n)
    gets, attaches = [], []
    for i in range(1, samples + 1):
        start = time.perf_counter()
        await get_version(client)
        gets.append(time.perf_counter() - start)
        start = time.perf_counter()
        await client.attach(f"ipsec{i}", "bench-latency")
        attaches.append(time.perf_counter() - start)
    med, get_med = median(attaches), median(gets)
    p99, get_p99 = percentile(attaches, 99), percentile(gets, 99)
    return row("latency", med, get_med, n, 2.0, samples=samples, attach_p99=_r(p99),
               p99_over_median=round(p99 / med, 3), p99_ok=p99 <= 2 * med, get_p99=_r(get_p99),
               get_p99_over_median=round(get_p99 / get_med, 3))


def _is_up(netns: str, name: str) -> bool:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "dev", name],
                         capture_output=True, text=True).stdout
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" in flags


async def _storm(client: Client, netns: str, victim: str, lines: list[str], wait: float) -> dict:
    """Set ``victim`` down, run ``lines`` (ip -batch) at once, Properties.Get every 0.1 s throughout.

    consistent_s: seconds from the drift until the victim's link is up again, taken
    from a monitor of the bench's own (xfrmid's NetnsMonitor with its kernel
    filter, so the storm costs the bench nothing) and confirmed by iproute2.
    """
    gets: list[float] = []
    stop = asyncio.Event()
    ups: list[float] = []
    came_up = asyncio.Event()

    def on_event(ev) -> None:
        if isinstance(ev, LinkEvent) and ev.ifname == victim and ev.up and not ev.deleted:
            ups.append(time.perf_counter())
            came_up.set()

    async def poll_gets():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await asyncio.wait_for(get_version(client), 30)
            except asyncio.TimeoutError:
                pass
            gets.append(time.perf_counter() - start)
            await asyncio.sleep(0.1)

    monitor = NetnsMonitor(netns, on_event, Interest(names={victim}))
    await monitor.start()
    poller = asyncio.create_task(poll_gets())
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(subprocess.run, ["ip", "-n", netns, "link", "set", "dev", victim, "down"], check=True)
        t0 = time.perf_counter()
        burst_task = asyncio.create_task(asyncio.to_thread(ip_batch, netns, lines))
        while not came_up.is_set():
            try:
                await asyncio.wait_for(came_up.wait(), 0.25)
            except asyncio.TimeoutError:
                pass
            if burst_task.done() and time.perf_counter() - t0 > max(wait, 5 * burst_task.result()):
                break
        burst = await burst_task
        # the Gets of the whole storm: until the burst is over and the repair done
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await poller
        await monitor.close()
    consistent = ups[0] - t0 if ups else None
    if consistent is not None and not await asyncio.to_thread(_is_up, netns, victim):
        consistent = None  # up for a moment, down again: not consistent
    if consistent is None:  # leave the namespace as it was for what follows
        subprocess.run(["ip", "-n", netns, "link", "set", "dev", victim, "up"])
    worst = max(gets) if gets else None
    return {"events": len(lines), "burst_s": _r(burst), "consistent_s": _r(consistent),
            "repaired": consistent is not None,
            "consistent_after_burst_s": None if consistent is None else _r(consistent - burst),
            "max_get_s": _r(worst), "median_get_s": _r(median(gets)) if gets else None, "gets": len(gets)}


async def event_storm(client: Client, netns: str, n: int, events: int, wait: float = 60.0,
                      progress: Callable[[str], None] = lambda _: None) -> dict:
    """``events`` foreign link events in one burst while a managed link drifts (set down).

    The row: MTU flips on a foreign veth (a storm of foreign events: the daemon's kernel
    filter drops them before they reach it). xfrmid: seconds from the drift until
    the daemon has put the link back up (consistent); baseline: seconds the burst
    took; a Properties.Get every 0.1 s must answer within 1 s. ``foreign_xfrm``:
    the same with MTU flips on a foreign xfrm link, whose events do reach the
    daemon (parsed and judged: not drift).
    """
    subprocess.run(["ip", "-n", netns, "link", "add", "benchfx", "type", "veth", "peer", "name", "benchfy"],
                   check=True)
    subprocess.run(["ip", "-n", netns, "link", "add", "benchxf", "type", "xfrm", "if_id", str(n + 100_000)],
                   check=True)
    try:
        progress(f"storm of {events} MTU flips on a foreign veth")
        veth = await _storm(client, netns, f"ipsec{n}", [f"link set dev benchfx mtu {1400 + (i % 2) * 100}"
                                                         for i in range(events)], wait)
        progress(f"burst {veth['burst_s']:.0f}s, consistent after {veth['consistent_s']}s; "
                 f"storm of {events} MTU flips on a foreign xfrm link")
        xfrm = await _storm(client, netns, f"ipsec{max(1, n - 1)}", [f"link set dev benchxf mtu {1400 + i % 2}"
                                                                   for i in range(events)], wait)
    finally:
        subprocess.run(["ip", "-n", netns, "link", "del", "benchfx"], capture_output=True)
        subprocess.run(["ip", "-n", netns, "link", "del", "benchxf"], capture_output=True)
    if xfrm["consistent_s"] is not None and xfrm["burst_s"]:
        xfrm["ratio"] = round(xfrm["consistent_s"] / xfrm["burst_s"], 3)
    worst = veth["max_get_s"]
    return row("event_storm", veth["consistent_s"], veth["burst_s"], events, 2.0, repaired=veth["repaired"],
               max_get_s=worst, get_ok=worst is not None and worst <= 1.0, gets=veth["gets"],
               median_get_s=veth["median_get_s"], consistent_after_burst_s=veth["consistent_after_burst_s"],
               storm="ip -batch: MTU flips on a foreign veth", foreign_xfrm=xfrm)
