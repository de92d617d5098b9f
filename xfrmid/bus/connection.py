"""A dbus-fast connection that survives a full socket send buffer.

dbus-fast (5.2.0, as dbus-next before it: altdesktop/python-dbus-next#153,
still open) writes a message straight to the non-blocking bus socket when its
queue is empty and treats every exception from ``send`` as the end of the
connection. When the bus daemon falls behind, for example while it routes the
signals of 1,000 deletions, the socket's send buffer is full, ``send`` raises
EAGAIN and the connection is dropped: xfrmid lost its name in the middle of a
bulk delete (found by ``make bench``). A refused send is not an error on a
non-blocking socket; it means "wait until writable", which the writer already
does after a short write. So its socket reports such a send as 0 bytes written.

It also writes the signals of one event-loop turn together, in one ``send``
(``BusConnection.send``): the thousand InterfacesAdded of a CreateInterfaces
wake the bus daemon once, not once each. A reply with nothing queued before
it is written at once, as dbus-fast does.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, TypeVar

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger("xfrmid.bus")


class _PatientSocket:
    """The bus socket as dbus-fast's writer sees it: EAGAIN is a write of 0 bytes."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        # sendmsg (file descriptors) keeps dbus-fast's behaviour: the writer
        # forgets the descriptors after one call, so a 0 there would lose them.
        return getattr(self._sock, name)


def tolerate_full_send_buffer(bus: MessageBus) -> None:
    """Make a connected bus wait for a full send buffer instead of disconnecting."""
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    try:
        if not isinstance(sock, socket.socket):
            raise TypeError(sock)
        writer.sock = _PatientSocket(sock)
    except (AttributeError, TypeError):
        # another dbus-fast layout (tests/host/test_bus_connection.py fails on it)
        log.debug("dbus-fast's writer socket cannot be wrapped; EAGAIN on send will disconnect")


def _settle(futures: list[asyncio.Future], merged: asyncio.Future) -> None:
    """The outcome of one merged write is each of its messages' outcome."""
    error = None if merged.cancelled() else merged.exception()
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # dbus-fast's own send futures are seldom awaited: no "never retrieved"


class BusConnection(MessageBus):
    """dbus-fast's MessageBus with the send-buffer fix applied on connect, whose
    messages of one loop turn leave in one write."""

    _flush_due = False
    _coalesce = False

    async def connect(self) -> "BusConnection":
        await super().connect()
        tolerate_full_send_buffer(self)
        writer = getattr(self, "_writer", None)
        # the writer's queue and buffer are what the flush below works on
        self._coalesce = all(hasattr(writer, a) for a in ("messages", "buf", "buffer_message", "write_callback", "fd"))
        if not self._coalesce:
            log.debug("dbus-fast's writer changed; each message is written on its own")
        elif writer.buf is None and not writer.messages:
            # connect leaves the writer watching the socket with nothing to write; it
            # would write the next turn's messages one by one before the flush
            self._loop.remove_writer(writer.fd)
        return self

    def send(self, msg: Message) -> asyncio.Future:
        """Queue ``msg``; the queue is written at the end of this loop turn (order kept).

        A reply or a call with nothing queued before it leaves at once: its peer waits
        for it, and the signals of the change it answers are built after it (BusService).
        """
        if not self._coalesce or not self.unique_name:
            return super().send(msg)
        writer = self._writer
        if msg.message_type is not MessageType.SIGNAL and not writer.messages and writer.buf is None:
            return super().send(msg)
        return self._queue(msg)

    def send_in_turn(self, msg: Message) -> asyncio.Future:
        """Queue ``msg`` for the write at the end of this loop turn, whatever its type: a
        reply while other calls are handled (the pipelined client waits for the batch
        anyway), which then leaves with the signals of its change in one write."""
        if not self._coalesce or not self.unique_name:
            return super().send(msg)
        return self._queue(msg)

    def _queue(self, msg: Message) -> asyncio.Future:
        writer = self._writer
        if not msg.serial:
            msg.serial = self.next_serial()
        future = self._loop.create_future()
        writer.buffer_message(msg, future)
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)
        return future

    def disconnect(self) -> None:
        if self._flush_due:  # what this turn sent still leaves first, as with dbus-fast's direct writes
            self._flush()
        super().disconnect()

    def _flush(self) -> None:
        self._flush_due = False
        writer = self._writer
        if not self.connected:
            return
        queue = writer.messages
        if writer.buf is None and len(queue) > 1 and not any(fds for _, fds, _ in queue):
            # not while a write is half done (its buffer is the writer's); with
            # file descriptors, each message keeps its own sendmsg
            entries = list(queue)
            queue.clear()
            merged = self._loop.create_future()
            merged.add_done_callback(lambda done: _settle([f for _, _, f in entries if f is not None], done))
            queue.append((b"".join(buf for buf, _, _ in entries), None, merged))
        if writer.buf is None:
            writer.write_callback(remove_writer=False)
        if writer.buf is not None or writer.messages:
            self._loop.add_writer(writer.fd, writer.write_callback)


B = TypeVar("B", bound=BusConnection)


def new_bus(bus: str, cls: type[B] = BusConnection) -> B:  # type: ignore[assignment]
    """A not yet connected bus for 'system', 'session' or a D-Bus address."""
    if bus == "system":
        return cls(bus_type=BusType.SYSTEM)
    if bus == "session":
        return cls(bus_type=BusType.SESSION)
    return cls(bus_address=bus)
