"""The six benchmarks of issue 6, each beside its baseline in the same run.

Every timing row is ``{"name", "xfrmid", "baseline", "ratio", "n", ...}`` in
seconds; ``ratio`` = xfrmid / baseline. The memory row is absolute (``rss_mb``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import time
from pathlib import Path

from xfrmid.bus.names import MANAGER_IFACE
from xfrmid.client import Client
from xfrmid.core.desired import DesiredInterface, DesiredState, Owner
from xfrmid.core.routes_policy import RouteRequest
from xfrmid.core.store import StateStore

from .harness import Daemon, ip_batch, median, percentile, timed

WINDOW = 32  # calls in flight at once: the client pipelines, as the issue allows
ADDRESS_BASE = ipaddress.ip_address("10.64.0.0")
ROUTE_BASE = ipaddress.ip_address("10.128.0.0")


def row(name: str, xfrmid: float | None, baseline: float | None, n: int, target: float, **extra) -> dict:
    ratio = None if xfrmid is None or not baseline else round(xfrmid / baseline, 3)
    return {"name": name, "xfrmid": _r(xfrmid), "baseline": _r(baseline), "ratio": ratio, "n": n,
            "target": target, "ok": ratio is not None and ratio <= target, **extra}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def names(n: int) -> list[str]:
    return [f"ipsec{i}" for i in range(1, n + 1)]


def link_lines(n: int) -> list[str]:
    """The links xfrmid makes, in the two requests it makes: create with the group, then alias + up."""
    lines = []
    for i in range(1, n + 1):
        lines.append(f"link add name ipsec{i} group 120 type xfrm if_id {i}")
        lines.append(f"link set dev ipsec{i} alias xfrmid up")
    return lines


def xfrm_count(netns: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "xfrm"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


async def pipelined(calls, deadline: float, window: int = WINDOW) -> tuple[float, int]:
    """Run coroutine factories with ``window`` in flight until done or ``deadline`` (monotonic).

    (seconds, calls completed); fewer than asked means the deadline cut it short.
    """
    sem = asyncio.Semaphore(window)
    done = 0

    async def one(factory):
        nonlocal done
        async with sem:
            if time.monotonic() < deadline:
                await factory()
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in calls))
    return time.perf_counter() - start, done


async def create_delete(client: Client, xfrmid_ns: str, base_ns: str, n: int, deadline: float) -> list[dict]:
    """create and delete: n interfaces through the API vs ip -batch of the same links.

    A run cut short by ``deadline`` reports xfrmid None with how many calls completed.
    """
    base_create = ip_batch(base_ns, link_lines(n))
    base_delete = ip_batch(base_ns, [f"link del dev {name}" for name in names(n)])
    took_create, created = await pipelined([lambda nm=nm: client.create_interface(nm) for nm in names(n)], deadline)
    if xfrm_count(xfrmid_ns) != created:
        raise RuntimeError(f"create left {xfrm_count(xfrmid_ns)} links in the kernel after {created} calls")
    took_delete, deleted = await pipelined(
        [lambda nm=nm: client.delete_interface(nm) for nm in names(created)], deadline)
    if xfrm_count(xfrmid_ns) != created - deleted:
        raise RuntimeError(f"delete left {xfrm_count(xfrmid_ns)} links in the kernel, not {created - deleted}")
    return [
        row("create", took_create if created == n else None, base_create, n, 1.5, completed=created,
            elapsed_s=_r(took_create), baseline_tool="ip -batch (link add + link set alias up)"),
        row("delete", took_delete if created == n and deleted == n else None, base_delete, n, 1.0,
            completed=deleted, elapsed_s=_r(took_delete), baseline_tool="ip -batch (link del)"),
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


def prepare_scale(netns: str, state_dir: Path, n: int) -> float:
    """Put n managed interfaces in the kernel (ip -batch) and in the state file; seconds spent."""
    lines = link_lines(n)
    for i in range(1, n + 1):
        lines.append(f"address add {ADDRESS_BASE + i}/32 dev ipsec{i}")
        lines.append(f"route add {ROUTE_BASE + i}/32 dev ipsec{i} proto 120")
    took = ip_batch(netns, lines)
    StateStore.in_dir(state_dir).write(scale_state(n))
    return took


def startup_row(daemon: Daemon, baseline: float, n: int) -> dict:
    return row("startup", daemon.ready - daemon.started, baseline, n, 3.0,
               baseline_tool="ip -d link show", includes="python start, kernel dumps, reconcile, bus name")


def memory_row(daemon: Daemon, n: int) -> dict:
    rss, hwm = daemon.rss_mb()
    return {"name": "memory", "xfrmid": round(rss, 1), "baseline": None, "ratio": None, "n": n,
            "rss_mb": round(rss, 1), "hwm_mb": round(hwm, 1), "target": 100.0, "ok": rss <= 100.0}


async def get_version(client: Client) -> None:
    await client.call("Get", "ss", [MANAGER_IFACE, "Version"], interface="org.freedesktop.DBus.Properties")


async def latency(client: Client, n: int, samples: int) -> dict:
    """Sequential Attach of a new owner on existing interfaces vs Properties.Get, same daemon."""
    samples = min(samples, n)
    gets, attaches = [], []
    for _ in range(samples):
        start = time.perf_counter()
        await get_version(client)
        gets.append(time.perf_counter() - start)
    for i in range(1, samples + 1):
        start = time.perf_counter()
        await client.attach(f"ipsec{i}", "bench-latency")
        attaches.append(time.perf_counter() - start)
    med = median(attaches)
    p99 = percentile(attaches, 99)
    return row("latency", med, median(gets), n, 2.0, samples=samples, attach_p99=_r(p99),
               p99_over_median=round(p99 / med, 3), p99_ok=p99 <= 2 * med, get_p99=_r(percentile(gets, 99)))


def _is_up(netns: str, name: str) -> bool:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "dev", name],
                         capture_output=True, text=True).stdout
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",") if "<" in out else []
    return "UP" in flags


async def event_storm(client: Client, netns: str, n: int, events: int, wait: float = 60.0) -> dict:
    """``events`` foreign link events in one burst while a managed link drifts (set down).

    xfrmid: seconds from the drift until the daemon has put the link back up
    (consistent again); baseline: seconds the burst took. A Properties.Get every
    0.1 s during the storm must answer within 1 s.
    """
    subprocess.run(["ip", "-n", netns, "link", "add", "benchfx", "type", "veth", "peer", "name", "benchfy"],
                   check=True)
    lines = [f"link set dev benchfx mtu {1400 + (i % 2) * 100}" for i in range(events)]
    victim = f"ipsec{n}"
    gets: list[float] = []
    stop = asyncio.Event()

    async def poll_gets():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await asyncio.wait_for(get_version(client), 30)
            except asyncio.TimeoutError:
                pass
            gets.append(time.perf_counter() - start)
            await asyncio.sleep(0.1)

    poller = asyncio.create_task(poll_gets())
    await asyncio.sleep(0.3)
    subprocess.run(["ip", "-n", netns, "link", "set", "dev", victim, "down"], check=True)
    t0 = time.perf_counter()
    burst_task = asyncio.create_task(asyncio.to_thread(ip_batch, netns, lines))
    consistent = None
    while True:
        await asyncio.sleep(0.25)
        if await asyncio.to_thread(_is_up, netns, victim):
            consistent = time.perf_counter() - t0
            break
        elapsed = time.perf_counter() - t0
        if burst_task.done() and elapsed > max(wait, 5 * burst_task.result()):
            break
    burst = await burst_task
    stop.set()
    await poller
    if consistent is None:  # leave the namespace as it was for what follows
        subprocess.run(["ip", "-n", netns, "link", "set", "dev", victim, "up"])
    worst = max(gets) if gets else None
    return row("event_storm", consistent, burst, events, 2.0, repaired=consistent is not None,
               max_get_s=_r(worst), get_ok=worst is not None and worst <= 1.0, gets=len(gets))
