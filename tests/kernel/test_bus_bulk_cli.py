"""The bulk calls (CreateInterfaces, DeleteInterfaces) and xfrmctl, end to end.

On the same real dbus-daemon, daemon and kernel as test_bus_api.py (the
fixtures are session-scoped); the interface names ipsec216, ipsec240-250 and
ipsec271-276 belong to this file.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import time

from .bus_fixtures import (  # noqa: F401 - fixtures
    TOP, client, gdbus_error, ip_json, link_present, manager_call, private_bus, xfrmctl_here, xfrmid,
)


def test_delete_interfaces_checks_all_then_deletes_in_one_batch(xfrmid, capsys):
    a = xfrmid.address
    names = [f"ipsec{i}" for i in range(240, 246)]
    for name in names:
        manager_call(a, "CreateInterface", "sua{sv}", name, "0", "0")
    manager_call(a, "Attach", "ssa{sv}", "ipsec245", "holder", "0")
    # one refused: none deleted, the error names it
    assert gdbus_error(a, "DeleteInterfaces", "['ipsec240', 'ipsec245']", "@a{sv} {}") == "org.xfrmid1.Error.Busy"
    assert gdbus_error(a, "DeleteInterfaces", "['ipsec240', 'ipsec299']", "@a{sv} {}") == "org.xfrmid1.Error.NotFound"
    assert all(link_present(name) for name in names)
    manager_call(a, "DeleteInterfaces", "asa{sv}", "4", *names[:4], "0")
    assert not any(link_present(name) for name in names[:4]) and link_present("ipsec244")
    assert xfrmctl_here(capsys, a, "delete", "ipsec244", "ipsec245", "--force")[0] == 0
    assert not link_present("ipsec244") and not link_present("ipsec245")
    manager_call(a, "DeleteInterfaces", "asa{sv}", "0", "0")  # nothing to do: fine


def test_create_interfaces_all_or_nothing(xfrmid):
    a = xfrmid.address
    out = manager_call(a, "CreateInterfaces", "a(sua{sv})a{sv}", "3", "ipsec246", "0", "1", "mtu", "u", "1400",
                       "ipsec247", "0", "0", "ipsec248", "0", "1", "addresses", "as", "1", "10.248.0.1/24",
                       "0").stdout
    assert out.split() == ["ao", "3", '"/org/xfrmid1/interface/ipsec246"', '"/org/xfrmid1/interface/ipsec247"',
                           '"/org/xfrmid1/interface/ipsec248"']
    assert ip_json("link", "show", "dev", "ipsec246")[0]["mtu"] == 1400
    assert ip_json("link", "show", "dev", "ipsec247")[0]["ifalias"] == "xfrmid"
    assert "10.248.0.1" in {x["local"] for x in ip_json("addr", "show", "dev", "ipsec248")[0]["addr_info"]}
    # a foreign device holds one name: the call fails and the others are not left behind
    subprocess.run(["ip", "link", "add", "ipsec250", "type", "veth", "peer", "name", "ipsec250p"], check=True)
    try:
        assert gdbus_error(a, "CreateInterfaces", "[('ipsec249', 0, @a{sv} {}), ('ipsec250', 0, {})]",
                           "@a{sv} {}") == "org.xfrmid1.Error.Conflict"
        assert not link_present("ipsec249")
    finally:
        subprocess.run(["ip", "link", "del", "ipsec250"], check=True)
    manager_call(a, "DeleteInterfaces", "asa{sv}", "3", "ipsec246", "ipsec247", "ipsec248", "0")
    assert not any(link_present(f"ipsec{i}") for i in (246, 247, 248))


def test_xfrmctl_end_to_end(xfrmid, capsys):
    a = xfrmid.address
    # the monitor is a real separate process (it runs until interrupted)
    mon = subprocess.Popen([sys.executable, "-m", "xfrmid.cli.main", "--bus", a, "monitor", "--json"],
                           stdout=subprocess.PIPE, text=True, cwd=TOP)
    events: queue.Queue = queue.Queue()
    # a reader thread: select() on the pipe misses lines already in Python's buffer
    threading.Thread(target=lambda: [events.put(json.loads(x)) for x in mon.stdout], daemon=True).start()

    def next_event(timeout: float):
        try:
            return events.get(timeout=timeout)
        except queue.Empty:
            return None

    try:
        rc, out, err = xfrmctl_here(capsys, a, "attach", "ipsec216", "cli-a", "--json")
        assert rc == 0 and json.loads(out)["if_id"] == 216, err
        assert xfrmctl_here(capsys, a, "address", "add", "ipsec216", "cli-a", "10.216.0.1/24")[0] == 0
        assert xfrmctl_here(capsys, a, "route", "add", "ipsec216", "cli-a", "10.217.0.0/16", "--metric", "7")[0] == 0
        rc, out, _ = xfrmctl_here(capsys, a, "list", "--json")
        assert rc == 0 and any(o["Name"] == "ipsec216" for o in json.loads(out))
        rc, out, _ = xfrmctl_here(capsys, a, "--json", "status", "ipsec216")
        status = json.loads(out)
        assert status["Addresses"] == ["10.216.0.1/24"] and status["Owners"] == ["cli-a"]
        rc, out, _ = xfrmctl_here(capsys, a, "status", "ipsec216")
        assert "ipsec216" in out and "10.217.0.0/16" in out
        # without a name: the daemon's own status, systemctl-style, and as JSON
        rc, out, _ = xfrmctl_here(capsys, a, "status")
        assert rc == 0 and out.startswith("\u25cf xfrmid") and "active (running)" in out, out
        assert f"Main PID: {xfrmid.process.pid}" in out and "xfrm_interface: yes" in out, out
        rc, out, _ = xfrmctl_here(capsys, a, "status", "--json")
        daemon = json.loads(out)
        assert rc == 0 and daemon["Pid"] == xfrmid.process.pid and daemon["InterfaceCount"] >= 1
        assert any(o["Name"] == "ipsec216" for o in daemon["Interfaces"])
        rc, _, err = xfrmctl_here(capsys, a, "status", "ipsec299")
        assert rc == 3 and err.count("\n") == 1 and "Traceback" not in err
        rc, _, err = xfrmctl_here(capsys, a, "create", "not-ipsec")
        assert rc == 2 and "not-ipsec" in err
        rc, _, err = xfrmctl_here(capsys, a, "delete", "ipsec216")
        assert rc == 4, err
        rc, out, _ = xfrmctl_here(capsys, a, "reconcile", "--json")
        assert rc == 0 and set(json.loads(out)) >= {"created", "repaired", "adopted", "removed"}
        # wait until the monitor is subscribed: it prints the change of a probe interface
        deadline = time.monotonic() + 300
        lines: list = []
        probe = 0
        while time.monotonic() < deadline and not lines:
            probe += 1
            xfrmctl_here(capsys, a, "attach", "ipsec216", f"probe{probe}")
            event = next_event(15)
            if event is not None:
                lines.append(event)
        for n in range(1, probe + 1):
            xfrmctl_here(capsys, a, "detach", "ipsec216", f"probe{n}")
        assert xfrmctl_here(capsys, a, "detach", "ipsec216", "cli-a") == (0, "ipsec216 deleted (last reference).\n", "")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            event = next_event(5)
            if event is not None:
                lines.append(event)
                if event["event"] == "removed":
                    break
        assert lines and lines[-1] == {"event": "removed", "path": "/org/xfrmid1/interface/ipsec216"}, lines
        # Owners is invalidated: named, without its value
        assert any(e["event"] == "changed" and "Owners" in e["invalidated"] and "Owners" not in e["properties"]
                   for e in lines)
    finally:
        mon.send_signal(signal.SIGINT)
        assert mon.wait(120) == 0
    assert not link_present("ipsec216")


async def test_create_interfaces_many_read_by_one_dump(xfrmid, client):
    # more than apply.FEW new names: which exist and the created links are read by
    # dumps, not a get each; every interface still gets its object and InterfacesAdded
    names = [f"ipsec{i}" for i in range(271, 277)]
    seen: list = []
    await client.subscribe(lambda msg: seen.append(msg.member))
    paths = await client.create_interfaces([(n, 0, {}) for n in names])
    try:
        assert len(paths) == len(names)
        for name in names:
            props = await client.interface_properties(name)
            link = ip_json("link", "show", "dev", name)[0]
            assert props["Ifindex"] == link["ifindex"] and props["Owned"] and props["OperState"] != ""
            assert link["ifalias"] == "xfrmid" and "UP" in link["flags"]
        for _ in range(100):  # the signals follow the reply
            if seen.count("InterfacesAdded") >= len(names):
                break
            await asyncio.sleep(0.1)
        assert seen.count("InterfacesAdded") == len(names)
        assert f"created {len(names)} interfaces: {', '.join(names)}" in xfrmid.log_text()
    finally:
        await client.delete_interfaces(names)
    assert not any(link_present(name) for name in names)
