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
"""

from __future__ import annotations

import logging
import socket
from typing import Any, TypeVar

from dbus_fast import BusType
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


class BusConnection(MessageBus):
    """dbus-fast's MessageBus with the send-buffer fix applied on connect."""

    async def connect(self) -> "BusConnection":
        await super().connect()
        tolerate_full_send_buffer(self)
        return self


B = TypeVar("B", bound=BusConnection)


def new_bus(bus: str, cls: type[B] = BusConnection) -> B:  # type: ignore[assignment]
    """A not yet connected bus for 'system', 'session' or a D-Bus address."""
    if bus == "system":
        return cls(bus_type=BusType.SYSTEM)
    if bus == "session":
        return cls(bus_type=BusType.SESSION)
    return cls(bus_address=bus)
