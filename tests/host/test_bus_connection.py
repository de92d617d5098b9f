"""A full send buffer to the bus daemon delays xfrmid's messages; it never drops the connection.

The bus daemon is real and is made to fall behind deterministically: SIGSTOP
while the connection under test sends, one message per loop turn (dbus-fast
sends directly when its queue is empty, the path that disconnected in
``make bench``), until the socket refuses; SIGCONT, and every message must
arrive, in order, on the same connection. On dbus-fast's own MessageBus the
same run ends in ``send`` raising EBADF on a closed connection (checked by
hand, not here: that failure also upsets CPython 3.11.7's recursion counter,
and every later test module's assertion rewriting with it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from xfrmid.bus.connection import BusConnection, _PatientSocket

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "tests" / "kernel"))
from bus_fixtures import start_bus  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("dbus-daemon") is None, reason="needs dbus-daemon")

PATH = "/org/xfrmid1/test"
IFACE = "org.xfrmid1.Test"


@pytest.fixture
def bus():
    private = start_bus(policy=False)
    yield private
    private.process.send_signal(signal.SIGCONT)
    private.stop()


def _signal(n: int) -> Message:
    # large enough that a few hundred fill the smallest send buffer
    return Message.new_signal(PATH, IFACE, "Tick", "us", [n, "x" * 512])


async def _fill_while_stopped(bus, sender: MessageBus) -> int:
    """Send until the socket refuses (the writer then holds a message), bus daemon stopped."""
    sender._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    os.kill(bus.process.pid, signal.SIGSTOP)
    sent = 0
    try:
        while sent < 20_000 and sender.connected and sender._writer.buf is None:
            sender.send(_signal(sent))
            sent += 1
            await asyncio.sleep(0)
        for _ in range(5 if sender.connected else 0):  # more behind the refused one: they queue
            sender.send(_signal(sent))
            sent += 1
    finally:
        os.kill(bus.process.pid, signal.SIGCONT)
    return sent


async def _receiver(bus) -> tuple[MessageBus, list[int], asyncio.Event, list[int]]:
    receiver = await MessageBus(bus_address=bus.address).connect()
    await receiver.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                body=[f"type='signal',interface='{IFACE}'"]))
    got: list[int] = []
    want: list[int] = [0]
    done = asyncio.Event()

    def on_message(msg: Message) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.interface == IFACE:
            got.append(msg.body[0])
            if len(got) >= want[0]:
                done.set()

    receiver.add_message_handler(on_message)
    return receiver, got, done, want


async def test_a_full_send_buffer_waits_and_delivers_everything(bus):
    receiver, got, done, want = await _receiver(bus)
    sender = await BusConnection(bus_address=bus.address).connect()
    assert isinstance(sender._writer.sock, _PatientSocket), "dbus-fast changed its writer: review xfrmid/bus/connection.py"

    sent = await _fill_while_stopped(bus, sender)
    assert sender.connected, "the connection was dropped on a full send buffer"
    assert sent > 5 and sender._writer.buf is not None  # the buffer really filled
    want[0] = sent
    await asyncio.wait_for(done.wait(), 30)
    assert got == list(range(sent))
    assert sender.connected
    # and it still answers calls afterwards
    reply = await sender.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                      interface="org.freedesktop.DBus", member="GetId"))
    assert reply.message_type == MessageType.METHOD_RETURN
    sender.disconnect()
    receiver.disconnect()



async def test_the_messages_of_one_loop_turn_leave_in_one_write_in_order(bus):
    """A reply and its signals wake the bus daemon once (connection.py); nothing is lost or reordered."""
    receiver, got, done, want = await _receiver(bus)
    sender = await BusConnection(bus_address=bus.address).connect()
    writes: list[int] = []

    class Counting:
        def __init__(self, sock) -> None:
            self.sock = sock

        def send(self, data) -> int:
            writes.append(len(data))
            return self.sock.send(data)

        def __getattr__(self, name: str):
            return getattr(self.sock, name)

    sender._writer.sock = Counting(sender._writer.sock)
    want[0] = 30
    futures = [sender.send(_signal(n)) for n in range(10)]  # one turn
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    futures += [sender.send(_signal(n)) for n in range(10, 30)]  # the next turns
    await asyncio.gather(*futures)
    await asyncio.wait_for(done.wait(), 10)
    assert got == list(range(30))
    assert sender._coalesce, "dbus-fast changed its writer: review xfrmid/bus/connection.py"
    assert len(writes) == 2, writes
    before = len(writes)
    sender.send(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus", member="GetId"))
    assert len(writes) == before + 1  # a call (or reply) with nothing queued: written at once
    # send_in_turn (a reply among pipelined calls): it waits for the turn's write with the rest
    in_turn = sender.send_in_turn(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                          interface="org.freedesktop.DBus", member="GetId"))
    assert len(writes) == before + 1
    want[0] = 31
    done.clear()
    sender.send(_signal(31))
    await in_turn
    assert len(writes) == before + 2  # the call and the signal after it: one write
    await asyncio.wait_for(done.wait(), 10)
    assert got[-1] == 31
    sender.send(_signal(32))  # sent in the turn that disconnects: it still leaves
    want[0] = 32
    done.clear()
    sender.disconnect()
    await asyncio.wait_for(done.wait(), 10)
    assert got[-1] == 32
    receiver.disconnect()
