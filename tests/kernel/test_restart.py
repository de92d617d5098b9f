"""Restart test: 1,000 interfaces in the desired state, 100 of them
changed in the kernel by hand while the daemon is stopped; at start the daemon
repairs exactly those and says so.

Creating 1,000 interfaces through D-Bus takes far too long under the VM's
software emulation, so the test writes the state file with the project's own
store code (what a daemon that made those promises would have left in
/run/xfrmid) and creates the matching kernel objects, with xfrmid's markers,
through one ``ip -batch``. The daemon runs in a namespace of its own.

Every interface has an owner, MTU 1400, an address and a route; every tenth
has a peer route (a route in table 50 and its rule) too. The hand changes, 20
interfaces each: deleted, set down, MTU changed, address removed, route
removed (the peer rule with it on some). Expected at start: 20 created, 80
repaired, nothing adopted or removed, in the start-up log line, and a kernel
that matches the state again; a Reconcile call right after finds nothing to do.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xfrmid.client import Client
from xfrmid.core.desired import DesiredInterface, Owner
from xfrmid.core.desired_state import DesiredState
from xfrmid.core.routes_policy import RouteRequest
from xfrmid.core.store import StateStore

from .bus_fixtures import TOP, start_bus
from .conftest import add_netns, del_netns, new_netns_name
from .crash_model import Iface, Req, dump, expected_views, matches

COUNT = 1000
CHANGED_EACH = 20  # per kind of change, five kinds
MTU = 1400


def address(n: int) -> str:
    return f"100.64.{n // 256}.{n % 256}/32"


def route(n: int) -> str:
    return f"10.{n // 256}.{n % 256}.0/24"


def peer_route(n: int) -> str:
    return f"198.18.{n // 256}.{n % 256}/32"


def desired_state() -> tuple[DesiredState, dict]:
    """The daemon's state file and the test's own model of it (crash_model terms)."""
    state, model = DesiredState(), {}
    for n in range(1, COUNT + 1):
        name = f"ipsec{n}"
        routes = {RouteRequest(destination=route(n))}
        reqs = {Req(route(n))}
        if n % 10 == 0:
            peer = peer_route(n).split("/")[0]
            routes.add(RouteRequest(destination=peer_route(n), peer=peer))
            reqs.add(Req(peer_route(n), peer=peer))
        owner = Owner(name=f"conn-{n}", addresses={address(n)}, routes=routes)
        state.put(DesiredInterface(netns=None, name=name, if_id=n, mtu=MTU, owned=True,
                                   owners={owner.name: owner}))
        model[(None, name)] = Iface(mtu=MTU, owners={owner.name: ({address(n)}, reqs)})
    return state, model


def kernel_batch(netns: str) -> str:
    # the peer pattern's rules every peer route shares (gate, lookup, landing)
    lines = ["rule add fwmark 0/0xffffffff goto 102 priority 100 proto 120",
             "rule add lookup 50 priority 102 proto 120",
             "rule add nop priority 103 proto 120"]
    for n in range(1, COUNT + 1):
        name = f"ipsec{n}"
        lines += [
            f"link add {name} type xfrm if_id {n}",
            f"link set dev {name} group 120 alias xfrmid mtu {MTU} up",
            f"address add {address(n)} dev {name}",
            f"route add {route(n)} dev {name} proto 120",
        ]
        if n % 10 == 0:
            lines += [
                f"route add {peer_route(n)} dev {name} table 50 proto 120",
                f"rule add to {peer_route(n)} fwmark {n} goto 103 priority 101 proto 120",
            ]
    return "\n".join(lines) + "\n"


def hand_changes() -> tuple[str, dict[str, set[int]]]:
    """What an administrator does to 100 interfaces (spread over the range), as an ip batch."""
    picks = random.Random(4).sample(range(1, COUNT + 1), 5 * CHANGED_EACH)
    kinds = ("deleted", "down", "mtu", "address", "route")
    changed = {kind: set(picks[i::5]) for i, kind in enumerate(kinds)}
    lines = []
    for n in sorted(changed["deleted"]):
        lines.append(f"link del ipsec{n}")  # its routes go with it; its peer rule stays
    for n in sorted(changed["down"]):
        lines.append(f"link set dev ipsec{n} down")
    for n in sorted(changed["mtu"]):
        lines.append(f"link set dev ipsec{n} mtu 1300")
    for n in sorted(changed["address"]):
        lines.append(f"address del {address(n)} dev ipsec{n}")
    for n in sorted(changed["route"]):
        lines.append(f"route del {route(n)} dev ipsec{n}")
        if n % 10 == 0:
            lines.append(f"rule del to {peer_route(n)} fwmark {n} goto 103 priority 101")
    return "\n".join(lines) + "\n", changed


def ip_batch(netns: str, text: str) -> None:
    proc = subprocess.run(["ip", "-n", netns, "-batch", "-"], input=text, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


async def test_restart_repairs_exactly_what_was_changed(tmp_path, record_testsuite_property):
    netns = new_netns_name("xrs")
    add_netns(netns)
    bus = start_bus(policy=False)
    state_dir = tmp_path / "state"
    log = tmp_path / "xfrmid.log"
    proc = None
    client = None
    timings = {}
    try:
        began = time.monotonic()
        state, model = desired_state()
        StateStore.in_dir(state_dir).write(state.to_json())
        ip_batch(netns, kernel_batch(netns))
        timings["setup"] = time.monotonic() - began
        # the kernel matches the state before the hand changes
        assert not matches(expected_views(model, [None])[None], dump(netns))

        changes, changed = hand_changes()
        ip_batch(netns, changes)
        assert sum(len(v) for v in changed.values()) == 100

        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "xfrmid.daemon", "--bus", bus.address,
                 "--config", str(tmp_path / "absent.conf"), "--state-dir", str(state_dir), "--log-level", "info"],
                stdout=out, stderr=subprocess.STDOUT, cwd=TOP,
            )
        client = await Client.connect(bus.address)
        while not await _has_owner(client):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() - started < 600, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        timings["start"] = time.monotonic() - started

        text = log.read_text()
        found = re.search(r"start-up reconcile: created (\d+), repaired (\d+), adopted (\d+), removed (\d+)", text)
        assert found, text[-3000:]
        counts = dict(zip(("created", "repaired", "adopted", "removed"), map(int, found.groups())))
        assert counts == {"created": CHANGED_EACH, "repaired": 4 * CHANGED_EACH, "adopted": 0, "removed": 0}, text[-3000:]
        # each changed interface is named in a repair line, and no other
        repaired = {int(n) for n in re.findall(r"(?:created interface|repaired|added address \S+ to|"
                                                r"added route \S+ via) ipsec(\d+)\b", text)}
        # a batch of creations is logged in one line naming them all
        for names in re.findall(r"created \d+ interfaces[^:\n]*: ([^\n]*)", text):
            repaired |= {int(n) for n in re.findall(r"ipsec(\d+)\b", names)}
        assert repaired == set().union(*changed.values()), sorted(repaired ^ set().union(*changed.values()))

        problems = matches(expected_views(model, [None])[None], dump(netns))
        assert not problems, problems[:20]
        assert await client.reconcile() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}
        assert len(await client.list_interfaces()) == COUNT
        timings["total"] = time.monotonic() - began
        summary = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        print(f"restart test: {counts}; {summary}")
        record_testsuite_property("restart_summary", f"{counts}; {summary}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if client is not None:
            client.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        bus.stop()
        del_netns(netns)
        shutil.rmtree(state_dir, ignore_errors=True)


async def _has_owner(client: Client) -> bool:
    from dbus_fast import Message, MessageType

    reply = await client.bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
        member="NameHasOwner", signature="s", body=["org.xfrmid1"]))
    return reply.message_type == MessageType.METHOD_RETURN and bool(reply.body[0])
