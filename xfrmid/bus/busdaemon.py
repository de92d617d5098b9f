"""Calls to the message bus daemon itself (org.freedesktop.DBus)."""

from __future__ import annotations

from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus


async def bus_daemon_call(bus: MessageBus, member: str, signature: str, body: list[Any]) -> Any | None:
    """The first return value of ``member``, or None when the bus daemon answered with an error."""
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member=member,
            signature=signature,
            body=body,
        )
    )
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        return None
    return reply.body[0] if reply.body else True
