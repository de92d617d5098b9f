"""The route slot index: which interface holds each (table, prefix, metric) of a namespace.

Two interfaces must not want different routes in one kernel slot (the kernel
keeps one route per table, prefix and metric). The index is kept per
interface as it changes, so checking one interface's new routes against all
the others costs O(its routes), not O(every route of every interface).

It also counts the peer pattern's shared rules (gate, lookup, landing) each
namespace's interfaces want, so a plan of one interface knows whether another
still needs them.
"""

from __future__ import annotations

from collections import Counter

from ..errors import Conflict, InvalidArgument
from ..kernel.objects import RouteSpec, RuleSpec
from .desired import Key
from .desired_state import DesiredState
from .routes_policy import PeerPolicy, effective_metric, is_shared


class RouteSlots:
    """Which interface holds each kernel route slot (table, prefix, metric) of a namespace.

    Kept per interface as it changes, so checking one interface's new routes
    against every other interface's costs O(its routes), not O(all routes).
    ``settings`` (mask, peer table) are fixed per index: rebuild after a reload.
    """

    def __init__(self, mask: int, peer: PeerPolicy) -> None:
        self.mask, self.peer = mask, peer
        self._routes: dict[Key, set[RouteSpec]] = {}
        # slot -> ((key, spec), ...): a tuple, almost always of one holder (a dict
        # per slot cost ~230 bytes per interface at start-up)
        self._slots: dict[tuple, tuple[tuple[Key, RouteSpec], ...]] = {}
        # shared peer rules: per interface (only those with peer routes), and per namespace how many want each
        self._shared: dict[Key, frozenset[RuleSpec]] = {}
        self._shared_count: dict[str | None, Counter[RuleSpec]] = {}

    @classmethod
    def of(cls, state: DesiredState, mask: int, peer: PeerPolicy) -> "RouteSlots":
        index = cls(mask, peer)
        for key in state.interfaces:
            index.update(state, key)
        return index

    def _expanded(self, state: DesiredState, key: Key) -> tuple[frozenset[RouteSpec], frozenset[RuleSpec]]:
        iface = state.get(key)
        if iface is None:
            return frozenset(), frozenset()
        try:
            return iface.kernel_routes(self.mask, self.peer)
        except InvalidArgument:  # an if_id outside a narrowed mask: it has no routes now
            return frozenset(), frozenset()

    def _specs(self, state: DesiredState, key: Key) -> frozenset[RouteSpec]:
        return frozenset(self._expanded(state, key)[0])

    def shared_rules(self, netns: str | None) -> frozenset[RuleSpec]:
        """The shared peer rules some interface of ``netns`` wants."""
        return frozenset(self._shared_count.get(netns, ()))

    def _update_shared(self, key: Key, rules: frozenset[RuleSpec]) -> None:
        shared = frozenset(q for q in rules if is_shared(q))
        before = self._shared.pop(key, frozenset())
        if shared == before:
            if shared:
                self._shared[key] = shared
            return
        count = self._shared_count.setdefault(key[0], Counter())
        count.subtract(before)
        count.update(shared)
        for rule in before - shared:
            if count[rule] <= 0:
                del count[rule]
        if shared:
            self._shared[key] = shared

    def update(self, state: DesiredState, key: Key) -> None:
        """Take in the current routes (and shared peer rules) of ``key``."""
        for spec in self._routes.pop(key, ()):
            slot = _slot(key[0], spec)
            holders = tuple(h for h in self._slots.get(slot, ()) if h[0] != key)
            if holders:
                self._slots[slot] = holders
            else:
                self._slots.pop(slot, None)
        routes, rules = self._expanded(state, key)
        self._update_shared(key, rules)
        specs = frozenset(routes)
        if specs:
            self._routes[key] = set(specs)
            for spec in specs:
                slot = _slot(key[0], spec)
                self._slots[slot] = tuple(h for h in self._slots.get(slot, ()) if h[0] != key) + ((key, spec),)

    def apply(self, key: Key, added: frozenset[RouteSpec], removed: frozenset[RouteSpec]) -> None:
        """Take in a change of ``key``'s routes: O(the change), not O(its routes)."""
        mine = self._routes.get(key)
        for spec in removed:
            if mine is None or spec not in mine:
                continue
            mine.discard(spec)
            slot = _slot(key[0], spec)
            holders = tuple(h for h in self._slots.get(slot, ()) if h != (key, spec))
            if holders:
                self._slots[slot] = holders
            else:
                self._slots.pop(slot, None)
        for spec in added:
            if mine is None:
                mine = self._routes[key] = set()
            if spec in mine:
                continue
            mine.add(spec)
            slot = _slot(key[0], spec)
            self._slots[slot] = self._slots.get(slot, ()) + ((key, spec),)
        if mine is not None and not mine:
            del self._routes[key]

    def check_added(self, key: Key, added: frozenset[RouteSpec]) -> None:
        """Raise Conflict when a route ``key`` gains collides with another route wanted in its slot
        (another interface's, or another of its own)."""
        seen: dict[tuple, RouteSpec] = {}
        for spec in sorted(added, key=_route_order):
            slot = _slot(key[0], spec)
            others = [seen[slot]] if slot in seen else []
            others += [o for k, o in sorted(self._slots.get(slot, ()), key=lambda kv: kv[0][1])]
            for other in others:
                if other != spec:
                    raise _conflict(spec, other)
            seen[slot] = spec

    def check(self, state: DesiredState, key: Key) -> None:
        """Raise Conflict when a route ``key`` wants collides with another wanted route in the kernel."""
        seen: dict[tuple, RouteSpec] = {}
        for spec in sorted(self._specs(state, key), key=_route_order):
            slot = _slot(key[0], spec)
            others = [seen[slot]] if slot in seen else []
            others += [o for k, o in sorted(self._slots.get(slot, ()), key=lambda kv: kv[0][1]) if k != key]
            for other in others:
                if other != spec:
                    raise _conflict(spec, other)
            seen[slot] = spec


def _conflict(spec: RouteSpec, other: RouteSpec) -> Conflict:
    return Conflict(
        f"Route {spec.dst} in table {spec.table} with metric {effective_metric(spec)} "
        f"is already held through {other.dev}" + (f" with source {other.src}" if other.src else "") + "."
    )


def _slot(netns: str | None, spec: RouteSpec) -> tuple:
    return (netns, spec.table, spec.dst, effective_metric(spec))


def _route_order(spec: RouteSpec) -> tuple:
    return (spec.dst, spec.table, spec.src or "", spec.metric or 0)
