"""What each kind of call costs the daemon when a client pipelines them.

The hub rows time connections (an Attach and an AddRoute each); this says
which call the time goes to. One daemon, one interface (``hub.HUB``); per
kind, ``--n`` calls with ``cases.WINDOW`` in flight: Properties.Get, Attach
of a new owner, AddRoute of its /32, RemoveRoute of it, Detach. For each:
wall time per call, and the daemon's user and system CPU per call and the
bus daemon's (/proc/PID/stat), so a call bound by the daemon's CPU shows as
its CPU close to its wall time. A lone Get's round trip is printed first:
the hub rows' baseline.

    tests/vm/run python -m bench.call_costs --n 1000 [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from xfrmid.client import Client

from .cases import WINDOW, get_version
from .harness import daemon_pid, median, netns_add, netns_del, process_cpu_s, start_bus, start_daemon
from .hub import HUB, _stamped, kernel_counts, owner, route_of


async def _kind(name: str, calls: list, daemon: int, bus: int) -> dict:
    (user0, sys0), (bus_u0, bus_s0) = process_cpu_s(daemon), process_cpu_s(bus)
    start = time.perf_counter()
    await _stamped(calls, WINDOW)
    wall = time.perf_counter() - start
    (user1, sys1), (bus_u1, bus_s1) = process_cpu_s(daemon), process_cpu_s(bus)
    n = len(calls)
    ms = {"wall": wall / n, "daemon_user": (user1 - user0) / n, "daemon_sys": (sys1 - sys0) / n,
          "bus": (bus_u1 + bus_s1 - bus_u0 - bus_s0) / n}
    ms = {key: round(value * 1000, 3) for key, value in ms.items()}
    print(f"{name:12s} " + "  ".join(f"{key} {value:6.2f}" for key, value in ms.items()) + "  (ms per call)",
          flush=True)
    return {"call": name, **ms}


async def measure(address: str, netns: str, n: int, daemon: int, bus: int) -> dict:
    client = await Client.connect(address)
    try:
        lone = []
        for _ in range(200):
            start = time.perf_counter()
            await get_version(client)
            lone.append(time.perf_counter() - start)
        print(f"a lone Get's round trip: {median(lone) * 1000:.2f} ms (median of 200)", flush=True)
        await client.attach(HUB, owner(0))
        rows = [await _kind("Get", [lambda: get_version(client) for _ in range(n)], daemon, bus)]
        ids = range(1, n + 1)
        rows.append(await _kind("Attach", [lambda i=i: client.attach(HUB, owner(i)) for i in ids], daemon, bus))
        rows.append(await _kind("AddRoute", [lambda i=i: client.add_route(HUB, owner(i), route_of(i)) for i in ids],
                                daemon, bus))
        if kernel_counts(netns)[0] != n:
            raise RuntimeError(f"{HUB} does not hold the {n} routes just added")
        rows.append(await _kind("RemoveRoute", [lambda i=i: client.remove_route(HUB, owner(i), route_of(i))
                                                for i in ids], daemon, bus))
        rows.append(await _kind("Detach", [lambda i=i: client.detach(HUB, owner(i)) for i in ids], daemon, bus))
        return {"lone_get_ms": round(median(lone) * 1000, 3), "window": WINDOW, "n": n, "calls": rows}
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.call_costs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="calls of each kind (default 1000)")
    parser.add_argument("--profile", help="py-spy's collapsed stacks of the daemon to this file")
    parser.add_argument("--out", help="the results as JSON to this file")
    args = parser.parse_args(argv)
    netns = f"xfrmid-call-costs-{os.getpid()}"
    netns_add(netns)
    bus = start_bus()
    state = Path(tempfile.mkdtemp(prefix="xfrmid-call-costs-")) / "state"
    daemon = start_daemon(bus, netns, state, timeout=600, profile=args.profile)
    try:
        result = asyncio.run(measure(bus.address, netns, args.n, daemon_pid(daemon), bus.process.pid))
    finally:
        daemon.stop()
        bus.stop()
        netns_del(netns)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
