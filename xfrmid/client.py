"""A small asyncio client of org.xfrmid1 (used by xfrmctl and the tests).

Errors arrive as the typed exceptions of xfrmid.errors, rebuilt from the
D-Bus error name; clients never parse message text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .bus.busdaemon import bus_daemon_call
from .bus.connection import new_bus
from .bus.names import BUS_NAME, INTERFACE_IFACE, MANAGER_IFACE, MANAGER_PATH, interface_path
from .errors import AccessDenied, Failed, NotFound, XfrmidError, from_dbus_name


class NotRunning(Failed):
    """Nobody owns org.xfrmid1 on the bus (or the bus itself is unreachable)."""


@dataclass(frozen=True)
class Attachment:
    path: str
    if_id: int
    mark: int
    mask: int


@dataclass(frozen=True)
class Listed:
    name: str
    if_id: int
    netns: str
    path: str


_NOT_RUNNING = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
}
_NO_OBJECT = {
    "org.freedesktop.DBus.Error.UnknownObject",
    "org.freedesktop.DBus.Error.UnknownInterface",
    "org.freedesktop.DBus.Error.UnknownMethod",
}


def error_from_reply(reply: Message, what: str) -> XfrmidError:
    """The typed error for an ERROR reply to ``what`` (a method name)."""
    name = reply.error_name or ""
    text = str(reply.body[0]) if reply.body else f"{what} failed with {name}."
    if name == AccessDenied.dbus_name and text.startswith("Rejected send message"):
        # the bus daemon's policy refused it; its text is a rule dump, not a sentence
        return AccessDenied(
            f"The D-Bus policy refuses {what} to uid {os.getuid()}; only root and members "
            "of group 'xfrmid' may change xfrmid's state."
        )
    if name in _NOT_RUNNING:
        return NotRunning(f"xfrmid is not running on this bus ({BUS_NAME} has no owner).")
    if name in _NO_OBJECT:
        return NotFound(text)
    return from_dbus_name(name, text)


def _options(**values: Any) -> dict[str, Variant]:
    sig = {
        "netns": "s", "link": "s", "mtu": "u", "external": "b", "addresses": "as", "force": "b",
        "bind_to_caller": "b", "table": "u", "src": "s", "metric": "u", "peer": "s",
    }
    return {k: Variant(sig[k], list(v) if k == "addresses" else v) for k, v in values.items() if v is not None}


class Client:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    @classmethod
    async def connect(cls, bus: str = "system") -> "Client":
        """Connect to 'system', 'session' or a D-Bus address."""
        try:
            return cls(await new_bus(bus).connect())
        except (OSError, ValueError, Exception) as exc:  # dbus-fast raises several types here
            raise NotRunning(f"Cannot connect to the {bus} bus: {exc}.") from None

    def close(self) -> None:
        self.bus.disconnect()

    async def call(
        self, member: str, signature: str = "", body: list[Any] | None = None,
        *, path: str = MANAGER_PATH, interface: str = MANAGER_IFACE,
    ) -> list[Any]:
        reply = await self.bus.call(
            Message(
                destination=BUS_NAME, path=path, interface=interface,
                member=member, signature=signature, body=body or [],
            )
        )
        if reply is None:
            raise Failed(f"{member} got no reply.")
        if reply.message_type == MessageType.ERROR:
            raise error_from_reply(reply, member)
        return list(reply.body)

    # ---- org.xfrmid1.Manager ------------------------------------------

    async def create_interface(
        self, name: str, if_id: int = 0, *, netns: str | None = None, link: str | None = None,
        mtu: int | None = None, external: bool | None = None, addresses: list[str] | tuple[str, ...] | None = None,
    ) -> str:
        opts = _options(netns=netns, link=link, mtu=mtu, external=external, addresses=addresses)
        return (await self.call("CreateInterface", "sua{sv}", [name, if_id, opts]))[0]

    async def delete_interface(self, name: str, *, netns: str | None = None, force: bool | None = None) -> None:
        await self.call("DeleteInterface", "sa{sv}", [name, _options(netns=netns, force=force)])

    async def create_interfaces(self, entries: list[tuple[str, int, dict[str, Any]]], *,
                                netns: str | None = None) -> list[str]:
        """Object paths, in order; each entry (name, if_id, {link, mtu, external, addresses})."""
        body = [[name, if_id, _options(**opts)] for name, if_id, opts in entries]
        return (await self.call("CreateInterfaces", "a(sua{sv})a{sv}", [body, _options(netns=netns)]))[0]

    async def delete_interfaces(self, names: list[str], *, netns: str | None = None,
                                force: bool | None = None) -> None:
        await self.call("DeleteInterfaces", "asa{sv}", [list(names), _options(netns=netns, force=force)])

    async def attach(
        self, name: str, owner: str, *, netns: str | None = None, bind_to_caller: bool | None = None
    ) -> Attachment:
        opts = _options(netns=netns, bind_to_caller=bind_to_caller)
        return Attachment(*await self.call("Attach", "ssa{sv}", [name, owner, opts]))

    async def detach(self, name: str, owner: str, *, netns: str | None = None) -> bool:
        return bool((await self.call("Detach", "ssa{sv}", [name, owner, _options(netns=netns)]))[0])

    async def add_address(self, name: str, owner: str, cidr: str, *, netns: str | None = None) -> None:
        await self.call("AddAddress", "sssa{sv}", [name, owner, cidr, _options(netns=netns)])

    async def remove_address(self, name: str, owner: str, cidr: str, *, netns: str | None = None) -> None:
        await self.call("RemoveAddress", "sssa{sv}", [name, owner, cidr, _options(netns=netns)])

    async def add_route(
        self, name: str, owner: str, destination: str, *, netns: str | None = None,
        table: int | None = None, src: str | None = None, metric: int | None = None, peer: str | None = None,
    ) -> None:
        opts = _options(netns=netns, table=table, src=src, metric=metric, peer=peer)
        await self.call("AddRoute", "sssa{sv}", [name, owner, destination, opts])

    async def remove_route(
        self, name: str, owner: str, destination: str, *, netns: str | None = None,
        table: int | None = None, src: str | None = None, metric: int | None = None, peer: str | None = None,
    ) -> None:
        opts = _options(netns=netns, table=table, src=src, metric=metric, peer=peer)
        await self.call("RemoveRoute", "sssa{sv}", [name, owner, destination, opts])

    async def list_interfaces(self) -> list[Listed]:
        return [Listed(*row) for row in (await self.call("ListInterfaces"))[0]]

    async def reconcile(self) -> dict[str, int]:
        counts = (await self.call("Reconcile"))[0]
        return {k: v.value for k, v in counts.items()}

    async def reload(self) -> None:
        await self.call("Reload")

    # ---- properties and objects ---------------------------------------

    async def properties(self, path: str, interface: str) -> dict[str, Any]:
        values = (await self.call(
            "GetAll", "s", [interface], path=path, interface="org.freedesktop.DBus.Properties"
        ))[0]
        return {k: unwrap(v) for k, v in values.items()}

    async def manager_properties(self) -> dict[str, Any]:
        return await self.properties(MANAGER_PATH, MANAGER_IFACE)

    async def daemon_pid(self) -> int | None:
        """The process id of xfrmid as the bus daemon knows it, or None if it will not say."""
        pid = await bus_daemon_call(self.bus, "GetConnectionUnixProcessID", "s", [BUS_NAME])
        return int(pid) if isinstance(pid, int) and not isinstance(pid, bool) else None

    async def interface_properties(self, name: str, netns: str | None = None) -> dict[str, Any]:
        try:
            return await self.properties(interface_path(name, netns), INTERFACE_IFACE)
        except NotFound:
            where = f" in network namespace {netns!r}" if netns else ""
            raise NotFound(f"xfrmid manages no interface {name!r}{where}.") from None

    async def managed_objects(self) -> dict[str, dict[str, Any]]:
        """Object path -> properties of org.xfrmid1.Interface, for every interface."""
        objects = (await self.call(
            "GetManagedObjects", path=MANAGER_PATH, interface="org.freedesktop.DBus.ObjectManager"
        ))[0]
        return {
            path: {k: unwrap(v) for k, v in ifaces[INTERFACE_IFACE].items()}
            for path, ifaces in objects.items()
            if INTERFACE_IFACE in ifaces
        }

    async def subscribe(self, callback: Callable[[Message], None]) -> None:
        """Call ``callback`` with every signal xfrmid emits (the monitor)."""
        rule = f"type='signal',sender='{BUS_NAME}',path_namespace='{MANAGER_PATH}'"
        if await bus_daemon_call(self.bus, "AddMatch", "s", [rule]) is None:
            raise Failed("The bus refused to deliver xfrmid's signals.")

        def handler(msg: Message) -> bool:
            if msg.message_type == MessageType.SIGNAL and (msg.path or "").startswith(MANAGER_PATH):
                callback(msg)
            return False

        self.bus.add_message_handler(handler)


def unwrap(value: Any) -> Any:
    """Plain Python values from Variants (recursively), for printing and JSON."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unwrap(v) for v in value]
    return value
