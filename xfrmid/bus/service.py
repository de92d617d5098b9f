"""Connects the Manager to a message bus: exports objects, dispatches calls, follows changes.

Method calls to org.xfrmid1.Manager are taken from dbus-fast's documented hook
(``MessageBus.add_message_handler``) because service methods do not see the
message: the dispatcher needs the sender for the access check and for
``bind_to_caller``. It then runs the exported method itself, so the
introspected signature and the code that runs are one definition, and turns
every outcome into exactly one reply (errors via xfrmid.bus.errormap).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, Awaitable, Callable

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageFlag, NameFlag, RequestNameReply
from dbus_fast.service import ServiceInterface

from ..core.views import InterfaceInfo
from ..errors import Failed
from .access import AccessControl
from .busdaemon import bus_daemon_call
from .errormap import error_reply
from .names import BUS_NAME, INTERFACE_IFACE, MANAGER_IFACE, MANAGER_PATH, OBJECT_MANAGER_IFACE
from .objects import CALLER, OPEN_METHODS, InterfaceObject, ManagerInterface, bus_properties

log = logging.getLogger("xfrmid.bus")

_NAME_OWNER_CHANGED = (
    "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
    "interface='org.freedesktop.DBus',member='NameOwnerChanged'"
)


class XfrmidMessageBus(MessageBus):
    """dbus-fast emits ObjectManager signals from the child's own path; the
    specification (and sd-bus/GDBus object manager clients) expect them from
    the object manager. BusService emits them itself, from /org/xfrmid1."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        return None

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        return None


def connect_bus(bus: str) -> XfrmidMessageBus:
    """A not yet connected bus for 'system', 'session' or a D-Bus address."""
    if bus == "system":
        return XfrmidMessageBus(bus_type=BusType.SYSTEM)
    if bus == "session":
        return XfrmidMessageBus(bus_type=BusType.SESSION)
    return XfrmidMessageBus(bus_address=bus)


class BusService:
    """The Manager's presence on one bus; also its ManagerListener."""

    def __init__(self, manager: Any, bus: XfrmidMessageBus, reload: Callable[[], Awaitable[None]]) -> None:
        self._manager = manager
        self._bus = bus
        self._access = AccessControl(bus)
        self._root = ManagerInterface(manager, reload)
        self._objects: dict[tuple[str, str], InterfaceObject] = {}
        self._tasks: set[asyncio.Task] = set()
        self._methods = {m.name: m for m in ServiceInterface._get_methods(self._root)}
        self._count = 0

    @property
    def bus(self) -> XfrmidMessageBus:
        return self._bus

    async def start(self, request_name: bool = True) -> None:
        """Export everything, then (last) take the well-known name."""
        self._bus.add_message_handler(self._on_message)
        await self._add_match(_NAME_OWNER_CHANGED)
        self._bus.export(MANAGER_PATH, self._root)
        for info in self._manager.interfaces():
            self._export(info, announce=False)
        self._count = len(self._objects)
        self._manager.subscribe(self)
        await self._release_departed_callers()
        if request_name:
            reply = await self._bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise Failed(f"The bus name {BUS_NAME} is already owned by another process.")
        log.info("serving %s on the bus as %s", BUS_NAME, self._bus.unique_name)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._bus.disconnect()

    async def _add_match(self, rule: str) -> None:
        if await bus_daemon_call(self._bus, "AddMatch", "s", [rule]) is None:
            raise Failed("The bus refused to report departing clients (AddMatch NameOwnerChanged).")

    # ---- incoming messages --------------------------------------------

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                self._name_owner_changed(msg)
            return False
        if msg.message_type != MessageType.METHOD_CALL or msg.path != MANAGER_PATH:
            return False
        if msg.interface not in (None, MANAGER_IFACE):
            return False
        method = self._methods.get(msg.member)
        if method is None or method.in_signature != msg.signature:
            return False  # dbus-fast answers UnknownMethod
        ctx = contextvars.copy_context()
        ctx.run(CALLER.set, msg.sender)
        task = asyncio.get_running_loop().create_task(self._dispatch(msg, method), context=ctx)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _dispatch(self, msg: Message, method: Any) -> None:
        try:
            if msg.member not in OPEN_METHODS:
                await self._access.require_admin(msg.sender, msg.member)
            result = await method.fn(self._root, *msg.body)
            if msg.member == "Attach" and CALLER.get():
                await self._check_caller_alive(msg)
            if not method.out_signature:
                body: list[Any] = []
            elif len(method.out_signature_tree.types) == 1:
                body = [result]
            else:
                body = list(result)
            reply = Message.new_method_return(msg, method.out_signature, body)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become replies
            reply = error_reply(msg, exc)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            try:
                self._bus.send(reply)
            except Exception:  # the caller may be gone; nothing to tell
                log.debug("could not send the reply to %s", msg.sender, exc_info=True)

    async def _release_departed_callers(self) -> None:
        """bind_to_caller references restored from the state file whose client left
        while the daemon was not watching (restart): release them now."""
        bound = getattr(self._manager, "bound_callers", None)
        for caller in sorted(bound() if bound is not None else ()):
            if await bus_daemon_call(self._bus, "NameHasOwner", "s", [caller]) is False:
                await self._vanished(caller)

    async def _check_caller_alive(self, msg: Message) -> None:
        """A bind_to_caller client that left before its Attach finished never
        produces a NameOwnerChanged we could act on later: release now."""
        if await bus_daemon_call(self._bus, "NameHasOwner", "s", [msg.sender]) is False:
            await self._manager.caller_vanished(msg.sender)

    def _name_owner_changed(self, msg: Message) -> None:
        name, _old, new = msg.body
        if not name.startswith(":") or new:
            return
        self._access.forget(name)
        task = asyncio.get_running_loop().create_task(self._vanished(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _vanished(self, name: str) -> None:
        try:
            await self._manager.caller_vanished(name)
        except Exception:
            log.exception("releasing the references of %s failed", name)

    # ---- ManagerListener ------------------------------------------------

    def _export(self, info: InterfaceInfo, announce: bool = True) -> None:
        obj = InterfaceObject(info)
        old = self._objects.pop(info.key, None)
        if old is not None:
            self._unexport(old)
        self._objects[info.key] = obj
        self._bus.export(obj.path, obj)
        if announce:
            self._signal(
                "InterfacesAdded",
                "oa{sa{sv}}",
                [obj.path, {INTERFACE_IFACE: _variants(obj)}],
            )

    def _unexport(self, obj: InterfaceObject) -> None:
        self._bus.unexport(obj.path)
        self._signal("InterfacesRemoved", "oas", [obj.path, [INTERFACE_IFACE]])

    def _signal(self, member: str, signature: str, body: list[Any]) -> None:
        if not self._bus.connected:
            return
        self._bus.send(
            Message.new_signal(MANAGER_PATH, OBJECT_MANAGER_IFACE, member, signature, body)
        )

    def _count_changed(self) -> None:
        count = len(self._objects)
        if count != self._count:
            self._count = count
            self._root.emit_properties_changed({"InterfaceCount": count})

    def interface_added(self, info: InterfaceInfo) -> None:
        existing = self._objects.get(info.key)
        if existing is not None:
            existing.update(info)
        else:
            log.debug("exporting %s", info.name)
            self._export(info)
        self._count_changed()

    def interface_changed(self, info: InterfaceInfo) -> None:
        existing = self._objects.get(info.key)
        if existing is None:
            self.interface_added(info)
        else:
            existing.update(info)

    def interface_removed(self, info: InterfaceInfo) -> None:
        obj = self._objects.pop(info.key, None)
        if obj is not None:
            self._unexport(obj)
        self._count_changed()

    def repaired(self, info: InterfaceInfo, what: str) -> None:
        log.info("repaired %s%s: %s", info.name, f" in netns {info.netns}" if info.netns else "", what)
        self.interface_changed(info)
        obj = self._objects.get(info.key)
        if obj is not None and self._bus.connected:
            obj.Repaired(what)  # after PropertiesChanged, so a listener reading properties sees the repair


def _variants(obj: InterfaceObject) -> dict[str, Variant]:
    signatures = {p.name: p.signature for p in ServiceInterface._get_properties(obj)}
    return {name: Variant(signatures[name], value) for name, value in bus_properties(obj.info).items()}
