"""What one call changed of one interface: the kernel objects it adds and removes, the owners it replaced.

A call changes the desired state after a save point (desired_state.SavePoint); the
transaction then needs to know what that changed in the kernel (to sync, or to
skip the kernel), which route slots to check, and which owners to persist.
Comparing everything the interface puts in the kernel before and after made
every call O(owners). When the interface's owners changed and its own fields
did not, the answer comes from its Holdings instead, which counted each kernel
object gained or lost while the call ran (holdings.Delta): O(the change). A
new or removed interface, or one whose link or own addresses changed, is
compared whole (``whole``), as is one whose routes cannot be counted now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..kernel.objects import RouteSpec, RuleSpec
from .desired import DesiredInterface, Key
from .desired_state import SavePoint
from .plan import rule_key
from .routes_policy import route_key

if TYPE_CHECKING:
    from .state import CoreState

# the fields whose change changes the link or the interface's own addresses
_WHOLE_FIELDS = frozenset({"link", "mtu", "external", "owned", "created_addresses", "static_addresses"})
_WATCHED = tuple(i for i, f in enumerate(DesiredInterface.FIELDS) if f in _WHOLE_FIELDS)


@dataclass(frozen=True)
class Change:
    key: Key
    link: bool  # the link is added, removed or changed
    addresses_added: frozenset[str]
    addresses_removed: frozenset[str]
    routes_added: frozenset[RouteSpec]
    routes_removed: frozenset[RouteSpec]
    rules_added: frozenset[RuleSpec]
    rules_removed: frozenset[RuleSpec]
    owners: frozenset[str]  # the owners the call replaced
    kinds: frozenset[str]  # the kinds of objects ("address", "route", "rule") the interface has or had
    whole: bool  # compared whole (not from the counts)
    link_tag: tuple | None = None  # the link's tag (CoreState.link_tag) when it is added or changed

    @property
    def unchanged(self) -> bool:
        """Nothing in the kernel changes."""
        return not (self.link or self.addresses_added or self.addresses_removed or self.routes_added
                    or self.routes_removed or self.rules_added or self.rules_removed)

    def added(self) -> frozenset[tuple]:
        """What the change adds, as ``CoreState.objects`` tags (the sync's actions for them must succeed)."""
        return frozenset(({self.link_tag} if self.link_tag else set())
                         | {("address", a) for a in self.addresses_added}
                         | {("route", route_key(r)) for r in self.routes_added}
                         | {("rule", rule_key(q)) for q in self.rules_added})


def change_of(state: "CoreState", saved: SavePoint) -> Change:
    """What the change since ``saved`` did to ``saved.key`` (call before closing the save point)."""
    key, before = saved.key, saved.iface
    after = state.desired.get(key)
    owners = frozenset(saved.owners)
    retired = bool(saved.retired) or bool(state.desired.retired.get(key))
    holdings = before.holdings if before is not None else None
    if (before is None or after is not before or holdings is None or holdings.delta is None
            or any(saved.fields[i] != getattr(after, DesiredInterface.FIELDS[i]) for i in _WATCHED)):
        return _whole(state, saved, after, owners, retired)
    delta = holdings.delta
    exp = holdings.expanded(after.name, after.if_id, state.mask, state.peer)
    own = after.created_addresses | after.static_addresses
    addresses = [(a, n) for a, n in delta.addresses.items() if n and a not in own]
    routes = [(r, n) for r, n in delta.routes.items() if n]
    rules = [(q, n) for q, n in delta.rules.items() if n]
    kinds = {kind for kind, held in (("address", holdings.addresses or own or retired),
                                     ("route", exp.routes), ("rule", exp.rules)) if held}
    kinds |= {kind for kind, changed in (("address", addresses), ("route", routes), ("rule", rules)) if changed}
    return Change(
        key, False,
        frozenset(a for a, n in addresses if n > 0), frozenset(a for a, n in addresses if n < 0),
        frozenset(r for r, n in routes if n > 0), frozenset(r for r, n in routes if n < 0),
        frozenset(q for q, n in rules if n > 0), frozenset(q for q, n in rules if n < 0),
        owners, frozenset(kinds), False,
    )


def _whole(state: "CoreState", saved: SavePoint, after: DesiredInterface | None, owners: frozenset[str],
           retired: bool) -> Change:
    old = _objects(state, _as_saved(saved))
    new = _objects(state, after)
    kinds = {"address"} if retired else set()
    for _, addresses, routes, rules in (old, new):
        kinds |= {kind for kind, held in (("address", addresses), ("route", routes), ("rule", rules)) if held}
    return Change(
        saved.key, old[0] != new[0],
        frozenset(new[1] - old[1]), frozenset(old[1] - new[1]),
        new[2] - old[2], old[2] - new[2], new[3] - old[3], old[3] - new[3],
        owners, frozenset(kinds), True, new[0] if new[0] != old[0] else None,
    )


def _as_saved(saved: SavePoint) -> DesiredInterface | None:
    """The interface as it was at the save point (a copy: O(its owners))."""
    if saved.iface is None:
        return None
    twin = saved.iface.copy()
    for name, old in saved.owners.items():
        if old is None:
            twin.owners.pop(name, None)
        else:
            twin.owners[name] = old
    for name, value in zip(DesiredInterface.FIELDS, saved.fields):
        setattr(twin, name, value)
    return twin


def _objects(state: "CoreState", iface: DesiredInterface | None) -> tuple:
    """(link tag, addresses, routes, rules) an interface puts in the kernel (nothing for None)."""
    if iface is None:
        return (None, set(), frozenset(), frozenset())
    routes, rules = iface.kernel_routes(state.mask, state.peer)  # InvalidArgument: a narrowed mask
    return (state.link_tag(iface), iface.addresses(), routes, rules)
