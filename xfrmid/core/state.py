"""The promises in force: the settings, the desired state, and what follows from both.

``CoreState`` is the one place the core's parts read the current settings and
desired state from. The manager replaces them (``settings`` on a reload,
``desired`` when the start loads the state file or a reload is undone); the
manager's calls and the reconciler change ``desired`` in place. What the two
together imply lives here too: the route slot index that refuses two routes in
one kernel slot, the comparable tags of what an interface puts in the kernel,
and the input of a plan.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ..settings import Settings
from .desired import DesiredInterface, Key
from .desired_state import DesiredState, SavePoint
from .plan import PlanInput, Scope, rule_key
from .route_slots import RouteSlots
from .routes_policy import PeerPolicy, route_key

if TYPE_CHECKING:
    from .changes import Change
    from .plan import KernelView


@lru_cache(maxsize=4)
def _peer_policy(table: int, priority: int) -> PeerPolicy:
    # one object per setting: asked several times per call, and kernel_routes' cache
    # compares it (identity first)
    return PeerPolicy(table=table, priority=priority)


def peer_policy(settings: Settings) -> PeerPolicy:
    """Where the settings put the peer pattern (its table and rule priority)."""
    return _peer_policy(settings.peer_table, settings.peer_rule_priority)


class CoreState:
    def __init__(self, settings: Settings, desired: DesiredState | None = None) -> None:
        self.settings = settings
        self.desired = desired if desired is not None else DesiredState()
        self._slots: RouteSlots | None = None  # built on first use, rebuilt by reindex()

    def reset(self, desired: DesiredState) -> None:
        """Put ``desired`` in force (loaded at start, or restored after a failed reload)."""
        self.desired = desired
        self._slots = None

    @property
    def mask(self) -> int:
        return self.settings.name_policy.mark_mask

    @property
    def peer(self) -> PeerPolicy:
        return peer_policy(self.settings)

    # --- route slots ---------------------------------------------------------

    @property
    def slots(self) -> RouteSlots:
        if self._slots is None:
            self._slots = RouteSlots.of(self.desired, self.mask, self.peer)
        return self._slots

    def reindex(self) -> None:
        """Index the route slots afresh (the settings' mask or peer table may have changed)."""
        self._slots = RouteSlots.of(self.desired, self.mask, self.peer)

    def routes_changed(self, key: Key) -> None:
        """Take the current routes of ``key`` into the slot index."""
        self.slots.update(self.desired, key)

    def check_routes(self, key: Key) -> None:
        """Conflict when a route ``key`` now wants collides with another interface's (or its own)."""
        self.slots.check(self.desired, key)

    def take_change(self, change: "Change") -> None:
        """Take a call's change into the slot index: Conflict (index unchanged) when a route it
        adds collides with another wanted route; O(the change) unless its rules changed."""
        if change.routes_added:
            self.slots.check_added(change.key, change.routes_added)
        if change.rules_added or change.rules_removed or change.whole:
            self.slots.update(self.desired, change.key)
        elif change.routes_added or change.routes_removed:
            self.slots.apply(change.key, change.routes_added, change.routes_removed)

    # --- a call's save points --------------------------------------------------

    def savepoint(self, key: Key) -> SavePoint:
        """The desired state's save point of ``key``, counting the kernel objects its owners gain
        and lose (``changes.change_of``); close it with ``desired.restore`` or ``desired.release``."""
        saved = self.desired.savepoint(key, count=True)
        iface = saved.iface
        if iface is not None and iface.holdings is not None:
            try:
                iface.holdings.expanded(iface.name, iface.if_id, self.mask, self.peer)
            except InvalidArgument:  # an if_id outside a narrowed mask: compared whole
                iface.holdings.delta = None
        return saved

    # --- what the desired state puts in the kernel -----------------------------------

    def objects(self, key: Key) -> frozenset[tuple]:
        """What the desired state of ``key`` puts in the kernel, as comparable tags."""
        iface = self.desired.get(key)
        if iface is None:
            return frozenset()
        routes, rules = iface.kernel_routes(self.mask, self.peer)
        return frozenset(
            {self.link_tag(iface)}
            | {("address", a) for a in iface.addresses()}
            | {("route", route_key(r)) for r in routes}
            | {("rule", rule_key(q)) for q in rules}
        )

    def link_tag(self, iface: DesiredInterface) -> tuple:
        """The link's fields as link_spec() takes them, comparable."""
        mtu = iface.mtu if iface.mtu is not None else self.settings.default_mtu
        return ("link", iface.name, iface.if_id, iface.link, mtu, iface.external, iface.owned)

    def plan_input(self, netns: str | None, view: "KernelView", scope: Scope | None,
                   released: dict[str, str] | None = None) -> PlanInput:
        """What ``plan_netns`` needs for ``netns``: every interface there, or (with ``scope``)
        the scoped ones plus those sharing one of its marks (their peer rules look alike)."""
        desired = self.desired
        if scope is None:
            ifaces = desired.in_netns(netns)
            retired = {k[1]: set(v) for k, v in desired.retired.items() if k[0] == netns}
        else:
            # rules have no device: the kernel cannot tell one interface's from another's
            chosen: dict[str, DesiredInterface] = {}
            for name in sorted(scope.names):
                iface = desired.get((netns, name))
                if iface is not None:
                    chosen[name] = iface
            for mark in sorted(scope.marks):
                for iface in desired.with_if_id(netns, mark):
                    chosen.setdefault(iface.name, iface)
            ifaces = list(chosen.values())
            retired = {n: set(desired.retired[(netns, n)]) for n in scope.names if (netns, n) in desired.retired}
        return PlanInput(
            netns=netns,
            desired=ifaces,
            view=view,
            mask=self.mask,
            peer=self.peer,
            default_mtu=self.settings.default_mtu,
            retired=retired,
            scope=scope,
            released=released or {},
            shared=None if scope is None else self.slots.shared_rules(netns),
        )
