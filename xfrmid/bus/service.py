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
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from dbus_fast import Message, MessageType, Variant
from dbus_fast.constants import MessageFlag, NameFlag, RequestNameReply
from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface

from ..core.views import InterfaceInfo
from ..errors import Failed
from .access import AccessControl
from .busdaemon import bus_daemon_call
from .connection import BusConnection, new_bus
from .errormap import error_reply
from .names import (
    BUS_NAME,
    INTERFACE_IFACE,
    MANAGER_IFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_IFACE,
    PROPERTIES_IFACE,
    interface_path,
)
from .objects import CALLER, OPEN_METHODS, ManagerInterface, changed_properties
from .tree import InterfaceTree, as_variants, variants

if TYPE_CHECKING:
    from ..core.manager import Manager

log = logging.getLogger("xfrmid.bus")

_NAME_OWNER_CHANGED = (
    "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
    "interface='org.freedesktop.DBus',member='NameOwnerChanged'"
)


class XfrmidMessageBus(BusConnection):
    """dbus-fast emits ObjectManager signals from the child's own path; the
    specification (and sd-bus/GDBus object manager clients) expect them from
    the object manager. BusService emits them itself, from /org/xfrmid1."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        return None

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        return None


def connect_bus(bus: str) -> XfrmidMessageBus:
    """A not yet connected bus for 'system', 'session' or a D-Bus address."""
    return new_bus(bus, XfrmidMessageBus)


class BusService:
    """The Manager's presence on one bus; also its ManagerListener."""

    def __init__(self, manager: Manager, bus: XfrmidMessageBus, reload: Callable[[], Awaitable[None]]) -> None:
        self._manager = manager
        self._bus = bus
        self._access = AccessControl(bus)
        self._tree = InterfaceTree()
        self._root = ManagerInterface(manager, reload, views=self._tree.views, count=lambda: len(self._tree))
        self._root_node = intr.Node.default(MANAGER_PATH)
        self._root_node.interfaces.append(self._root.introspect())
        self._tasks: set[asyncio.Task] = set()
        self._methods = {m.name: m for m in ServiceInterface._get_methods(self._root)}
        self._count = 0
        # unique name -> Attach calls of it being handled, and those of them whose
        # caller left meanwhile (NameOwnerChanged arrived): see _attach_finished
        self._attaching: dict[str, int] = {}
        self._left_while_attaching: set[str] = set()
        self._outbox: list[Callable[[], Message | None]] = []  # signals of this loop iteration, in order (_later)

    @property
    def bus(self) -> XfrmidMessageBus:
        return self._bus

    @property
    def interface_count(self) -> int:
        """Interfaces on the bus now (the Manager's InterfaceCount property)."""
        return len(self._tree)

    async def start(self, request_name: bool = True) -> None:
        """Export everything, then (last) take the well-known name."""
        self._bus.add_message_handler(self._on_message)
        await self._add_match(_NAME_OWNER_CHANGED)
        self._bus.export(MANAGER_PATH, self._root)
        # the views the manager already published: no second copy of each
        for info in self._manager.published():
            self._tree.put(info)
        self._count = len(self._tree)
        self._manager.subscribe(self)
        await self._release_departed_callers()
        if request_name:
            reply = await self._bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
            if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                raise Failed(f"The bus name {BUS_NAME} is already owned by another process.")
        log.info("serving %s on the bus as %s", BUS_NAME, self._bus.unique_name)

    async def stop(self) -> None:
        self._send_signals()  # what the last changes announced
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
        if msg.message_type != MessageType.METHOD_CALL:
            return False
        if msg.path != MANAGER_PATH or msg.interface not in (None, MANAGER_IFACE):
            # interface objects, GetManagedObjects, Introspect (raises DBusError for standard errors)
            reply = self._tree.handle(msg, self._root_node)
            if reply is None:
                return False  # dbus-fast answers (Properties of the Manager, Peer, unknown objects)
            if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                self._bus.send(reply)
            return True
        method = self._methods.get(msg.member)
        if method is None or method.in_signature != msg.signature:
            return False  # dbus-fast answers UnknownMethod
        if msg.member == "Attach" and msg.sender:
            self._attaching[msg.sender] = self._attaching.get(msg.sender, 0) + 1
        ctx = contextvars.copy_context()
        ctx.run(CALLER.set, msg.sender)
        task = asyncio.get_running_loop().create_task(self._dispatch(msg, method), context=ctx)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _dispatch(self, msg: Message, method: Any) -> None:
        try:
            reply = await self._reply(msg, method)
        finally:
            if msg.member == "Attach" and msg.sender:
                await self._attach_finished(msg.sender)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            try:
                # alone, the reply leaves at once; among other calls (a pipelining client),
                # with this loop turn's other messages in one write (a send each was 7 % of
                # a hub's calls under emulation)
                if len(self._tasks) > 1:
                    self._bus.send_in_turn(reply)
                else:
                    self._bus.send(reply)
            except Exception:  # the caller may be gone; nothing to tell
                log.debug("could not send the reply to %s", msg.sender, exc_info=True)

    async def _reply(self, msg: Message, method: Any) -> Message:
        try:
            if msg.member not in OPEN_METHODS:
                await self._access.require_admin(msg.sender, msg.member)
            result = await method.fn(self._root, *msg.body)
            if not method.out_signature:
                body: list[Any] = []
            elif len(method.out_signature_tree.types) == 1:
                body = [result]
            else:
                body = list(result)
            return Message.new_method_return(msg, method.out_signature, body)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the one place errors become replies
            return error_reply(msg, exc)

    async def _release_departed_callers(self) -> None:
        """bind_to_caller references restored from the state file whose client left
        while the daemon was not watching (restart): release them now."""
        for caller in sorted(self._manager.bound_callers()):
            if await bus_daemon_call(self._bus, "NameHasOwner", "s", [caller]) is False:
                await self._vanished(caller)

    async def _attach_finished(self, sender: str) -> None:
        """A bind_to_caller client that left before its Attach finished: its
        NameOwnerChanged may have been handled before the reference existed,
        so release again now. The bus delivers a client's calls before its
        NameOwnerChanged on our one connection, and _on_message counts the call
        when it is read, so no round trip to the bus daemon is needed."""
        left = self._attaching.get(sender, 1) - 1
        if left > 0:
            self._attaching[sender] = left
            return
        self._attaching.pop(sender, None)
        if sender in self._left_while_attaching:
            self._left_while_attaching.discard(sender)
            await self._vanished(sender)

    def _name_owner_changed(self, msg: Message) -> None:
        name, _old, new = msg.body
        if not name.startswith(":") or new:
            return
        self._access.forget(name)
        if name in self._attaching:
            self._left_while_attaching.add(name)
        task = asyncio.get_running_loop().create_task(self._vanished(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _vanished(self, name: str) -> None:
        try:
            await self._manager.caller_vanished(name)
        except Exception:
            log.exception("releasing the references of %s failed", name)

    # ---- ManagerListener ------------------------------------------------

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        self._later(lambda: Message.new_signal(path, interface, member, signature, body))

    def _later(self, build: Callable[[], Message | None]) -> None:
        """Queue a signal; the queue is sent, in order, right after the current loop iteration.

        So a call's own signals follow its reply instead of delaying it: each send wakes
        the bus daemon, which under emulation costs as much as the rest of an Attach; and
        ``build`` makes the message then, after the reply has left (the publish step
        that built it was 0.5 ms of an Attach's 4.6 ms in the daemon under emulation).
        GDBus and NetworkManager send PropertiesChanged the same way (from an idle
        callback). The reply never runs ahead of the properties: the tree already holds
        the new view, so a Get right after it reads the new value.
        """
        if not self._bus.connected:
            return
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._send_signals)
        self._outbox.append(build)

    def _send_signals(self) -> None:
        builds, self._outbox = self._outbox, []
        if not self._bus.connected:
            return
        outbox = [msg for build in builds if (msg := build()) is not None]
        # one InterfaceCount change for the whole outbox, after the InterfacesAdded/Removed
        # it follows (a CreateInterfaces of a thousand: one signal, not a thousand)
        count = len(self._tree)
        if count != self._count:
            self._count = count
            outbox.append(Message.new_signal(MANAGER_PATH, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                                             [MANAGER_IFACE, {"InterfaceCount": Variant("u", count)}, []]))
        for msg in outbox:
            self._bus.send(msg)

    def _count_changed(self) -> None:
        """The count is announced when the outbox is sent (``_send_signals``)."""
        if len(self._tree) != self._count and not self._outbox and self._bus.connected:
            asyncio.get_running_loop().call_soon(self._send_signals)

    def interface_added(self, info: InterfaceInfo) -> None:
        self.interface_changed(info)

    def interface_changed(self, info: InterfaceInfo) -> None:
        path, old = self._tree.put(info)
        if old is None:
            log.debug("exporting %s", info.name)
            self._later(lambda: Message.new_signal(MANAGER_PATH, OBJECT_MANAGER_IFACE, "InterfacesAdded",
                                                   "oa{sa{sv}}", [path, {INTERFACE_IFACE: variants(info)}]))
            self._count_changed()
            return
        self._later(lambda: _properties_changed(path, old, info))

    def interface_removed(self, info: InterfaceInfo) -> None:
        path = self._tree.remove(info)
        if path is not None:
            self._signal(MANAGER_PATH, OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas", [path, [INTERFACE_IFACE]])
        self._count_changed()

    def repaired(self, info: InterfaceInfo, what: str) -> None:
        log.info("repaired %s%s: %s", info.name, f" in netns {info.netns}" if info.netns else "", what)
        self.interface_changed(info)
        # after PropertiesChanged, so a listener reading properties sees the repair
        path = interface_path(info.name, info.netns)
        if path in self._tree:
            self._signal(path, INTERFACE_IFACE, "Repaired", "s", [what])


def _properties_changed(path: str, old: InterfaceInfo, new: InterfaceInfo) -> Message | None:
    """PropertiesChanged between two views of one interface; None when the bus sees no difference.
    Owners, Addresses and Routes are named in invalidated_properties, without their values."""
    changed, invalidated = changed_properties(old, new)
    if not changed and not invalidated:
        return None
    return Message.new_signal(path, PROPERTIES_IFACE, "PropertiesChanged", "sa{sv}as",
                              [INTERFACE_IFACE, as_variants(changed), invalidated])
