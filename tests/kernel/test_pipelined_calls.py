"""A hub's pipelined calls on one interface, through the real bus, daemon and kernel.

A road-warrior server's clients connect at once: an Attach of a new owner and
an AddRoute of its /32 each, many in flight on one interface. The calls that
queue behind the interface's lock run as one change (one journal write, one
kernel apply, one publish); each caller must still get its own answer, a route
the kernel refuses must fail only its own call, and the state file must hold
every acknowledged call across a restart. The daemon runs in a namespace of its
own, so the foreign route the test plants meets no other test.
"""

from __future__ import annotations

import asyncio
import subprocess

from xfrmid import errors
from xfrmid.client import Client

from .bus_fixtures import start_bus, start_daemon
from .conftest import add_netns, del_netns, ip_run, new_netns_name

HUB = "ipsec1"
N = 60
REFUSED = 7  # connection 7's /32 is already in the main table, on another device


def route_of(i: int) -> str:
    return f"10.231.0.{i}/32"


def kernel_routes(netns: str) -> set[str]:
    out = subprocess.run(["ip", "-n", netns, "-4", "route", "show", "proto", "120", "dev", HUB],
                         capture_output=True, text=True, check=True).stdout
    return {f"{line.split()[0]}/32" if "/" not in line.split()[0] else line.split()[0]
            for line in out.splitlines() if line.strip()}


async def test_pipelined_connections_each_answered_and_durable():
    netns = new_netns_name("pipe")
    add_netns(netns)
    bus = start_bus(policy=False)
    daemon = None
    try:
        ip_run("route", "add", route_of(REFUSED), "dev", "lo", netns=netns)
        daemon = start_daemon(bus, netns=netns)
        client = await Client.connect(bus.address)
        try:
            async def connect(i: int) -> None:
                await client.attach(HUB, f"road-{i}")
                await client.add_route(HUB, f"road-{i}", route_of(i))

            outcomes = await asyncio.gather(*(connect(i) for i in range(1, N + 1)), return_exceptions=True)
            refused = outcomes[REFUSED - 1]
            assert isinstance(refused, errors.Conflict), refused
            assert [o for i, o in enumerate(outcomes, 1) if i != REFUSED] == [None] * (N - 1)
            want = {route_of(i) for i in range(1, N + 1) if i != REFUSED}
            assert kernel_routes(netns) == want
            props = await client.interface_properties(HUB)
            assert len(props["Owners"]) == N and {r[0] for r in props["Routes"]} == want
        finally:
            client.close()
        # calls were grouped (whether the refused AddRoute landed in a group depends on how
        # the bus delivered the calls; host tests cover that path deterministically)
        assert "ran as one change" in daemon.log_text(), "no calls were grouped"

        # every acknowledged call is in the state file: a restart keeps them all
        assert daemon.stop() == 0
        daemon = start_daemon(bus, state_dir=daemon.state_dir, netns=netns)
        client = await Client.connect(bus.address)
        try:
            props = await client.interface_properties(HUB)
            assert len(props["Owners"]) == N and {r[0] for r in props["Routes"]} == want
            assert kernel_routes(netns) == want
            detached = await asyncio.gather(*(client.detach(HUB, f"road-{i}") for i in range(1, N + 1)))
            assert detached.count(True) == 1  # the last owner's Detach deleted the hub
            assert subprocess.run(["ip", "-n", netns, "link", "show", "dev", HUB],
                                  capture_output=True).returncode != 0
        finally:
            client.close()
    finally:
        if daemon is not None:
            daemon.stop()
        bus.stop()
        del_netns(netns)
