"""Making the kernel match the desired state: for some interfaces of a namespace, or everywhere.

``sync`` serves a call (and the drift watcher's repair of one interface): it
reads only the named interfaces' links and objects, asks ``plan.plan_netns``
for the actions within that scope and runs them with ``apply.apply``. What
the call adds (its ``delta``) must succeed; a failure is raised, and the
transaction restores the previous desired state. ``reconcile_all`` reads every
namespace xfrmid knows and repairs what it can, logging the rest.

A call costs O(its change): it plans only its interfaces plus the few that
share their mark (peer rules are keyed by mark, not by device).

Two shortcuts spare a call the kernel read: ``vouched`` (the kernel holds the
interface as desired, as far as the drift guard can tell) and
``create_unread`` (a fresh interface whose name the kernel just reported free).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from ..errors import Conflict, NotFound, XfrmidError
from ..kernel.objects import AddressSpec, RouteSpec
from .apply import apply, log_done, run_action, snapshot
from .changes import Change
from .desired import DesiredInterface, Key
from .guard import DriftGuard
from .plan import Action, KernelView, Scope, link_differs, plan_netns, rule_key, settle_retired, summarise
from .publish import Publisher
from .routes_policy import route_key
from .seen import KernelSeen
from .state import CoreState
from .store import StateStore

if TYPE_CHECKING:
    from ..kernel.backend import KernelBackend

log = logging.getLogger("xfrmid.core")

# Removing an address can make the kernel drop routes through the interface
# (all IPv4 routes when the last IPv4 address goes, routes using it as source):
# after such a pass, plan again so the routes still owed come back.
MAX_PASSES = 3
# Up to this many interfaces, a sync reads each link with a get; beyond, one dump
# of the namespace's xfrm links costs less.
LINK_GETS_MAX = 3

ALL_PARTS = frozenset({"address", "route", "rule"})
EMPTY_VIEW = KernelView(links={}, addresses={}, routes=frozenset(), rules=frozenset())
_LINK_OPS = ("create_link", "recreate_link", "change_link")
_CREATE_OPS = frozenset({"create_link", "add_address", "add_route", "add_rule"})


def _tag(action: Action) -> tuple | None:
    """The tag (as ``CoreState.objects`` makes them) of what an action adds."""
    if action.op == "add_address":
        return ("address", action.address.cidr)
    if action.op == "add_route":
        return ("route", route_key(action.route))
    if action.op == "add_rule":
        return ("rule", rule_key(action.rule))
    return None


def _route_order(spec: RouteSpec) -> tuple:
    return (spec.dst, spec.table, spec.src or "", spec.metric or 0)


def _holds_ipv4(iface: DesiredInterface) -> bool:
    """Whether the interface keeps an IPv4 address (its last one takes the IPv4 routes with it)."""
    holdings = iface.holdings
    return ((holdings is not None and holdings.v4 > 0)
            or any(":" not in a for a in iface.created_addresses | iface.static_addresses))


def _sentence(detail: str) -> str:
    return detail[:1].upper() + detail[1:] + "."


class Reconciler:
    def __init__(self, kernel: "KernelBackend", state: CoreState, store: StateStore, seen: KernelSeen,
                 publisher: Publisher, guard: DriftGuard) -> None:
        self._kernel = kernel
        self._state = state
        self._store = store
        self._seen = seen
        self._publisher = publisher
        self._guard = guard

    # --- the shortcuts of a call ---------------------------------------------------

    # A change that adds and removes nothing in the kernel (another owner's Attach, the
    # Detach of one of several owners whose objects all stay) needs no kernel work when
    # the kernel is known to hold the interface as desired. Known means: the last sync
    # left nothing undone (``KernelSeen.is_unsure``), the link it saw is the desired
    # one, and the drift guard, subscribed to the namespace since before that read,
    # holds no unjudged event that may concern it (``Watcher.vouches``). Any drift since
    # then was or will be seen by the watcher, which repairs it within about a second of
    # the event (after the call releases the interface). A kernel read now would only
    # narrow that race, not close it: the link can go the moment after the read just
    # as well. Without a watcher (the core alone), the call reads the kernel.

    def vouched(self, key: Key, retiring: frozenset[str] = frozenset()) -> bool:
        """The kernel holds ``key`` as desired, as far as the drift guard can tell; ``retiring``:
        addresses the change at hand lets go of (retired, and not yet removed)."""
        desired = self._state.desired
        iface = desired.get(key)
        state = self._seen.link(key)
        if iface is None or state is None or self._seen.is_unsure(key) or not desired.retired.get(key, set()) <= retiring:
            return False
        spec = iface.link_spec(self._state.settings.default_mtu)
        if (state.owned != iface.owned or link_differs(spec, state) is not None
                or (spec.up and not state.up) or (iface.owned and spec.mtu is not None and spec.mtu != state.mtu)):
            return False
        return self._guard.vouches(key, state.ifindex, self._seen.seen_at(key))

    async def create_unread(self, key: Key, after: frozenset[tuple]) -> bool:
        """Create a fresh interface without reading the kernel first; False: use ``sync``.

        Only for a name the kernel reported free just before: the view is then empty,
        so the plan creates the link and adds its objects (``after``). The create itself
        explains a name taken meanwhile (EEXIST): a foreign identical link is returned
        unowned and anything else raises; both go to the full path (``sync``), which
        reads the kernel and adopts or raises Conflict exactly as without this shortcut.
        """
        netns, name = key
        desired = self._state.desired
        iface = desired.get(key)
        if iface is None or not iface.owned or desired.retired.get(key) or len(desired.with_if_id(netns, iface.if_id)) != 1:
            return False  # retired addresses to remove, or peer rules another interface may hold
        scope = Scope(frozenset({name}), frozenset({iface.if_id}))
        actions = plan_netns(self._state.plan_input(netns, EMPTY_VIEW, scope))
        if not actions or actions[0].op != "create_link" or any(a.op not in _CREATE_OPS for a in actions):
            return False
        self._seen.doubt([key])  # until remembered below
        try:
            state = await run_action(self._kernel, actions[0])
        except XfrmidError:
            return False  # e.g. the name is taken after all: the full path reads and explains
        if state is None or not state.owned:
            return False  # a foreign identical link came meanwhile: the full path adopts it
        log_done(actions[0])

        def strict(action: Action) -> bool:
            return _tag(action) in after

        result = await apply(self._kernel, actions[1:], strict=strict)
        result.done.insert(0, actions[0])
        result.links[state.name] = state
        self._seen.remember(netns, {name}, EMPTY_VIEW, result, desired)
        return True

    async def apply_change(self, change: Change) -> bool:
        """Make ``change`` in the kernel without reading it first: O(the change); False: use ``sync``.

        Only when the kernel holds the interface as desired apart from the change, as far
        as the drift guard can tell (``vouched``), the link stays as it is, and no rule
        changes (the peer pattern's rules are keyed by mark). Not when an address goes
        that takes routes with it: the kernel drops the IPv4 routes through a link with
        its last IPv4 address, and the routes that use an address as their source,
        without a word (``sync`` puts them back in its second pass).
        """
        key = change.key
        netns, name = key
        desired = self._state.desired
        iface = desired.get(key)
        if (iface is None or iface.holdings is None or change.link or change.rules_added
                or change.rules_removed or not self.vouched(key, change.addresses_removed)):
            return False
        expansion = iface.holdings.expanded(name, iface.if_id, self._state.mask, self._state.peer)
        retired = desired.retired.get(key, set())
        going = sorted(change.addresses_removed & retired)
        for cidr in going:
            ip = cidr.split("/", 1)[0]
            if ip in expansion.sources or (":" not in ip and not _holds_ipv4(iface)):
                return False
        # the link as the drift guard vouches for it: its index spares each route request a get
        seen = self._seen.link(key)
        ifindex = seen.ifindex if seen is not None else None
        actions = [Action("remove_route", netns, name, "removed", f"removed route {r.dst} via {name} (table {r.table})",
                          route=r, sole=(r.dst, r.table) not in expansion.prefixes, ifindex=ifindex)
                   for r in sorted(change.routes_removed, key=_route_order)]
        actions += [Action("remove_address", netns, name, "removed", f"removed address {a} from {name}",
                           address=AddressSpec(ifname=name, cidr=a)) for a in going]
        actions += [Action("add_address", netns, name, "repaired", f"added address {a} to {name}",
                           address=AddressSpec(ifname=name, cidr=a)) for a in sorted(change.addresses_added)]
        actions += [Action("add_route", netns, name, "repaired", f"added route {r.dst} via {name} (table {r.table})",
                           route=r, ifindex=ifindex) for r in sorted(change.routes_added, key=_route_order)]
        self._seen.doubt([key])  # until the actions are done
        result = await apply(self._kernel, actions, strict=lambda a: a.op in ("add_address", "add_route"))
        if result.failed:
            return True  # left unsure: the next call on it reads the kernel
        self._seen.settle(key)
        if going:
            retired.difference_update(going)
            if not retired:
                desired.retired.pop(key, None)
            await self._persist({key})
        return True

    # --- some interfaces of one namespace ------------------------------------------

    async def sync(
        self,
        netns: str | None,
        names: frozenset[str],
        marks: frozenset[int] = frozenset(),
        *,
        delta: frozenset[tuple] | None = None,
        parts: frozenset[str] = ALL_PARTS,
        released: dict[str, str] | None = None,
    ) -> list[Action]:
        """Make the kernel match the desired state for ``names`` of ``netns``: one read, one
        plan; the actions done.

        ``marks``: the interfaces' marks before the change (their peer rules may have to
        go). ``delta``: what the calling change added; actions for it must succeed
        (raise), the rest is best effort. None: all best effort (a repair). ``parts``:
        which kinds of objects (address, route, rule) the interfaces have or had; the
        others are not read. ``released``: interfaces let go of on purpose, with why.
        """
        desired = self._state.desired
        kernel = self._kernel
        keys = [(netns, name) for name in sorted(names)]
        scope = Scope(names, frozenset(marks | {i.if_id for k in keys if (i := desired.get(k)) is not None}))
        must = bool(delta)

        def strict(action: Action) -> bool:
            return must and (action.op in _LINK_OPS or _tag(action) in delta)

        done: list[Action] = []
        self._seen.doubt(keys)
        # An owned link that leaves the desired state is deleted, and the kernel drops its
        # addresses and routes with it: reading them first would be wasted (rules stay).
        goes = all(k not in desired.interfaces for k in keys)
        whole = len(names) > LINK_GETS_MAX
        for _ in range(MAX_PASSES):
            try:
                # only these interfaces' links and objects: the cost does not grow with the namespace
                view = await snapshot(kernel, netns, set(names), parts & {"rule"} if goes else parts, whole=whole)
                if goes and parts - {"rule"} and any(not view.links[n].owned for n in names if n in view.links):
                    # not ours after all: it stays, and what xfrmid put on it must go
                    view = await snapshot(kernel, netns, set(names), parts, whole=whole)
            except XfrmidError as exc:
                if must:
                    raise
                log.warning("could not sync %s: %s", ", ".join(sorted(names)), exc)
                return done
            actions = plan_netns(self._state.plan_input(netns, view, scope, released))
            dirty = self._decide(netns, actions, strict=must)
            result = await apply(kernel, actions, strict=strict)
            self._seen.remember(netns, set(names), view, result, desired)
            done += result.done + [a for a in actions if a.op == "adopt"]
            if not result.failed:
                dirty |= settle_retired(desired.retired, netns, names, actions)
            if dirty:
                await self._persist(dirty)
            if not result.removed_addresses:
                break
        return done

    async def reconcile_one(self, key: Key) -> dict[str, int]:
        """Repair one interface (the drift watcher's cheap repair); counts as ``summarise``."""
        seen = {key[1]} if self._seen.link(key) is not None else set()
        done = await self.sync(key[0], frozenset({key[1]}))
        self._report_repairs(key[0], done, seen)
        self._publisher.publish(key)
        return summarise(done)

    # --- everything ----------------------------------------------------------------

    async def reconcile_all(self, released: dict[Key, str] | None = None) -> dict[str, int]:
        """Full reconcile of every namespace xfrmid knows; counts created/repaired/adopted/removed.

        ``released``: interfaces let go of on purpose just before (a reload), with the
        reason, so their deletion is not logged as a crash's leftover.
        """
        desired = self._state.desired
        kernel = self._kernel
        totals: Counter[str] = Counter({"created": 0, "repaired": 0, "adopted": 0, "removed": 0})
        dirty: set[Key] = set()
        self._state.reindex()  # the settings (mask, peer table) may have changed
        namespaces = set(desired.namespaces) | {i.netns for i in desired.interfaces.values()}
        for netns in sorted(namespaces, key=lambda n: n or ""):
            names = {i.name for i in desired.in_netns(netns)} | {k[1] for k in desired.retired if k[0] == netns}
            try:
                view = await snapshot(kernel, netns, names)
            except NotFound as exc:
                log.warning("reconcile skipped a namespace: %s", exc)
                if netns is not None and not desired.has_netns(netns):
                    desired.namespaces.discard(netns)
                continue
            except XfrmidError as exc:
                log.warning("reconcile could not read the kernel: %s", exc)
                continue
            why = {k[1]: v for k, v in (released or {}).items() if k[0] == netns}
            actions = plan_netns(self._state.plan_input(netns, view, None, why))
            dirty |= self._decide(netns, actions, strict=False)
            seen = self._seen.names_in(netns)
            result = await apply(kernel, actions, strict=False)
            self._seen.remember(netns, set(view.links) | names, view, result, desired)
            done = result.done + [a for a in actions if a.op == "adopt"]
            totals.update(summarise(done))
            failed = {a.ifname for a, _ in result.failed}
            passes = 1
            while result.removed_addresses and passes < MAX_PASSES:
                passes += 1
                view = await snapshot(kernel, netns, names)
                result = await apply(kernel, plan_netns(self._state.plan_input(netns, view, None)), strict=False)
                self._seen.remember(netns, set(view.links) | names, view, result, desired)
                failed |= {a.ifname for a, _ in result.failed}
            settled = {k[1] for k in desired.retired if k[0] == netns and k[1] not in failed}
            dirty |= settle_retired(desired.retired, netns, settled, actions)
            if netns is not None and not desired.has_netns(netns) and not failed:
                desired.namespaces.discard(netns)
            self._report_repairs(netns, done, seen)
            # the namespace's dumps and plan (kilobytes per interface) freed before the
            # views are built, which then reuse that memory (RSS at start-up)
            del view, actions, result, done
        # The store compares the namespaces itself; only changed interfaces are written.
        await self._persist(dirty)
        self._publisher.publish_all()
        if any(totals.values()):
            log.info("reconcile: %s", ", ".join(f"{v} {k}" for k, v in totals.items()))
        return dict(totals)

    # --- helpers -----------------------------------------------------------------------

    async def _persist(self, keys: set[Key]) -> None:
        """Write what a sync decided of ``keys`` (retired addresses, adoptions): never their owners."""
        await self._store.commit(self._state.desired, keys, owners={key: () for key in keys})

    def _decide(self, netns: str | None, actions: list[Action], strict: bool) -> set[Key]:
        """Apply adopt decisions to the desired state; raise or log conflicts. The keys changed."""
        dirty: set[Key] = set()
        for action in actions:
            if action.op == "conflict":
                if strict:
                    raise Conflict(_sentence(action.detail))
                log.warning("cannot reconcile: %s", action.detail)
            elif action.op == "adopt":
                iface = self._state.desired.get((netns, action.ifname))
                if iface is not None and iface.owned != action.owned:
                    iface.owned = bool(action.owned)
                    dirty.add((netns, action.ifname))
                    log.info("%s%s", action.detail, f" in namespace {netns}" if netns else "")
        return dirty

    def _report_repairs(self, netns: str | None, done: list[Action], seen: set[str]) -> None:
        """Repaired signals: for what was repaired, and links recreated after being ``seen``
        (an interface reconcile creates for the first time, e.g. a new configured one, was
        not repaired: it is announced as added)."""
        by_name: dict[str, list[str]] = {}
        for action in done:
            if action.category == "created" and action.ifname not in seen:
                continue
            if action.category in ("repaired", "created") and action.ifname:
                by_name.setdefault(action.ifname, []).append(action.detail)
        for name, details in by_name.items():
            self._publisher.repaired((netns, name), "; ".join(details))
