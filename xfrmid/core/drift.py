"""What xfrmid manages, as the watcher knows it, and which events break a promise.

The watcher hears about managed interfaces from the manager's listener calls
(InterfaceInfo views) and keeps them here, with the ``Interest`` of each
namespace that the monitors filter by. ``is_drift`` answers, for the last
event on one kernel object, whether it means a promise is broken now:

- a managed link deleted (not an older incarnation), set down, renamed away,
  given another MTU, or its name taken by another kind of device;
- an address a view lists deleted from a managed link, for IPv4 even when
  it is back by the end of the burst: the kernel drops the IPv4 routes
  through a link with its last address (and the routes that use it as
  source) without a notification, so only the deletion tells that they went;
- a route a view lists (protocol 120) deleted through its interface;
- a rule carrying protocol 120 deleted (no view lists rules);
- a resync (the event stream was lost): always.

Additions are never drift: they cannot break a promise.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from ..kernel.events import (
    AddressEvent,
    Event,
    Interest,
    LinkEvent,
    ResyncEvent,
    RouteEvent,
    RuleEvent,
)
from ..kernel.objects import XFRMID_PROTO
from .desired import Key
from .sorted_items import first_from
from .views import InterfaceInfo


def event_key(ev: Event) -> tuple:
    """The object an event is about: later events on it supersede earlier ones."""
    if isinstance(ev, LinkEvent):
        return ("link", ev.netns, ev.ifindex)
    if isinstance(ev, AddressEvent):
        if ev.deleted and ":" not in ev.address:
            # not superseded by a re-addition: the routes it took silently stay gone
            return ("addr-gone", ev.netns, ev.ifindex, ev.address)
        return ("addr", ev.netns, ev.ifindex, ev.address)
    if isinstance(ev, RouteEvent):
        return ("route", ev.netns, ev.family, ev.dst, ev.table, ev.metric)
    if isinstance(ev, RuleEvent):
        return ("rule", ev.netns, ev.family, ev.priority, ev.table, ev.dst, ev.src)
    return ("resync", ev.netns)


def _iface(text: str) -> str:
    try:
        return ipaddress.ip_interface(text).with_prefixlen
    except ValueError:
        return text


def _network(text: str) -> str:
    try:
        return ipaddress.ip_network(text, strict=False).with_prefixlen
    except ValueError:
        return text


class Managed:
    """The managed interfaces by (netns, name) and by ifindex, and each namespace's Interest."""

    def __init__(self) -> None:
        self.infos: dict[Key, InterfaceInfo] = {}
        self.interest: dict[str | None, Interest] = {}
        self._names: dict[tuple[str | None, int], str] = {}  # (netns, ifindex) -> name
        self._per_netns: Counter[str | None] = Counter()  # managed interfaces per namespace

    def interest_of(self, netns: str | None) -> Interest:
        interest = self.interest.get(netns)
        if interest is None:
            interest = self.interest[netns] = Interest()
        return interest

    def namespaces(self) -> set[str | None]:
        """Namespaces holding managed interfaces (O(namespaces): asked on every listener call)."""
        return set(self._per_netns)

    def clear(self) -> None:
        self.infos.clear()
        self._names.clear()
        self._per_netns.clear()
        for interest in self.interest.values():
            interest.names.clear()
            interest.indexes.clear()

    def remember(self, info: InterfaceInfo) -> None:
        netns = info.netns or None
        old = self.infos.get((netns, info.name))
        self.infos[(netns, info.name)] = info
        if old is None:
            self._per_netns[netns] += 1
        interest = self.interest_of(netns)
        interest.names.add(info.name)
        if old is not None and old.ifindex and old.ifindex != info.ifindex:
            interest.indexes.discard(old.ifindex)
            self._names.pop((netns, old.ifindex), None)
        if info.ifindex > 0:
            interest.indexes.add(info.ifindex)
            self._names[(netns, info.ifindex)] = info.name

    def forget(self, info: InterfaceInfo) -> None:
        netns = info.netns or None
        old = self.infos.pop((netns, info.name), None)
        if old is not None:
            self._per_netns[netns] -= 1
            if self._per_netns[netns] <= 0:
                del self._per_netns[netns]
        interest = self.interest.get(netns)
        for idx in {info.ifindex, old.ifindex if old else 0} - {0}:
            if self._names.get((netns, idx)) == info.name:
                del self._names[(netns, idx)]
            if interest is not None:
                interest.indexes.discard(idx)
        if interest is not None:
            interest.names.discard(info.name)

    def by_index(self, netns: str | None, ifindex: int) -> InterfaceInfo | None:
        name = self._names.get((netns, ifindex))
        return None if name is None else self.infos.get((netns, name))

    # -- judging events ----------------------------------------------------------

    def is_drift(self, ev: Event) -> bool:
        if isinstance(ev, ResyncEvent):
            return True
        if isinstance(ev, LinkEvent):
            return self._link_drift(ev)
        if isinstance(ev, AddressEvent):
            if not ev.deleted:
                return False
            info = self.by_index(ev.netns, ev.ifindex)
            return info is not None and _iface(ev.address) in info.addresses
        if isinstance(ev, RouteEvent):
            if not ev.deleted or ev.protocol != XFRMID_PROTO:
                return False
            return self._route_target(ev) is not None
        if isinstance(ev, RuleEvent):
            return ev.deleted and ev.protocol == XFRMID_PROTO
        return True

    def _link_drift(self, ev: LinkEvent) -> bool:
        info = self.infos.get((ev.netns, ev.ifname))
        if info is None:
            # a managed link renamed away is drift; anything else is not ours
            return not ev.deleted and self.by_index(ev.netns, ev.ifindex) is not None
        if ev.deleted:
            # an older incarnation going away (xfrmid recreated it) is not
            return info.ifindex in (0, ev.ifindex)
        if ev.kind is not None and ev.kind != "xfrm":
            return True  # a foreign device took a managed name
        return not ev.up or bool(info.mtu and ev.mtu != info.mtu)

    def target(self, ev: Event) -> Key | None:
        """The managed interface an event is about; None for rules and resyncs."""
        info = None
        if isinstance(ev, LinkEvent):
            info = self.infos.get((ev.netns, ev.ifname)) or self.by_index(ev.netns, ev.ifindex)
        elif isinstance(ev, AddressEvent):
            info = self.by_index(ev.netns, ev.ifindex)
        elif isinstance(ev, RouteEvent):
            info = self._route_target(ev)
        return None if info is None else (ev.netns, info.name)

    def _route_target(self, ev: RouteEvent) -> InterfaceInfo | None:
        """The managed interface whose view lists the event's route (by its device)."""
        info = self.by_index(ev.netns, ev.oif)
        if info is None:
            return None
        dst = _network(ev.dst)
        found = first_from(info.routes, (dst, ev.table, ""))  # the views' routes are sorted
        return info if found is not None and found[0] == dst and found[1] == ev.table else None
