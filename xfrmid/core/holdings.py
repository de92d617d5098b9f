"""What the owners of one interface hold together, counted, and the sorted lists its view shows.

An address, route or rule stays in the kernel while at least one owner's
requests produce it (desired.py). With thousands of owners on one interface
(a road-warrior hub), finding that out by walking every owner made each call
O(owners). ``Holdings`` counts instead: how many owners hold each address and
each route request, and (``Expansion``, for one setting of mark mask and peer
table) how many held requests produce each kernel route and rule. An owner
replaced (``replace``) moves the counts by its own requests only; a count that
moves between 0 and 1 is a kernel object gained or lost, which ``Delta``
records while a call's save point is open. The sorted owner, address and
route lists of the interface's view are kept the same way (sorted_items.py).

An interface with many owners keeps its Holdings (``desired_state.BIG``); a small
one gets one for the duration of a call only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..kernel.objects import RouteSpec, RuleSpec
from ..naming import output_mark
from .routes_policy import PeerPolicy, RouteRequest, expand
from .sorted_items import SortedItems, sorted_items, with_item, without_item

if TYPE_CHECKING:
    from .desired import Owner

_NONE: frozenset = frozenset()


class Delta:
    """Kernel objects gained (+1) and lost (-1) since a save point, by owners' requests."""

    __slots__ = ("addresses", "routes", "rules")

    def __init__(self) -> None:
        self.addresses: Counter[str] = Counter()
        self.routes: Counter[RouteSpec] = Counter()
        self.rules: Counter[RuleSpec] = Counter()


class Expansion:
    """The kernel routes and rules the held requests of one interface become, counted."""

    __slots__ = ("name", "mark", "mask", "peer", "routes", "rules", "prefixes", "sources", "listed")

    def __init__(self, name: str, if_id: int, mask: int, peer: PeerPolicy, requests: Counter[RouteRequest]) -> None:
        self.name, self.peer = name, peer
        self.mark, self.mask = output_mark(if_id, mask)  # InvalidArgument when the mask was narrowed
        self.routes: Counter[RouteSpec] = Counter()
        self.rules: Counter[RuleSpec] = Counter()
        self.prefixes: Counter[tuple[str, int]] = Counter()  # (dst, table) of the routes
        self.sources: Counter[str] = Counter()  # src of the routes that have one
        self.listed: tuple | SortedItems = ()  # the view's (destination, table, src), one per route
        for request in requests:
            self.add(request, None, listing=False)
        self.listed = sorted_items((r.dst, r.table, r.src or "") for r in self.routes)

    def add(self, request: RouteRequest, delta: Delta | None, *, listing: bool = True) -> None:
        routes, rules = expand(request, self.name, self.mark, self.mask, self.peer)
        for route in routes:
            self.routes[route] += 1
            if self.routes[route] == 1:
                self.prefixes[(route.dst, route.table)] += 1
                if route.src:
                    self.sources[route.src] += 1
                if listing:
                    self.listed = with_item(self.listed, (route.dst, route.table, route.src or ""))
                if delta is not None:
                    delta.routes[route] += 1
        for rule in rules:
            self.rules[rule] += 1
            if self.rules[rule] == 1 and delta is not None:
                delta.rules[rule] += 1

    def remove(self, request: RouteRequest, delta: Delta | None) -> None:
        routes, rules = expand(request, self.name, self.mark, self.mask, self.peer)
        for route in routes:
            self.routes[route] -= 1
            if self.routes[route] <= 0:
                del self.routes[route]
                _drop(self.prefixes, (route.dst, route.table))
                if route.src:
                    _drop(self.sources, route.src)
                self.listed = without_item(self.listed, (route.dst, route.table, route.src or ""))
                if delta is not None:
                    delta.routes[route] -= 1
        for rule in rules:
            self.rules[rule] -= 1
            if self.rules[rule] <= 0:
                del self.rules[rule]
                if delta is not None:
                    delta.rules[rule] -= 1


def _drop(counts: Counter, item: object) -> None:
    counts[item] -= 1
    if counts[item] <= 0:
        del counts[item]


class Holdings:
    """Counts of one interface's owners' addresses and route requests; see the module doc."""

    __slots__ = ("addresses", "requests", "owners", "address_list", "v4", "expansion", "delta")

    def __init__(self, owners: "dict[str, Owner]") -> None:
        self.addresses: Counter[str] = Counter()
        self.requests: Counter[RouteRequest] = Counter()
        for owner in owners.values():
            self.addresses.update(owner.addresses)
            self.requests.update(owner.routes)
        self.owners: tuple | SortedItems = sorted_items(owners)
        self.address_list: tuple | SortedItems = sorted_items(self.addresses)
        self.v4 = sum(":" not in a for a in self.addresses)  # IPv4 addresses held
        self.expansion: Expansion | None = None
        self.delta: Delta | None = None  # recording since a save point

    def expanded(self, name: str, if_id: int, mask: int, peer: PeerPolicy) -> Expansion:
        """The expansion for these settings (built again when they changed)."""
        exp = self.expansion
        if exp is None or exp.mask != mask or exp.peer != peer or exp.name != name:
            exp = self.expansion = Expansion(name, if_id, mask, peer, self.requests)
        return exp

    def replace(self, name: str, old: "Owner | None", new: "Owner | None") -> None:
        """Owner ``name`` was ``old`` and is ``new`` now (None: not attached)."""
        if old is None and new is not None:
            self.owners = with_item(self.owners, name)
        elif new is None and old is not None:
            self.owners = without_item(self.owners, name)
        _count(old.addresses if old else _NONE, new.addresses if new else _NONE, self._address)
        _count(old.routes if old else _NONE, new.routes if new else _NONE, self._request)

    def _address(self, cidr: str, step: int) -> None:
        count = self.addresses[cidr] + step
        if count > 0:
            self.addresses[cidr] = count
        else:
            del self.addresses[cidr]
        if count == (1 if step > 0 else 0):  # held by nobody before, or by nobody now
            self.address_list = (with_item if step > 0 else without_item)(self.address_list, cidr)
            if ":" not in cidr:
                self.v4 += step
            if self.delta is not None:
                self.delta.addresses[cidr] += step

    def _request(self, request: RouteRequest, step: int) -> None:
        count = self.requests[request] + step
        if count > 0:
            self.requests[request] = count
        else:
            del self.requests[request]
        if count == (1 if step > 0 else 0) and self.expansion is not None:
            if step > 0:
                self.expansion.add(request, self.delta)
            else:
                self.expansion.remove(request, self.delta)


def _count(before: frozenset, after: frozenset, step: Callable[[Any, int], None]) -> None:
    """``step`` each item ``after`` lost (-1) or gained (+1) against ``before`` (the same set: none)."""
    if before is not after:
        for item in before - after:
            step(item, -1)
        for item in after - before:
            step(item, +1)
