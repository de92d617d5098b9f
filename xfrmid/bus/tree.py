"""The per-interface objects under /org/xfrmid1, answered from the published views.

Why not one exported dbus-fast object per interface: each costs a
ServiceInterface with its handler tables (kilobytes, 10,000 of them at the
scale xfrmid is built for), exporting 10,000 took seconds at start-up, and dbus-fast
finds the path of an emitted signal by scanning every export, so each
PropertiesChanged was O(interfaces). Here an interface is one entry
``object path -> InterfaceInfo`` (the same view object the manager
published); Properties, Introspectable and the ObjectManager's
GetManagedObjects are answered from it, and signals are sent with the known
path. Peer and everything else fall through to dbus-fast, which replies as
for any path it does not export (UnknownObject / UnknownMethod), as before.

The contract does not change: paths, interfaces, property types and the
introspection XML come from the same definition (``InterfaceObject``).
"""

from __future__ import annotations

from typing import Any, Iterable

from dbus_fast import Message, Variant
from dbus_fast import introspection as intr
from dbus_fast.constants import ErrorType
from dbus_fast.errors import DBusError
from dbus_fast.service import ServiceInterface

from ..core.views import InterfaceInfo
from .names import (
    INTERFACE_IFACE,
    MANAGER_PATH,
    OBJECT_MANAGER_IFACE,
    PROPERTIES_IFACE,
    interface_path,
)
from .objects import PROPERTY_OF, InterfaceObject, bus_property

INTROSPECTABLE_IFACE = "org.freedesktop.DBus.Introspectable"
# interfaces every object has (dbus-fast's Node.default): no properties of their own
STANDARD_IFACES = frozenset(
    {INTROSPECTABLE_IFACE, "org.freedesktop.DBus.Peer", PROPERTIES_IFACE, OBJECT_MANAGER_IFACE}
)
_UNDER = MANAGER_PATH + "/"

_DEFINITION = InterfaceObject()
SIGNATURES: dict[str, str] = {p.name: p.signature for p in ServiceInterface._get_properties(_DEFINITION)}
assert set(SIGNATURES) == {prop for prop, _ in PROPERTY_OF.values()}, "InterfaceObject and PROPERTY_OF disagree"


def variants(info: InterfaceInfo) -> dict[str, Variant]:
    """All properties of one interface as the bus carries them (a{sv})."""
    return {prop: Variant(SIGNATURES[prop], convert(getattr(info, field)))
            for field, (prop, convert) in PROPERTY_OF.items()}


def as_variants(values: dict[str, Any]) -> dict[str, Variant]:
    return {prop: Variant(SIGNATURES[prop], value) for prop, value in values.items()}


class InterfaceTree:
    """Object path -> published view of every interface on the bus."""

    def __init__(self) -> None:
        self._views: dict[str, InterfaceInfo] = {}

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, path: object) -> bool:
        return path in self._views

    def get(self, path: str) -> InterfaceInfo | None:
        return self._views.get(path)

    def views(self) -> Iterable[InterfaceInfo]:
        return self._views.values()

    def put(self, info: InterfaceInfo) -> tuple[str, InterfaceInfo | None]:
        """Store the view; returns its path and the view it replaces (None: a new object)."""
        path = interface_path(info.name, info.netns)
        old = self._views.get(path)
        self._views[path] = info
        return path, old

    def remove(self, info: InterfaceInfo) -> str | None:
        """Forget the interface; its path, or None when it was not on the bus."""
        path = interface_path(info.name, info.netns)
        return path if self._views.pop(path, None) is not None else None

    # ---- method calls ---------------------------------------------------

    def handle(self, msg: Message, manager_node: intr.Node) -> Message | None:
        """The reply to a call this tree answers, or None to let dbus-fast answer.

        ``manager_node``: the introspection of /org/xfrmid1 itself (its
        interfaces), to which the children are added. Raises DBusError for
        the standard errors (dbus-fast turns it into the error reply).
        """
        path = msg.path or ""
        iface = msg.interface
        if path == MANAGER_PATH:
            if iface == OBJECT_MANAGER_IFACE and msg.member == "GetManagedObjects" and msg.signature == "":
                return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self.managed_objects()])
            if _is_introspect(msg):
                manager_node.nodes = [intr.Node(name) for name in sorted(self._children(path))]
                return Message.new_method_return(msg, "s", [manager_node.tostring()])
            return None
        if not path.startswith(_UNDER):
            return None
        info = self._views.get(path)
        if _is_introspect(msg):
            return Message.new_method_return(msg, "s", [self._introspect(path, info)])
        if info is not None and iface == PROPERTIES_IFACE:
            return self._properties(msg, info)
        return None

    def managed_objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        return {path: {INTERFACE_IFACE: variants(info)} for path, info in self._views.items()}

    def _properties(self, msg: Message, info: InterfaceInfo) -> Message:
        member, sig = msg.member, msg.signature
        if (member, sig) not in (("Get", "ss"), ("GetAll", "s"), ("Set", "ssv")):
            raise DBusError(ErrorType.UNKNOWN_METHOD,
                            f'properties interface doesn\'t have method "{member}" with signature "{sig}"')
        name = msg.body[0]
        if name != INTERFACE_IFACE:
            if name in STANDARD_IFACES:
                if member == "GetAll":
                    return Message.new_method_return(msg, "a{sv}", [{}])
                raise DBusError(ErrorType.UNKNOWN_PROPERTY,
                                f'interface "{name}" does not have property "{msg.body[1]}"')
            raise DBusError(ErrorType.UNKNOWN_INTERFACE,
                            f'could not find an interface "{name}" at path: "{msg.path}"')
        if member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [variants(info)])
        prop = msg.body[1]
        if prop not in SIGNATURES:
            raise DBusError(ErrorType.UNKNOWN_PROPERTY, f'interface "{name}" does not have property "{prop}"')
        if member == "Set":
            raise DBusError(ErrorType.PROPERTY_READ_ONLY, "the property is readonly")
        return Message.new_method_return(msg, "v", [Variant(SIGNATURES[prop], bus_property(info, prop))])

    # ---- introspection ----------------------------------------------------

    def _introspect(self, path: str, info: InterfaceInfo | None) -> str:
        if info is not None:
            node = intr.Node.default(path)
            node.interfaces.append(_DEFINITION.introspect())
            return node.tostring()
        node = intr.Node(path)
        node.nodes = [intr.Node(name) for name in sorted(self._children(path))]
        return node.tostring()

    def _children(self, path: str) -> set[str]:
        """Names of the nodes right below ``path`` (O(interfaces): Introspect only)."""
        prefix = path + "/"
        children = set()
        for child in self._views:
            if child.startswith(prefix):
                children.add(child[len(prefix):].split("/", 1)[0])
        return children


def _is_introspect(msg: Message) -> bool:
    return msg.interface in (None, INTROSPECTABLE_IFACE) and msg.member == "Introspect" and msg.signature == ""

