"""The bus adapter over a real private dbus-daemon, the core on the in-memory kernel.

What is checked is the bus layer only (xfrmid.bus.service and .tree): that the
interface objects it answers for without exporting them behave like exported
objects do (Properties, Introspect, GetManagedObjects, the signals and their
paths, the standard errors). The real kernel path is tests/kernel/test_bus_*.py.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType

from xfrmid.bus.introspection import interfaces_of
from xfrmid.bus.service import BusService, connect_bus
from xfrmid.client import Client
from xfrmid.core.manager import Manager

from fake_kernel import FakeKernel

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "tests" / "kernel"))
from bus_fixtures import delivered, start_bus  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")

PROPS = "org.freedesktop.DBus.Properties"
IFACE = "org.xfrmid1.Interface"
PATH1 = "/org/xfrmid1/interface/ipsec1"


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture(scope="module")
def bus():
    private = start_bus(policy=False)
    yield private
    private.stop()


@pytest.fixture
async def service(bus, manager):
    conn = await connect_bus(bus.address).connect()
    svc = BusService(manager, conn, lambda: asyncio.sleep(0))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def client(bus, service):
    c = await Client.connect(bus.address)
    yield c
    c.close()


async def raw(client: Client, path: str, interface: str, member: str, signature: str = "", body=None) -> Message:
    return await client.bus.call(Message(destination="org.xfrmid1", path=path, interface=interface,
                                         member=member, signature=signature, body=body or []))


async def busctl(bus, *args: str) -> str:
    """busctl in a thread: the daemon under test answers on this test's event loop."""
    done = await asyncio.to_thread(subprocess.run, ["busctl", f"--address={bus.address}", *args],
                                   capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_properties_of_an_interface_object(client):
    await client.attach("ipsec1", "pluto-a")
    await client.add_address("ipsec1", "pluto-a", "10.1.0.1/24")
    props = await client.interface_properties("ipsec1")
    assert props["Name"] == "ipsec1" and props["IfId"] == 1 and props["Owners"] == ["pluto-a"]
    assert props["Addresses"] == ["10.1.0.1/24"] and props["Netns"] == "" and props["Owned"] is True
    one = await raw(client, PATH1, PROPS, "Get", "ss", [IFACE, "Owners"])
    assert one.message_type == MessageType.METHOD_RETURN and one.body[0].signature == "as"
    assert one.body[0].value == ["pluto-a"]
    errors = {
        "unknown property": (await raw(client, PATH1, PROPS, "Get", "ss", [IFACE, "Colour"])).error_name,
        "set": (await raw(client, PATH1, PROPS, "Set", "ssv", [IFACE, "Mtu", one.body[0]])).error_name,
        "interface": (await raw(client, PATH1, PROPS, "GetAll", "s", ["org.example.Nope"])).error_name,
        "object": (await raw(client, PATH1 + "x", PROPS, "GetAll", "s", [IFACE])).error_name,
        "method": (await raw(client, PATH1, IFACE, "Frobnicate")).error_name,
    }
    assert errors == {
        "unknown property": "org.freedesktop.DBus.Error.UnknownProperty",
        "set": "org.freedesktop.DBus.Error.PropertyReadOnly",
        "interface": "org.freedesktop.DBus.Error.UnknownInterface",
        "object": "org.freedesktop.DBus.Error.UnknownObject",
        "method": "org.freedesktop.DBus.Error.UnknownMethod",
    }
    standard = await raw(client, PATH1, PROPS, "GetAll", "s", ["org.freedesktop.DBus.Peer"])
    assert standard.message_type == MessageType.METHOD_RETURN and standard.body == [{}]
    ping = await raw(client, PATH1, "org.freedesktop.DBus.Peer", "Ping")
    assert ping.message_type == MessageType.METHOD_RETURN


async def test_signals_object_manager_and_count(bus, client):
    events: list = []
    watcher = await Client.connect(bus.address)
    try:
        await watcher.subscribe(lambda m: events.append((m.path, m.interface, m.member, m.body)))
        await client.attach("ipsec1", "one")
        await client.attach("ipsec1", "two")
        objects = await client.managed_objects()
        assert objects[PATH1]["Owners"] == ["one", "two"] and list(objects) == [PATH1]
        assert (await client.manager_properties())["InterfaceCount"] == 1
        assert [(i.name, i.path) for i in await client.list_interfaces()] == [("ipsec1", PATH1)]
        await client.detach("ipsec1", "one")
        await client.detach("ipsec1", "two")
        await delivered(watcher)
    finally:
        watcher.close()
    added = [e for e in events if e[2] == "InterfacesAdded"]
    removed = [e for e in events if e[2] == "InterfacesRemoved"]
    assert [(e[0], e[3][0]) for e in added] == [("/org/xfrmid1", PATH1)]
    assert added[0][3][1][IFACE]["Name"].value == "ipsec1" and len(added[0][3][1][IFACE]) == 14
    assert [(e[0], e[3]) for e in removed] == [("/org/xfrmid1", [PATH1, [IFACE]])]
    changed = [e for e in events if e[0] == PATH1 and e[2] == "PropertiesChanged"]
    assert all(e[1] == PROPS and e[3][0] == IFACE for e in changed)
    # only what differs is named; Owners (EmitsChangedSignal=invalidates) without its value
    assert [(e[3][1], e[3][2]) for e in changed] == [({}, ["Owners"]), ({}, ["Owners"])]
    counts = [e[3][1]["InterfaceCount"].value for e in events
              if e[0] == "/org/xfrmid1" and e[2] == "PropertiesChanged"]
    assert counts == [1, 0]


async def test_introspection_and_tree(bus, client):
    await client.attach("ipsec1", "a")
    await client.attach("ipsec2", "a")
    file = interfaces_of((TOP / "dbus" / "org.xfrmid1.xml").read_text())
    live = interfaces_of(await busctl(bus, "introspect", "--xml-interface", "org.xfrmid1", PATH1))
    assert live[IFACE] == file[IFACE]
    assert {"org.freedesktop.DBus.Properties", "org.freedesktop.DBus.Introspectable"} <= set(live)
    root = await busctl(bus, "introspect", "--xml-interface", "org.xfrmid1", "/org/xfrmid1")
    assert interfaces_of(root)["org.xfrmid1.Manager"] == file["org.xfrmid1.Manager"]
    assert '<node name="interface"' in root
    tree = (await busctl(bus, "tree", "--list", "org.xfrmid1")).split()
    assert {"/", "/org", "/org/xfrmid1", "/org/xfrmid1/interface", PATH1,
            "/org/xfrmid1/interface/ipsec2"} == set(tree)
    gone = await busctl(bus, "introspect", "--xml-interface", "org.xfrmid1", "/org/xfrmid1/interface/ipsec9")
    assert "org.xfrmid1.Interface" not in gone


async def test_repaired_follows_properties_changed(bus, service, manager, client):
    events: list = []
    watcher = await Client.connect(bus.address)
    try:
        await watcher.subscribe(lambda m: events.append((m.path, m.member, m.body)))
        await client.attach("ipsec1", "a")
        info = manager.get("ipsec1")
        service.repaired(info, "set ipsec1 up")
        await delivered(watcher)
    finally:
        watcher.close()
    assert (PATH1, "Repaired", ["set ipsec1 up"]) in events


async def test_bound_caller_released_when_it_disconnects(bus, manager, client):
    holder = await Client.connect(bus.address)
    await holder.attach("ipsec1", "bound", bind_to_caller=True)
    await client.attach("ipsec1", "kept")
    holder.close()
    for _ in range(50):
        if manager.get("ipsec1").owners == ("kept",):
            break
        await asyncio.sleep(0.1)
    assert manager.get("ipsec1").owners == ("kept",)


async def test_caller_gone_before_its_attach_finished(bus, service, manager):
    """The NameOwnerChanged is handled while the Attach is still running: released afterwards."""
    holder = await Client.connect(bus.address)
    name = holder.bus.unique_name
    gate = asyncio.Event()
    real_attach = manager.attach

    async def slow_attach(*args, **kwargs):
        await gate.wait()
        return await real_attach(*args, **kwargs)

    manager.attach = slow_attach
    try:
        call = asyncio.ensure_future(holder.attach("ipsec1", "bound", bind_to_caller=True))
        for _ in range(50):
            if service._attaching:
                break
            await asyncio.sleep(0.05)
        holder.bus.disconnect()
        for _ in range(50):
            if name in service._left_while_attaching:
                break
            await asyncio.sleep(0.05)
        assert name in service._left_while_attaching
        gate.set()
        # the Attach's dispatch ends with the release it owes the departed caller
        await asyncio.wait_for(asyncio.gather(*list(service._tasks), return_exceptions=True), 5)
        call.cancel()
    finally:
        manager.attach = real_attach
    assert not service._attaching and not service._left_while_attaching
    assert "bound" not in {o for i in manager.interfaces() for o in i.owners}


async def test_refused_attach_leaves_no_trace(service, client):
    from xfrmid.errors import AccessDenied

    async def refuse(sender, method):
        raise AccessDenied(f"Only root may call {method}.")

    service._access.require_admin = refuse
    reply = await raw(client, "/org/xfrmid1", "org.xfrmid1.Manager", "Attach", "ssa{sv}", ["ipsec1", "x", {}])
    assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
    assert service._attaching == {} and service._left_while_attaching == set()
