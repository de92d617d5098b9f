"""The road-warrior hub: thousands of connections sharing one interface.

libreswan's commonest use of an XFRM interface: every client's connection
shares the server's ``ipsec-interface`` and adds its own /32 route. Here each
connection is an Attach of a new owner on ``ipsec1`` plus an AddRoute of its
/32 (every 100th also an AddAddress), ``WINDOW`` connections in flight as a
client may pipeline them. A cost per call that grows with the owners already
there shows as the last connections costing more than the first: the rows
compare the time per connection of the last k with that of the first k
(k = 1,000 of 10,000), and with a Properties.Get of the same daemon.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import time
from collections.abc import Callable

from xfrmid.bus.names import INTERFACE_IFACE, interface_path
from xfrmid.client import Client

from .cases import WINDOW, _r, get_version, row
from .harness import median, process_cpu_s

HUB = "ipsec1"
ROUTE_BASE = ipaddress.ip_address("10.128.0.0")  # connection i routes ROUTE_BASE + i /32
ADDRESS_BASE = ipaddress.ip_address("10.64.0.0")  # every ADDRESS_EVERY-th connection adds an address
ADDRESS_EVERY = 100
GET_SAMPLES = 200


def owner(i: int) -> str:
    return f"road-{i}"


def route_of(i: int) -> str:
    return f"{ROUTE_BASE + i}/32"


def address_of(i: int) -> str:
    return f"{ADDRESS_BASE + i}/32"


def window_size(n: int) -> int:
    """The first and the last this many connections are compared (1,000 of 10,000)."""
    return max(1, min(1000, n // 10))


async def _stamped(calls, window: int) -> tuple[float, list[float]]:
    """Run connection coroutines ``window`` at a time: (start, sorted completion times)."""
    sem = asyncio.Semaphore(window)
    done: list[float] = []

    async def one(factory):
        async with sem:
            await factory()
            done.append(time.perf_counter())

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in calls))
    return start, sorted(done)


def _first_last(start: float, done: list[float], k: int) -> tuple[float, float]:
    """Seconds per connection of the first ``k`` and of the last ``k`` completed."""
    first = (done[k - 1] - start) / k
    last = (done[-1] - (done[-k - 1] if len(done) > k else start)) / k
    return first, last


async def _gets(client: Client) -> list[float]:
    """Round trips of GET_SAMPLES Properties.Get (the manager's Version), one at a time."""
    times = []
    for _ in range(GET_SAMPLES):
        t0 = time.perf_counter()
        await get_version(client)
        times.append(time.perf_counter() - t0)
    return times


Pids = dict[str, Callable[[], int]]  # the processes whose CPU a row accounts, by role


def _cpu(pids: Pids) -> dict[str, float]:
    times = {role: sum(process_cpu_s(pid())) for role, pid in pids.items()}
    times["client"] = sum(os.times()[:2])
    return times


async def _timed_run(client: Client, calls, pids: Pids) -> tuple[float, list[float], list[float], list[float], dict]:
    """(start, completion times) of the connections' calls, with the Gets right before and right
    after them: the (emulated, shared) machine's speed drifts over minutes, so the baseline is
    the median of both. The last item: the share of the calls' wall time each process
    (daemon, bus, this client) spent on a CPU, which says which of them the calls wait for."""
    before = await _gets(client)
    cpu = _cpu(pids)
    start, done = await _stamped(calls, WINDOW)
    wall = done[-1] - start
    busy = {role: round((used - cpu[role]) / wall, 3) for role, used in _cpu(pids).items()}
    return start, done, before, await _gets(client), busy


def kernel_counts(netns: str) -> tuple[int, int]:
    """(xfrmid's routes through the hub, addresses on it) as iproute2 lists them."""
    routes = subprocess.run(["ip", "-n", netns, "-4", "route", "show", "proto", "120", "dev", HUB],
                            capture_output=True, text=True).stdout.splitlines()
    addresses = subprocess.run(["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", HUB],
                               capture_output=True, text=True).stdout.splitlines()
    return len(routes), len(addresses)


def _links(netns: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "type", "xfrm"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


def _hub_row(name: str, start: float, done: list[float], before: list[float], after: list[float], busy: dict,
             n: int, **extra) -> dict:
    """Last k against the first k (target 1.5) and against a Get (target 2.0): ok when both hold."""
    k = window_size(n)
    first, last = _first_last(start, done, k)
    get = median(before + after)
    r = row(name, last, first, n, 1.5, compared=k, first_per_connection_s=_r(first),
            last_per_connection_s=_r(last), get_s=_r(get), get_ratio=round(last / get, 3), get_target=2.0,
            get_before_s=_r(median(before)), get_after_s=_r(median(after)), elapsed_s=_r(done[-1] - start),
            baseline_tool=f"the first {k} connections of the same run; get_s: median Properties.Get "
                          f"round trip ({GET_SAMPLES} right before and {GET_SAMPLES} right after, one at a "
                          "time), same daemon", window=WINDOW, cpu_busy=busy, **extra)
    r["ok"] = r["ok"] and r["get_ratio"] <= 2.0
    return r


async def connect(client: Client, netns: str, n: int, pids: Pids) -> dict:
    """n connections on the hub; the ``hub`` row (kernel state checked with iproute2)."""

    async def one(i: int) -> None:
        await client.attach(HUB, owner(i))
        await client.add_route(HUB, owner(i), route_of(i))
        if i % ADDRESS_EVERY == 0:
            await client.add_address(HUB, owner(i), address_of(i))

    start, done, before, after, busy = await _timed_run(client, [lambda i=i: one(i) for i in range(1, n + 1)], pids)
    routes, addresses = kernel_counts(netns)
    if (routes, addresses) != (n, n // ADDRESS_EVERY):
        raise RuntimeError(f"hub: the kernel has {routes} routes and {addresses} addresses on {HUB}, "
                           f"not {n} and {n // ADDRESS_EVERY}")
    t0 = time.perf_counter()
    props = await client.interface_properties(HUB)
    get_all = time.perf_counter() - t0
    if len(props["Owners"]) != n or len(props["Routes"]) != n:
        raise RuntimeError(f"hub: {HUB} lists {len(props['Owners'])} owners and {len(props['Routes'])} routes")
    t0 = time.perf_counter()
    await client.call("Get", "ss", [INTERFACE_IFACE, "Owners"], path=interface_path(HUB, None),
                      interface="org.freedesktop.DBus.Properties")
    get_owners = time.perf_counter() - t0
    return _hub_row("hub", start, done, before, after, busy, n, calls=2 * n + n // ADDRESS_EVERY,
                    get_all_s=_r(get_all), get_owners_s=_r(get_owners), api="Attach + AddRoute /32 per connection (AddAddress every 100th)")


async def disconnect(client: Client, netns: str, n: int, pids: Pids) -> dict:
    """Detach of each connection; the ``hub_detach`` row (the last Detach deletes the hub)."""
    start, done, before, after, busy = await _timed_run(
        client, [lambda i=i: client.detach(HUB, owner(i)) for i in range(1, n + 1)], pids)
    if _links(netns):
        raise RuntimeError(f"hub: {HUB} is still there after every owner detached")
    return _hub_row("hub_detach", start, done, before, after, busy, n, api="Detach per connection")
