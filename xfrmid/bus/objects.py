"""The exported objects: the Manager at /org/xfrmid1 and one object per interface.

PascalCase lives only here, at the edge. Method bodies translate D-Bus
arguments into one Manager call each; the caller's unique name comes from
``CALLER``, which the dispatcher (xfrmid.bus.service) sets for every call.
"""

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from dbus_fast import Variant
from dbus_fast.constants import PropertyAccess
# method and signal: the names dbus-fast has had from the first release on (dbus_method and
# dbus_signal arrived in 3.x as aliases), so the oldest supported dbus-fast has them too
from dbus_fast.service import ServiceInterface, dbus_property
from dbus_fast.service import method as dbus_method
from dbus_fast.service import signal as dbus_signal

from ..version import full_version
from ..core.views import InterfaceInfo
from .names import INTERFACE_IFACE, MANAGER_IFACE, interface_path
from .options import parse_options

if TYPE_CHECKING:
    from ..core.manager import Manager

# Unique bus name of the connection whose call is being handled.
CALLER: ContextVar[str | None] = ContextVar("xfrmid_bus_caller", default=None)

# Methods every local user may call; all others need root or group xfrmid.
OPEN_METHODS = frozenset({"ListInterfaces"})

# Names of output arguments, for introspection (dbus-fast leaves them unnamed).
OUT_NAMES = {
    "CreateInterface": ["path"],
    "CreateInterfaces": ["paths"],
    "Attach": ["path", "if_id", "mark", "mask"],
    "Detach": ["deleted"],
    "ListInterfaces": ["interfaces"],
    "Reconcile": ["counts"],
}

# ... and of signal arguments.
SIGNAL_ARG_NAMES = {"Repaired": ["what"]}

_FEATURE_KEYS = ("xfrm_interface", "collect_md", "set_mark_mask")


def _ns(opts: dict[str, Any]) -> str | None:
    return opts.get("netns") or None


class ManagerInterface(ServiceInterface):
    def __init__(
        self,
        manager: "Manager",
        reload: Callable[[], Awaitable[None]],
        views: Callable[[], Iterable[InterfaceInfo]] | None = None,
        count: Callable[[], int] | None = None,
    ) -> None:
        """``views``/``count``: the interfaces as published on the bus (BusService's
        tree); without them the manager is asked, which builds every view anew."""
        super().__init__(MANAGER_IFACE)
        self._manager = manager
        self._reload = reload
        self._views = views or (lambda: self._manager.interfaces())
        self._count = count or (lambda: len(self._manager.interfaces()))
        for method in ServiceInterface._get_methods(self):
            for arg, name in zip(method.introspection.out_args, OUT_NAMES.get(method.name, [])):
                arg.name = name

    # ---- methods -------------------------------------------------------

    @dbus_method()
    async def CreateInterface(self, name: "s", if_id: "u", options: "a{sv}") -> "o":
        o = parse_options("CreateInterface", options)
        info = await self._manager.create_interface(
            name,
            if_id,
            netns=_ns(o),
            link=o.get("link") or None,
            mtu=o.get("mtu"),
            external=o.get("external", False),
            addresses=o.get("addresses", ()),
        )
        return interface_path(info.name, info.netns)

    @dbus_method()
    async def DeleteInterface(self, name: "s", options: "a{sv}"):
        o = parse_options("DeleteInterface", options)
        await self._manager.delete_interface(name, netns=_ns(o), force=o.get("force", False))

    @dbus_method()
    async def CreateInterfaces(self, interfaces: "a(sua{sv})", options: "a{sv}") -> "ao":
        o = parse_options("CreateInterfaces", options)
        entries = [(name, if_id, parse_options("CreateInterfaces", opts, entry=True)) for name, if_id, opts in interfaces]
        infos = await self._manager.create_interfaces(entries, netns=_ns(o))
        return [interface_path(info.name, info.netns) for info in infos]

    @dbus_method()
    async def DeleteInterfaces(self, names: "as", options: "a{sv}"):
        o = parse_options("DeleteInterfaces", options)
        await self._manager.delete_interfaces(list(names), netns=_ns(o), force=o.get("force", False))

    @dbus_method()
    async def Attach(self, name: "s", owner: "s", options: "a{sv}") -> "ouuu":
        o = parse_options("Attach", options)
        caller = CALLER.get() if o.get("bind_to_caller", False) else None
        result = await self._manager.attach(name, owner, netns=_ns(o), caller=caller)
        return [interface_path(result.info.name, result.info.netns), result.if_id, result.mark, result.mask]

    @dbus_method()
    async def Detach(self, name: "s", owner: "s", options: "a{sv}") -> "b":
        o = parse_options("Detach", options)
        return bool(await self._manager.detach(name, owner, netns=_ns(o)))

    @dbus_method()
    async def AddAddress(self, name: "s", owner: "s", cidr: "s", options: "a{sv}"):
        o = parse_options("AddAddress", options)
        await self._manager.add_address(name, owner, cidr, netns=_ns(o))

    @dbus_method()
    async def RemoveAddress(self, name: "s", owner: "s", cidr: "s", options: "a{sv}"):
        o = parse_options("RemoveAddress", options)
        await self._manager.remove_address(name, owner, cidr, netns=_ns(o))

    @dbus_method()
    async def AddRoute(self, name: "s", owner: "s", destination: "s", options: "a{sv}"):
        o = parse_options("AddRoute", options)
        await self._manager.add_route(name, owner, destination, netns=_ns(o), **_route_options(o))

    @dbus_method()
    async def RemoveRoute(self, name: "s", owner: "s", destination: "s", options: "a{sv}"):
        o = parse_options("RemoveRoute", options)
        await self._manager.remove_route(name, owner, destination, netns=_ns(o), **_route_options(o))

    @dbus_method()
    async def ListInterfaces(self) -> "a(suso)":
        return [
            [i.name, i.if_id, i.netns, interface_path(i.name, i.netns)]
            for i in sorted(self._views(), key=lambda i: (i.netns, i.name))
        ]

    @dbus_method()
    async def Reconcile(self) -> "a{sv}":
        counts = await self._manager.reconcile()
        return {key: Variant("u", int(value)) for key, value in counts.items()}

    @dbus_method()
    async def Reload(self):
        await self._reload()

    # ---- properties ----------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return full_version()

    @dbus_property(access=PropertyAccess.READ)
    def KernelFeatures(self) -> "a{sb}":
        return kernel_features(self._manager)

    @dbus_property(access=PropertyAccess.READ)
    def InterfaceCount(self) -> "u":
        return self._count()


def _route_options(o: dict[str, Any]) -> dict[str, Any]:
    return {
        "table": o.get("table"),
        "src": o.get("src") or None,
        "metric": o.get("metric"),
        "peer": o.get("peer") or None,
    }


def kernel_features(manager: "Manager") -> dict[str, bool]:
    features = manager.features
    if features is None:
        return {key: False for key in _FEATURE_KEYS}
    return {key: bool(value) for key, value in features.as_dict().items()}


# InterfaceInfo field -> (D-Bus property, value for the bus)
PROPERTY_OF: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "name": ("Name", str),
    "if_id": ("IfId", int),
    "netns": ("Netns", str),
    "ifindex": ("Ifindex", int),
    "link": ("Link", str),
    "mtu": ("Mtu", int),
    "external": ("External", bool),
    "operstate": ("OperState", str),
    "owned": ("Owned", bool),
    "owners": ("Owners", list),
    "addresses": ("Addresses", list),
    "routes": ("Routes", lambda routes: [[d, int(t), s] for d, t, s in routes]),
    "mark": ("Mark", int),
    "mask": ("MarkMask", int),
}

# D-Bus property -> (InterfaceInfo field, value for the bus)
FIELD_OF: dict[str, tuple[str, Callable[[Any], Any]]] = {
    prop: (field, convert) for field, (prop, convert) in PROPERTY_OF.items()
}


def bus_properties(info: InterfaceInfo) -> dict[str, Any]:
    return {prop: convert(getattr(info, field)) for field, (prop, convert) in PROPERTY_OF.items()}


def bus_property(info: InterfaceInfo, prop: str) -> Any:
    """One property's value for the bus (KeyError for a name the interface does not have)."""
    field, convert = FIELD_OF[prop]
    return convert(getattr(info, field))


# Properties whose PropertiesChanged names them without their value (annotation
# org.freedesktop.DBus.Property.EmitsChangedSignal "invalidates"): with thousands of
# owners and routes on one interface, sending the whole list on every Attach made each
# call O(owners) on the bus; a client that cares asks with Get.
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"
INVALIDATES = ("Owners", "Addresses", "Routes")


def changed_properties(old: InterfaceInfo, new: InterfaceInfo) -> tuple[dict[str, Any], list[str]]:
    """Between two views of one interface: the properties whose bus value differs, with their
    new value, and the names of those of INVALIDATES that differ (their values are not built)."""
    changed: dict[str, Any] = {}
    invalidated: list[str] = []
    for field, (prop, convert) in PROPERTY_OF.items():
        if getattr(old, field) != getattr(new, field):
            if prop in INVALIDATES:
                invalidated.append(prop)
            else:
                changed[prop] = convert(getattr(new, field))
    return changed, invalidated


class InterfaceObject(ServiceInterface):
    """The definition of org.xfrmid1.Interface: its introspection and property types.

    Interfaces are not exported one dbus-fast object each (xfrmid.bus.tree
    answers for them from the published views); this class is what their
    introspection and property signatures are read from, so the definition
    stays one piece of code with the Manager's.
    """

    def __init__(self, info: InterfaceInfo | None = None) -> None:
        super().__init__(INTERFACE_IFACE)
        self.info = info
        for sig in ServiceInterface._get_signals(self):
            for arg, name in zip(sig.introspection.args, SIGNAL_ARG_NAMES.get(sig.name, [])):
                arg.name = name
        for prop in ServiceInterface._get_properties(self):
            if prop.name in INVALIDATES:
                prop.introspection.annotations[EMITS_CHANGED] = "invalidates"

    def _value(self, prop: str) -> Any:
        if self.info is None:
            raise LookupError("InterfaceObject without a view has no property values")
        return bus_property(self.info, prop)

    @dbus_signal()
    def Repaired(self, what: "s") -> "s":
        """Someone else broke a promise on this interface and xfrmid restored it; ``what``
        says what was done, e.g. "added address 10.0.0.1/24 to ipsec1"."""
        return what

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> "s":
        return self._value("Name")

    @dbus_property(access=PropertyAccess.READ)
    def IfId(self) -> "u":
        return self._value("IfId")

    @dbus_property(access=PropertyAccess.READ)
    def Netns(self) -> "s":
        return self._value("Netns")

    @dbus_property(access=PropertyAccess.READ)
    def Ifindex(self) -> "i":
        return self._value("Ifindex")

    @dbus_property(access=PropertyAccess.READ)
    def Link(self) -> "s":
        return self._value("Link")

    @dbus_property(access=PropertyAccess.READ)
    def Mtu(self) -> "u":
        return self._value("Mtu")

    @dbus_property(access=PropertyAccess.READ)
    def External(self) -> "b":
        return self._value("External")

    @dbus_property(access=PropertyAccess.READ)
    def OperState(self) -> "s":
        return self._value("OperState")

    @dbus_property(access=PropertyAccess.READ)
    def Owned(self) -> "b":
        return self._value("Owned")

    @dbus_property(access=PropertyAccess.READ)
    def Owners(self) -> "as":
        return self._value("Owners")

    @dbus_property(access=PropertyAccess.READ)
    def Addresses(self) -> "as":
        return self._value("Addresses")

    @dbus_property(access=PropertyAccess.READ)
    def Routes(self) -> "a(sus)":
        return self._value("Routes")

    @dbus_property(access=PropertyAccess.READ)
    def Mark(self) -> "u":
        return self._value("Mark")

    @dbus_property(access=PropertyAccess.READ)
    def MarkMask(self) -> "u":
        return self._value("MarkMask")
