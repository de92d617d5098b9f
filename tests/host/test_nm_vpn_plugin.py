"""nm-xfrmid-service's D-Bus side on a real dbus-daemon: the plugin protocol NetworkManager speaks.

The plugin runs as its own process on a private bus, with no xfrmid there:
NeedSecrets, a Connect with bad settings, and a Connect whose Attach fails
(Failure, then StateChanged STARTING -> STOPPING -> STOPPED, then the plugin
leaves). Only the protocol is checked here; NetworkManager starting and
driving it, with xfrmid and traffic, is tests/kernel/test_networkmanager.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from xfrmid.integrations.nm_vpn import PLUGIN_IFACE, PLUGIN_PATH, Failure, State

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "tests" / "kernel"))
from bus_fixtures import start_bus  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")

NAME = "org.freedesktop.NetworkManager.xfrmid.Connection_7"
KEY = "0x" + "ab" * 20


def settings(**data: str) -> dict:
    values = {"interface": "ipsec9", "remote": "198.51.100.1", "local": "198.51.100.2",
              "address": "10.99.0.2/32", "spi-out": "0x9001", "spi-in": "0x9002", **data}
    return {
        "connection": {"id": Variant("s", "site9"), "uuid": Variant("s", "6c1f3a55-7b1e-4a3b-9a59-2f6a0e6c0d01")},
        "vpn": {"data": Variant("a{ss}", values), "secrets": Variant("a{ss}", {"key-out": KEY, "key-in": KEY})},
    }


@pytest.fixture
async def plugin():
    bus = start_bus(policy=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "xfrmid.integrations.nm_vpn", "--bus", bus.address, "--bus-name", NAME],
        cwd=TOP, stderr=subprocess.PIPE, text=True, env={**os.environ, "NM_VPN_LOG_LEVEL": "7"},
    )
    client = await MessageBus(bus_address=bus.address).connect()
    try:
        for _ in range(200):
            reply = await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                              interface="org.freedesktop.DBus", member="NameHasOwner",
                                              signature="s", body=[NAME]))
            if reply.body[0]:
                break
            assert proc.poll() is None, proc.stderr.read()
            await asyncio.sleep(0.05)
        yield client, proc
    finally:
        client.disconnect()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        bus.stop()


async def call(client: MessageBus, member: str, signature: str = "", body: list | None = None) -> Message:
    return await client.call(Message(destination=NAME, path=PLUGIN_PATH, interface=PLUGIN_IFACE,
                                     member=member, signature=signature, body=body or []))


async def test_need_secrets_asks_only_for_missing_keys(plugin):
    client, _ = plugin
    assert (await call(client, "NeedSecrets", "a{sa{sv}}", [settings()])).body == [""]
    bare = settings()
    bare["vpn"]["secrets"] = Variant("a{ss}", {"key-out": KEY})
    assert (await call(client, "NeedSecrets", "a{sa{sv}}", [bare])).body == ["vpn"]


async def test_bad_settings_are_refused_by_name(plugin):
    client, proc = plugin
    reply = await call(client, "Connect", "a{sa{sv}}", [settings(remote="gateway.example")])
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == "org.freedesktop.NetworkManager.VPN.Error.BadArguments"
    assert "remote='gateway.example' is not an IP address" in reply.body[0]
    assert proc.poll() is None  # still there for a good Connect


async def test_failed_attach_reports_failure_and_stops(plugin):
    client, proc = plugin
    seen: list[tuple[str, list]] = []

    def handler(msg: Message) -> bool:
        if msg.message_type == MessageType.SIGNAL and msg.interface == PLUGIN_IFACE:
            seen.append((msg.member, msg.body))
        return False

    client.add_message_handler(handler)
    await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                              interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                              body=[f"type='signal',interface='{PLUGIN_IFACE}'"]))
    reply = await call(client, "ConnectInteractive", "a{sa{sv}}a{sv}", [settings(), {}])
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body
    for _ in range(400):  # no xfrmid on this bus: the Attach fails
        if ("StateChanged", [State.STOPPED]) in seen:
            break
        await asyncio.sleep(0.05)
    states = [body[0] for member, body in seen if member == "StateChanged"]
    assert states == [State.STARTING, State.STOPPING, State.STOPPED], seen
    assert ("Failure", [Failure.CONNECT_FAILED]) in seen
    assert not [member for member, _ in seen if member in ("Config", "Ip4Config")]
    assert proc.wait(10) == 0  # the connection is down: the plugin leaves
    assert "xfrmid is not running" in proc.stderr.read()
