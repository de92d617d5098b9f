"""The org.xfrmid1 contract on a real dbus-daemon with the real daemon and kernel.

Two independent clients: busctl/gdbus (sd-bus and GDBus, what pluto and NM
would use) and the project's own dbus-fast client. Interface names ipsec201+
are used by this file only.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import pytest
from .bus_fixtures import (  # noqa: F401 - fixtures
    TOP, busctl, busctl_json, client, delivered, gdbus, gdbus_error, ip_json, link_present, manager_call, private_bus, props,
    wait_for, xfrmid,
)

from xfrmid import errors
from xfrmid.bus.introspection import interfaces_of
from xfrmid.client import Client

U32 = 0xFFFFFFFF


def test_introspection_matches_committed_xml(xfrmid):
    file = interfaces_of((TOP / "dbus" / "org.xfrmid1.xml").read_text())
    live = interfaces_of(busctl(xfrmid.address, "introspect", "--xml-interface", "org.xfrmid1", "/org/xfrmid1").stdout)
    for name in ("org.xfrmid1.Manager", "org.freedesktop.DBus.ObjectManager"):
        assert live[name]["methods"] == file[name]["methods"], name
        assert live[name]["properties"] == file[name]["properties"], name
        assert live[name]["signals"] == file[name]["signals"], name
    assert {n for n in live if n.startswith("org.xfrmid1")} == {"org.xfrmid1.Manager"}
    path = manager_call(xfrmid.address, "CreateInterface", "sua{sv}", "ipsec201", "0", "0").stdout.split('"')[1]
    try:
        live_if = interfaces_of(busctl(xfrmid.address, "introspect", "--xml-interface", "org.xfrmid1", path).stdout)
        assert live_if["org.xfrmid1.Interface"] == file["org.xfrmid1.Interface"]
    finally:
        manager_call(xfrmid.address, "DeleteInterface", "sa{sv}", "ipsec201", "0")


async def test_manager_properties_both_clients(xfrmid, client):
    out = busctl_json(xfrmid.address, "get-property", "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager",
                      "Version", "KernelFeatures", "InterfaceCount")
    assert out[0]["type"] == "s" and out[0]["data"]
    features = out[1]["data"]
    assert {"xfrm_interface", "collect_md", "set_mark_mask"} <= set(features)
    assert features["xfrm_interface"] is True
    mine = await client.manager_properties()
    assert mine["Version"] == out[0]["data"] and mine["KernelFeatures"] == features
    assert mine["InterfaceCount"] == len(await client.list_interfaces()) == out[2]["data"]


def test_create_is_idempotent_and_delete_removes(xfrmid):
    a = xfrmid.address
    first = manager_call(a, "CreateInterface", "sua{sv}", "ipsec202", "0", "2",
                         "mtu", "u", "1400", "addresses", "as", "1", "10.202.0.1/24").stdout
    assert first.strip() == 'o "/org/xfrmid1/interface/ipsec202"'
    again = manager_call(a, "CreateInterface", "sua{sv}", "ipsec202", "202", "0").stdout
    assert again == first
    link = ip_json("-d", "link", "show", "dev", "ipsec202")[0]
    assert link["linkinfo"]["info_kind"] == "xfrm" and link["mtu"] == 1400
    assert link["linkinfo"]["info_data"]["if_id"] in (202, "0xca")
    addrs = [f"{x['local']}/{x['prefixlen']}" for x in ip_json("addr", "show", "dev", "ipsec202")[0]["addr_info"]]
    assert "10.202.0.1/24" in addrs
    p = props(a, "/org/xfrmid1/interface/ipsec202")
    assert (p["Name"], p["IfId"], p["Mtu"], p["Owned"], p["Netns"], p["Mark"], p["MarkMask"]) == (
        "ipsec202", 202, 1400, True, "", 202, U32)
    assert p["Addresses"] == ["10.202.0.1/24"] and p["Owners"] == [] and p["External"] is False
    assert p["Ifindex"] == link["ifindex"] and p["Link"] == "" and p["OperState"]
    manager_call(a, "DeleteInterface", "sa{sv}", "ipsec202", "0")
    assert not link_present("ipsec202")
    assert gdbus_error(a, "DeleteInterface", "ipsec202", "@a{sv} {}") == "org.xfrmid1.Error.NotFound"


async def test_attach_refcount_across_two_owners(xfrmid, client):
    r1 = await client.attach("ipsec203", "conn-a")
    assert (r1.path, r1.if_id, r1.mark, r1.mask) == ("/org/xfrmid1/interface/ipsec203", 203, 203, U32)
    assert await client.attach("ipsec203", "conn-a") == r1  # idempotent per (name, owner)
    out = manager_call(xfrmid.address, "Attach", "ssa{sv}", "ipsec203", "conn-b", "0").stdout
    assert out.strip() == f'ouuu "/org/xfrmid1/interface/ipsec203" 203 203 {U32}'
    assert sorted((await client.interface_properties("ipsec203"))["Owners"]) == ["conn-a", "conn-b"]
    assert await client.detach("ipsec203", "conn-a") is False
    assert await client.detach("ipsec203", "conn-a") is False  # second Detach: nothing left to drop
    assert link_present("ipsec203")
    assert manager_call(xfrmid.address, "Detach", "ssa{sv}", "ipsec203", "conn-b", "0").stdout.strip() == "b true"
    assert not link_present("ipsec203")
    with pytest.raises(errors.NotFound):
        await client.interface_properties("ipsec203")


def _kernel_addrs(dev: str) -> set[str]:
    found = ip_json("addr", "show", "dev", dev)
    return {f"{x['local']}/{x['prefixlen']}" for x in found[0]["addr_info"]} if found else set()


def _kernel_routes(dev: str, family: str = "-4", table: str = "main") -> set[str]:
    return {r["dst"] for r in ip_json(family, "route", "show", "table", table, "dev", dev)}


async def test_addresses_and_routes_counted_per_owner(xfrmid, client):
    dev = "ipsec204"
    await client.attach(dev, "a")
    await client.attach(dev, "b")
    try:
        for owner in ("a", "b"):
            await client.add_address(dev, owner, "10.204.0.1/24")
            await client.add_address(dev, owner, "fd00:204::1/64")
            await client.add_route(dev, owner, "10.214.0.0/16")
            await client.add_route(dev, owner, "fd00:214::/48")
        await client.add_route(dev, "a", "10.214.0.0/16")  # idempotent: still counted once for a
        assert {"10.204.0.1/24", "fd00:204::1/64"} <= _kernel_addrs(dev)
        assert "10.214.0.0/16" in _kernel_routes(dev)
        assert "fd00:214::/48" in _kernel_routes(dev, "-6")
        p = await client.interface_properties(dev)
        assert sorted(p["Addresses"]) == ["10.204.0.1/24", "fd00:204::1/64"]
        assert ["10.214.0.0/16", 254, ""] in p["Routes"]
        for owner in ("a",):
            await client.remove_address(dev, owner, "10.204.0.1/24")
            await client.remove_route(dev, owner, "10.214.0.0/16")
        assert "10.204.0.1/24" in _kernel_addrs(dev) and "10.214.0.0/16" in _kernel_routes(dev)
        await client.remove_address(dev, "b", "10.204.0.1/24")
        await client.remove_route(dev, "b", "10.214.0.0/16")
        assert "10.204.0.1/24" not in _kernel_addrs(dev) and "10.214.0.0/16" not in _kernel_routes(dev)
        assert "fd00:204::1/64" in _kernel_addrs(dev) and "fd00:214::/48" in _kernel_routes(dev, "-6")
        # Detach drops everything the owner added; the other owner's claims stay.
        assert await client.detach(dev, "a") is False
        assert "fd00:214::/48" in _kernel_routes(dev, "-6")
    finally:
        await client.detach(dev, "a")
        await client.detach(dev, "b")
    assert not link_present(dev)


async def test_default_routes_are_split_not_replaced(xfrmid, client):
    dev = "ipsec205"
    before4 = ip_json("-4", "route", "show", "default")
    before6 = ip_json("-6", "route", "show", "default")
    await client.attach(dev, "a")
    try:
        await client.add_route(dev, "a", "0.0.0.0/0")
        await client.add_route(dev, "a", "::/0")
        assert {"0.0.0.0/1", "128.0.0.0/1"} <= _kernel_routes(dev)
        assert {"::/1", "8000::/1"} <= _kernel_routes(dev, "-6")
        assert ip_json("-4", "route", "show", "default") == before4
        assert ip_json("-6", "route", "show", "default") == before6
    finally:
        await client.detach(dev, "a")
    assert not link_present(dev)


def test_peer_route_pattern(xfrmid):
    a, dev = xfrmid.address, "ipsec206"
    # the underlying route to the peer, as the uplink would provide it
    subprocess.run(["ip", "link", "add", "vpeer206", "type", "veth", "peer", "name", "vpeer206b"], check=True)
    subprocess.run(["ip", "addr", "add", "192.1.2.1/24", "dev", "vpeer206"], check=True)
    subprocess.run(["ip", "link", "set", "vpeer206b", "up"], check=True)
    subprocess.run(["ip", "link", "set", "vpeer206", "up"], check=True)
    manager_call(a, "Attach", "ssa{sv}", dev, "west-east", "0")
    try:
        manager_call(a, "AddRoute", "sssa{sv}", dev, "west-east", "192.1.2.0/24", "1", "peer", "s", "192.1.2.23")
        rules = {r["priority"]: r for r in ip_json("rule", "show") if r.get("protocol") == "xfrmid"}
        assert set(rules) == {100, 101, 102, 103}, ip_json("rule", "show")
        skip = rules[101]  # the peer's ESP/IKE (its output mark, to the destination) passes by table 50
        assert skip["dst"] == "192.1.2.0" and skip["dstlen"] == 24 and skip["goto"] == 103
        # iproute2 leaves the mask out when it is 0xffffffff
        assert int(str(skip["fwmark"]), 0) == 206 and int(str(skip.get("fwmask", U32)), 0) == U32
        assert str(rules[102]["table"]) == "50" and "nop" in rules[103] and rules[100]["goto"] == 102
        table50 = ip_json("-4", "route", "show", "table", "50")
        assert any(r["dst"] == "192.1.2.0/24" and r["dev"] == dev for r in table50), table50
        assert "192.1.2.0/24" not in _kernel_routes(dev)  # not in main: the dedicated table only
        # IKE/ESP to the peer carries the output mark: it skips table 50 (underlying route)
        get = ip_json("route", "get", "192.1.2.23", "mark", "206")
        assert get[0].get("dev") == "vpeer206", get
        get = ip_json("route", "get", "192.1.2.23")
        assert get[0].get("dev") == dev
        manager_call(a, "RemoveRoute", "sssa{sv}", dev, "west-east", "192.1.2.0/24", "1", "peer", "s", "192.1.2.23")
        assert not [r for r in ip_json("rule", "show") if r.get("protocol") == "xfrmid"]
        assert not [r for r in ip_json("-4", "route", "show", "table", "50") if r.get("dev") == dev]
    finally:
        manager_call(a, "Detach", "ssa{sv}", dev, "west-east", "0")
        subprocess.run(["ip", "link", "del", "vpeer206"])


def test_every_error_name(xfrmid):
    a = xfrmid.address
    # InvalidArgument: bad name, unknown option, wrongly typed option, bad CIDR
    assert gdbus_error(a, "CreateInterface", "bad name!", "0", "@a{sv} {}") == "org.xfrmid1.Error.InvalidArgument"
    assert gdbus_error(a, "Attach", "ipsec207", "o", "{'colour': <'red'>}") == "org.xfrmid1.Error.InvalidArgument"
    assert gdbus_error(a, "CreateInterface", "ipsec207", "0", "{'mtu': <'1400'>}") == "org.xfrmid1.Error.InvalidArgument"
    # NotFound
    assert gdbus_error(a, "AddAddress", "ipsec298", "o", "10.0.0.1/24", "@a{sv} {}") == "org.xfrmid1.Error.NotFound"
    # Conflict: the name is taken by another kind of link
    subprocess.run(["ip", "link", "add", "ipsec207", "type", "veth", "peer", "name", "ipsec207p"], check=True)
    try:
        assert gdbus_error(a, "CreateInterface", "ipsec207", "0", "@a{sv} {}") == "org.xfrmid1.Error.Conflict"
    finally:
        subprocess.run(["ip", "link", "del", "ipsec207"])
    # Busy, then force
    manager_call(a, "Attach", "ssa{sv}", "ipsec208", "holder", "0")
    manager_call(a, "CreateInterface", "sua{sv}", "ipsec208", "0", "0")
    assert gdbus_error(a, "DeleteInterface", "ipsec208", "@a{sv} {}") == "org.xfrmid1.Error.Busy"
    manager_call(a, "DeleteInterface", "sa{sv}", "ipsec208", "1", "force", "b", "true")
    assert not link_present("ipsec208")
    # NotOwned: an interface that existed before xfrmid adopted it is never deleted
    subprocess.run(["ip", "link", "add", "ipsec209", "type", "xfrm", "if_id", "209"], check=True)
    try:
        manager_call(a, "Attach", "ssa{sv}", "ipsec209", "adopter", "0")
        assert props(a, "/org/xfrmid1/interface/ipsec209")["Owned"] is False
        assert gdbus_error(a, "DeleteInterface", "ipsec209", "@a{sv} {}") == "org.xfrmid1.Error.NotOwned"
        assert manager_call(a, "Detach", "ssa{sv}", "ipsec209", "adopter", "0").stdout.strip() == "b false"
        assert link_present("ipsec209")
    finally:
        subprocess.run(["ip", "link", "del", "ipsec209"])
    # Failed: the state file cannot be written (a directory sits where it goes)
    state = xfrmid.state_dir / "state.json"
    state.unlink(missing_ok=True)
    state.mkdir()
    try:
        name = gdbus_error(a, "CreateInterface", "ipsec210", "0", "@a{sv} {}")
        assert name == "org.xfrmid1.Error.Failed"
    finally:
        state.rmdir()
        manager_call(a, "DeleteInterface", "sa{sv}", "ipsec210", "1", "force", "b", "true", check=False)
        manager_call(a, "Reconcile", "", check=False)
    # UnknownMethod and wrong signatures come from the D-Bus library, not a traceback
    proc = gdbus(a, "org.xfrmid1.Manager.NoSuchMethod")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


async def test_object_manager_and_properties_changed(xfrmid, client):
    events: list = []
    watcher = await Client.connect(xfrmid.address)
    try:
        await watcher.subscribe(lambda m: events.append((m.path, m.interface, m.member, m.body)))
        await client.attach("ipsec211", "one")
        await client.attach("ipsec211", "two")
        objects = await client.managed_objects()
        assert objects["/org/xfrmid1/interface/ipsec211"]["Owners"] == ["one", "two"]
        await client.detach("ipsec211", "one")
        await client.detach("ipsec211", "two")
        await delivered(watcher)
    finally:
        watcher.close()
    path = "/org/xfrmid1/interface/ipsec211"
    added = [e for e in events if e[2] == "InterfacesAdded" and e[3][0] == path]
    removed = [e for e in events if e[2] == "InterfacesRemoved" and e[3][0] == path]
    assert added and removed and added[0][0] == removed[0][0] == "/org/xfrmid1"
    assert added[0][3][1]["org.xfrmid1.Interface"]["Name"].value == "ipsec211"
    assert removed[0][3][1] == ["org.xfrmid1.Interface"]
    # Owners is invalidated (named without its value): a Get reads it
    owners = [e for e in events if e[0] == path and e[2] == "PropertiesChanged" and "Owners" in e[3][2]]
    assert len(owners) >= 2 and not any("Owners" in e[3][1] for e in events if e[0] == path and e[2] == "PropertiesChanged")
    counts = [e for e in events if e[0] == "/org/xfrmid1" and e[2] == "PropertiesChanged"]
    assert any("InterfaceCount" in e[3][1] for e in counts)


_HOLDER = """
import asyncio, sys
from xfrmid.client import Client
async def main():
    c = await Client.connect(sys.argv[1])
    for pair in sys.argv[2:]:
        dev, owner = pair.split(":")
        await c.attach(dev, owner, bind_to_caller=True)
    print("attached", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_bind_to_caller_released_when_client_is_killed(xfrmid, client):
    """A pluto-like client attaches with bind_to_caller and is SIGKILLed: its references go."""
    dev = "ipsec212"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, xfrmid.address, f"{dev}:pluto-conn",
                               "ipsec213:only-bound"], stdout=subprocess.PIPE, text=True, cwd=TOP)
    line = await asyncio.get_running_loop().run_in_executor(None, holder.stdout.readline)
    assert line.strip() == "attached"
    assert link_present(dev) and link_present("ipsec213")
    await client.attach(dev, "persistent")
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # the bound owner goes; the interface stays for the persistent owner
        assert wait_for(lambda: not link_present("ipsec213"), 30)

        async def owners():
            return (await client.interface_properties(dev))["Owners"]

        for _ in range(100):
            if await owners() == ["persistent"]:
                break
            await asyncio.sleep(0.2)
        assert await owners() == ["persistent"]
    finally:
        await client.detach(dev, "persistent")
    assert not link_present(dev)


async def test_netns_interfaces_have_their_own_paths(xfrmid, client, netns):
    res = await client.attach("ipsec214", "ns-owner", netns=netns)
    from xfrmid.bus.names import escape_label

    assert res.path == f"/org/xfrmid1/netns/{escape_label(netns)}/interface/ipsec214"
    assert link_present("ipsec214", netns) and not link_present("ipsec214")
    p = await client.interface_properties("ipsec214", netns)
    assert p["Netns"] == netns and p["Name"] == "ipsec214"
    listed = {(x.name, x.netns): x.path for x in await client.list_interfaces()}
    assert listed[("ipsec214", netns)] == res.path
    out = busctl(xfrmid.address, "call", "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager",
                 "Detach", "ssa{sv}", "ipsec214", "ns-owner", "1", "netns", "s", netns).stdout
    assert out.strip() == "b true"
    assert not link_present("ipsec214", netns)


async def test_list_reconcile_reload(xfrmid, client):
    await client.create_interface("ipsec215")
    try:
        out = busctl_json(xfrmid.address, "call", "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager",
                          "ListInterfaces")
        assert ["ipsec215", 215, "", "/org/xfrmid1/interface/ipsec215"] in out["data"][0]
        subprocess.run(["ip", "link", "del", "ipsec215"], check=True)  # behind xfrmid's back
        counts = busctl_json(xfrmid.address, "call", "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager",
                             "Reconcile")["data"][0]
        assert set(counts) >= {"created", "repaired", "adopted", "removed"}
        assert all(v["type"] == "u" for v in counts.values())
        # the drift watcher may have recreated it first (test_daemon_repair compares the counts)
        assert wait_for(lambda: link_present("ipsec215"), 10)
        manager_call(xfrmid.address, "Reload", "")
        await client.reload()
    finally:
        await client.delete_interface("ipsec215")


async def test_reload_applies_the_config_file_and_sighup(xfrmid, client):
    """Reload (D-Bus) and SIGHUP re-read the file: a static interface appears and goes."""
    xfrmid.config.write_text('[[interface]]\nname = "ipsec217"\naddresses = ["10.217.9.1/32"]\n')
    try:
        await client.reload()
        assert link_present("ipsec217")
        p = await client.interface_properties("ipsec217")
        assert p["Addresses"] == ["10.217.9.1/32"] and p["Owned"] is True
        xfrmid.config.write_text("")
        xfrmid.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: not link_present("ipsec217"), 60), xfrmid.log_text()[-2000:]
        # a broken file is refused with a sentence naming it; the running state stays
        xfrmid.config.write_text("[daemon]\nlog_levle = 'debug'\n")
        with pytest.raises(errors.InvalidArgument, match="log_levle"):
            await client.reload()
    finally:
        xfrmid.config.unlink(missing_ok=True)
        await client.reload()
    assert xfrmid.alive()
