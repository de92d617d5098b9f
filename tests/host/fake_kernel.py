"""An in-memory KernelBackend for unit tests of the core's pure logic, with netlink's events.

It mimics the kernel behaviours the core depends on (checked against the real
kernel in tests/kernel/): idempotent create of an identical link, Conflict on
name/if_id clashes, routes and addresses vanishing with their link, routes
dropped when their source address goes and all IPv4 routes through a device
dropped when its last IPv4 address goes, ENETDOWN for routes through a down
link, EEXIST for a second route in the same (table, prefix, metric) slot.

Every change made through it (a backend method or ``foreign_link``) is an
event for the namespace's monitors, as rtnetlink notifications are:
``FakeKernel.monitor`` is the drift watcher's monitor factory, what
``kernel.monitor.NetnsMonitor`` is to the real kernel. A change written into
``ns`` by hand makes no event (drift whose notification was lost).
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from xfrmid.errors import Conflict, InvalidArgument, NotFound, XfrmidError
from xfrmid.kernel.events import AddressEvent, Event, Interest, LinkEvent, RouteEvent, RuleEvent
from xfrmid.kernel.features import Features
from xfrmid.kernel.objects import (
    XFRMID_LINK_GROUP,
    XFRMID_PROTO,
    AddressSpec,
    LinkSpec,
    LinkState,
    RouteSpec,
    RuleSpec,
)

FEATURES = Features(xfrm_interface=True, collect_md=True, set_mark_mask=True, kernel="fake")


def norm_route(spec: RouteSpec) -> RouteSpec:
    default = 1024 if ":" in spec.dst else 0
    return replace(spec, metric=None if spec.metric in (None, default) else spec.metric)


def norm_rule(spec: RuleSpec) -> RuleSpec:
    dst = None if spec.dst in ("0.0.0.0/0", "::/0") else spec.dst
    mask = spec.fwmask if spec.fwmark is None or spec.fwmask is not None else 0xFFFFFFFF
    return replace(spec, dst=dst, fwmask=mask if spec.fwmark is not None else None)


@dataclass
class Namespace:
    links: dict[str, LinkState] = field(default_factory=dict)
    devices: set[str] = field(default_factory=lambda: {"lo", "eth0"})  # non-xfrm devices
    addresses: dict[str, set[str]] = field(default_factory=dict)
    routes: set[RouteSpec] = field(default_factory=set)  # proto 120 only
    foreign_routes: set[RouteSpec] = field(default_factory=set)
    rules: set[RuleSpec] = field(default_factory=set)  # proto 120 only
    foreign_rules: set[RuleSpec] = field(default_factory=set)


class FakeMonitor:
    """One namespace's events of the fake kernel, delivered to ``on_event`` while running."""

    def __init__(self, kernel: "FakeKernel", netns: str | None, on_event: Callable[[Event], None],
                 interest: Interest) -> None:
        self.kernel, self.netns, self.on_event, self.interest = kernel, netns, on_event, interest
        self.running = False

    async def start(self) -> None:
        self.kernel._ns(self.netns)  # NotFound for a missing namespace, as the real monitor
        self.running = True
        self.kernel.monitors.append(self)

    async def close(self) -> None:
        self.running = False
        if self in self.kernel.monitors:
            self.kernel.monitors.remove(self)

    def deliver(self, ev: Event) -> None:
        if isinstance(ev, LinkEvent):
            # what the parser does: a managed name's ifindex is learnt from its link events
            managed = ev.ifname in self.interest.names or ev.ifindex in self.interest.indexes
            if ev.ifname in self.interest.names and not ev.deleted:
                self.interest.indexes.add(ev.ifindex)
            ev = replace(ev, managed=managed)
        self.on_event(ev)


class FakeKernel:
    def __init__(self, features: Features = FEATURES) -> None:
        self._features = features
        self.ns: dict[str | None, Namespace] = {None: Namespace()}
        self._ifindex = itertools.count(10)
        self.calls: list[tuple[str, object]] = []
        self.fail: dict[str, XfrmidError] = {}  # op name -> error raised once
        self.monitors: list[FakeMonitor] = []  # started ones

    def monitor(self, netns: str | None, on_event: Callable[[Event], None], interest: Interest) -> FakeMonitor:
        """The watcher's monitor factory for this kernel."""
        return FakeMonitor(self, netns, on_event, interest)

    def _emit(self, netns: str | None, ev: Event) -> None:
        for monitor in list(self.monitors):
            if monitor.netns == netns:
                monitor.deliver(ev)

    def _link_event(self, netns: str | None, state: LinkState, deleted: bool = False) -> None:
        self._emit(netns, LinkEvent(netns, deleted, state.ifindex, state.name, "xfrm", state.up,
                                    "unknown" if state.up else "down", state.mtu,
                                    XFRMID_LINK_GROUP if state.owned else 0, False))

    def _address_event(self, netns: str | None, ifname: str, cidr: str, deleted: bool) -> None:
        link = self.ns[netns].links.get(ifname)
        self._emit(netns, AddressEvent(netns, deleted, link.ifindex if link else 1, cidr, 0))

    def _route_event(self, netns: str | None, spec: RouteSpec, deleted: bool) -> None:
        link = self.ns[netns].links.get(spec.dev)
        family = socket.AF_INET6 if ":" in spec.dst else socket.AF_INET
        self._emit(netns, RouteEvent(netns, deleted, family, spec.dst, spec.table, XFRMID_PROTO,
                                     link.ifindex if link else 1, spec.metric, 0))

    def _rule_event(self, netns: str | None, spec: RuleSpec, deleted: bool) -> None:
        self._emit(netns, RuleEvent(netns, deleted, spec.family, spec.priority, spec.table, XFRMID_PROTO,
                                    spec.dst, spec.src, 0))

    # --- test helpers -------------------------------------------------------

    def add_netns(self, name: str) -> Namespace:
        return self.ns.setdefault(name, Namespace())

    def foreign_link(self, name: str, if_id: int, netns: str | None = None, **kw) -> LinkState:
        state = LinkState(name=name, if_id=if_id, ifindex=next(self._ifindex), link=kw.get("link"),
                          mtu=kw.get("mtu", 1500), up=kw.get("up", True), operstate="UNKNOWN",
                          external=kw.get("external", False), owned=kw.get("owned", False))
        self._ns(netns).links[name] = state
        self._ns(netns).addresses.setdefault(name, set())
        self._link_event(netns, state)
        return state

    READS = ("xfrm_links", "link", "addresses", "addresses_by_index", "own_routes", "own_rules")

    def mutations(self) -> list[tuple[str, object]]:
        return [c for c in self.calls if c[0] not in self.READS]

    def _ns(self, netns: str | None) -> Namespace:
        try:
            return self.ns[netns]
        except KeyError:
            raise NotFound(f"Network namespace {netns!r} does not exist.") from None

    def _op(self, name: str, arg: object = None) -> None:
        self.calls.append((name, arg))
        err = self.fail.pop(name, None)
        if err is not None:
            raise err

    def _dev(self, ns: Namespace, name: str) -> None:
        if name not in ns.links and name not in ns.devices:
            raise NotFound(f"Interface {name!r} does not exist.")

    # --- KernelBackend ---------------------------------------------------------

    async def features(self) -> Features:
        return self._features

    async def xfrm_links(self, netns):
        self._op("xfrm_links", netns)
        return list(self._ns(netns).links.values())

    async def link(self, netns, name) -> LinkState:
        self._op("link", name)
        ns = self._ns(netns)
        if name in ns.devices:
            raise InvalidArgument(f"Interface {name!r} is not an xfrm interface.")
        if name not in ns.links:
            raise NotFound(f"Interface {name!r} does not exist.")
        return ns.links[name]

    async def create_links(self, netns, specs: list[LinkSpec]) -> list[LinkState | XfrmidError | None]:
        out: list[LinkState | XfrmidError | None] = []
        for spec in specs:
            try:
                out.append(await self.create_link(netns, spec, read=False))
            except XfrmidError as exc:
                out.append(exc)
        return out

    async def create_link(self, netns, spec: LinkSpec, *, read: bool = True) -> LinkState | None:
        self._op("create_link", spec)
        ns = self._ns(netns)
        have = ns.links.get(spec.name)
        if have is not None:
            if have.if_id != (0 if spec.external else spec.if_id) or have.external != spec.external:
                raise Conflict(f"Interface {spec.name!r} already exists with if_id {have.if_id}.")
            return have
        if spec.name in ns.devices:
            raise Conflict(f"Interface name {spec.name!r} is already used by another device.")
        for other in ns.links.values():
            if not spec.external and not other.external and other.if_id == spec.if_id:
                raise Conflict(f"if_id {spec.if_id} is already used by interface {other.name!r}.")
        if spec.link is not None:
            self._dev(ns, spec.link)
        state = LinkState(name=spec.name, if_id=0 if spec.external else spec.if_id, ifindex=next(self._ifindex),
                          link=spec.link, mtu=spec.mtu or 1500, up=spec.up, operstate="UNKNOWN",
                          external=spec.external, owned=True)
        ns.links[spec.name] = state
        ns.addresses[spec.name] = set()
        self._link_event(netns, state)
        return state if read else None

    async def change_link(self, netns, name, *, mtu=None, up=None, mark=False) -> LinkState:
        self._op("change_link", (name, mtu, up, "mark") if mark else (name, mtu, up))
        ns = self._ns(netns)
        if name not in ns.links:
            raise NotFound(f"Interface {name!r} does not exist.")
        state = ns.links[name]
        state = replace(state, mtu=mtu if mtu is not None else state.mtu, up=up if up is not None else state.up)
        if mark:
            state = replace(state, owned=True, unmarked=False)
        ns.links[name] = state
        self._link_event(netns, state)
        return state

    async def delete_link(self, netns, name, ifindex=None) -> None:
        self._op("delete_link", name)
        ns = self._ns(netns)
        if name not in ns.links:
            raise NotFound(f"Interface {name!r} does not exist.")
        state = ns.links.pop(name)
        ns.addresses.pop(name, None)
        ns.routes = {r for r in ns.routes if r.dev != name}
        ns.foreign_routes = {r for r in ns.foreign_routes if r.dev != name}
        self._link_event(netns, state, deleted=True)  # IPv4 sends no route deletions with the link

    async def addresses(self, netns, ifname, ifindex=None) -> set[str]:
        self._op("addresses", ifname)
        ns = self._ns(netns)
        self._dev(ns, ifname)
        link = ns.links.get(ifname)
        if ifindex is not None and (link is None or link.ifindex != ifindex):
            raise NotFound(f"Interface {ifname!r} (ifindex {ifindex}) does not exist.")
        return set(ns.addresses.get(ifname, set()))

    async def addresses_by_index(self, netns) -> dict[int, set[str]]:
        self._op("addresses_by_index", netns)
        ns = self._ns(netns)
        return {ns.links[name].ifindex: set(held) for name, held in ns.addresses.items()
                if held and name in ns.links}

    async def add_address(self, netns, spec: AddressSpec) -> None:
        self._op("add_address", spec)
        ns = self._ns(netns)
        self._dev(ns, spec.ifname)
        held = ns.addresses.setdefault(spec.ifname, set())
        if spec.cidr not in held:
            held.add(spec.cidr)
            self._address_event(netns, spec.ifname, spec.cidr, deleted=False)

    async def remove_address(self, netns, spec: AddressSpec) -> None:
        self._op("remove_address", spec)
        ns = self._ns(netns)
        self._dev(ns, spec.ifname)
        held = ns.addresses.setdefault(spec.ifname, set())
        if spec.cidr not in held:
            return
        held.discard(spec.cidr)
        self._address_event(netns, spec.ifname, spec.cidr, deleted=True)
        ip = str(ipaddress.ip_interface(spec.cidr).ip)
        v4 = ":" not in ip
        last_v4 = v4 and not any(":" not in a for a in held)

        def survives(r: RouteSpec) -> bool:
            if r.src == ip:
                return False
            return not (last_v4 and r.dev == spec.ifname and ":" not in r.dst)

        for route in [r for r in ns.routes if not survives(r)]:
            ns.routes.discard(route)
            self._route_event(netns, route, deleted=True)
        ns.foreign_routes = {r for r in ns.foreign_routes if survives(r)}

    async def own_routes(self, netns, dev=None, ifindex=None, names=None) -> set[RouteSpec]:
        self._op("own_routes", netns)
        return {r for r in self._ns(netns).routes if dev is None or r.dev == dev}

    async def add_route(self, netns, spec: RouteSpec, *, ifindex=None) -> None:
        self._op("add_route", spec)
        ns = self._ns(netns)
        spec = norm_route(spec)
        self._dev(ns, spec.dev)
        link = ns.links.get(spec.dev)
        if link is not None and not link.up:
            raise XfrmidError(f"Adding route to {spec.dst} failed: interface {spec.dev!r} is down.")
        if spec.src is not None and not any(
            str(ipaddress.ip_interface(a).ip) == spec.src for held in ns.addresses.values() for a in held
        ):
            raise InvalidArgument(f"Source address {spec.src} is not assigned to an interface.")
        if spec in ns.routes:
            return
        slot = (spec.table, spec.dst, spec.metric)
        for other in ns.routes | ns.foreign_routes:
            if (other.table, other.dst, other.metric) == slot:
                raise Conflict(f"Another route to {spec.dst} with the same metric is in table {spec.table}.")
        ns.routes.add(spec)
        self._route_event(netns, spec, deleted=False)

    async def remove_route(self, netns, spec: RouteSpec, *, sole: bool = False, ifindex=None) -> None:
        self._op("remove_route", spec)
        ns = self._ns(netns)
        spec = norm_route(spec)
        if spec in ns.routes:
            ns.routes.discard(spec)
            self._route_event(netns, spec, deleted=True)

    async def own_rules(self, netns) -> set[RuleSpec]:
        self._op("own_rules", netns)
        return set(self._ns(netns).rules)

    async def add_rule(self, netns, spec: RuleSpec) -> None:
        self._op("add_rule", spec)
        ns, spec = self._ns(netns), norm_rule(spec)
        if spec not in ns.rules:
            ns.rules.add(spec)
            self._rule_event(netns, spec, deleted=False)

    async def remove_rule(self, netns, spec: RuleSpec) -> None:
        self._op("remove_rule", spec)
        ns, spec = self._ns(netns), norm_rule(spec)
        if spec in ns.rules:
            ns.rules.discard(spec)
            self._rule_event(netns, spec, deleted=True)

    async def close(self) -> None:
        pass


def ns(kernel: FakeKernel, netns: str | None = None):
    """One namespace of the fake kernel (its links, addresses, routes and rules)."""
    return kernel.ns[netns]


def main_routes(kernel: FakeKernel, netns: str | None = None) -> set[tuple]:
    """The namespace's routes as (destination, device, table, source)."""
    return {(r.dst, r.dev, r.table, r.src) for r in ns(kernel, netns).routes}
