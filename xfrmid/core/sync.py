"""Making the kernel match the desired state: per call (one interface, strict) or in full (reconcile).

Both paths dump the kernel, ask plan.plan_netns for the actions and run them
with apply.apply. A call's sync is strict: the first kernel error aborts and
goes back to the caller, after the manager restored the previous desired
state. A reconcile repairs what it can and logs the rest.

A call costs O(its change): it persists only its interface (the store's
journal), plans only its interface plus the few that share its mark (peer
rules are keyed by mark, not by device), and checks route slots against an
index kept per interface (``RouteSlots``), not by expanding every route.

Two shortcuts skip the kernel read of a call (see ``_vouched`` and ``_create``):
a change that adds and removes nothing in the kernel, on an interface the drift
watcher vouches for, does no kernel work at all; a fresh interface whose name
the kernel just reported free is created without a read before.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import Conflict, NotFound, XfrmidError
from ..kernel.objects import LinkState
from .apply import FEW, ApplyResult, apply, log_done, run_action, snapshot
from .desired import DesiredInterface, Key
from .info import peer_policy
from .plan import Action, KernelView, PlanInput, Scope, link_differs, plan_netns, rule_key, summarise
from .route_slots import RouteSlots
from .routes_policy import PeerPolicy, route_key

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger("xfrmid.core")

# Removing an address can make the kernel drop routes through the interface
# (all IPv4 routes when the last IPv4 address goes, routes using it as source):
# after such a pass, plan again so the routes still owed come back.
MAX_PASSES = 3


@dataclass
class SavePoint:
    key: Key
    iface: DesiredInterface | None
    retired: set[str] | None
    marks: frozenset[int]


_LINK_OPS = ("create_link", "recreate_link", "change_link")
ALL_PARTS = frozenset({"address", "route", "rule"})
EMPTY_VIEW = KernelView(links={}, addresses={}, routes=frozenset(), rules=frozenset())
_CREATE_OPS = frozenset({"create_link", "add_address", "add_route", "add_rule"})


def _tag(action: Action) -> tuple | None:
    if action.op == "add_address":
        return ("address", action.address.cidr)
    if action.op == "add_route":
        return ("route", route_key(action.route))
    if action.op == "add_rule":
        return ("rule", rule_key(action.rule))
    return None


def _sentence(detail: str) -> str:
    return detail[:1].upper() + detail[1:] + "."


class Syncer:
    def __init__(self, manager: "Manager") -> None:
        self.m = manager
        self.links: dict[Key, LinkState] = {}  # last kernel state seen per desired interface
        self.seen_at: dict[Key, float] = {}  # when (loop time) ``links`` was read or set for it
        self.unsure: set[Key] = set()  # the last sync of these left something undone
        self.absent: set[Key] = set()  # names a get just found free (new_interface), for _create
        self.shortcuts: Counter[str] = Counter()  # "unchanged", "created": calls that took a shortcut
        self._slots: RouteSlots | None = None  # built on first use, rebuilt by every full reconcile

    @property
    def peer(self) -> PeerPolicy:
        return peer_policy(self.m.settings)

    @property
    def slots(self) -> RouteSlots:
        if self._slots is None:
            self._slots = RouteSlots.of(self.m.desired, self.m.settings.name_policy.mark_mask, self.peer)
        return self._slots

    def check_routes(self, key: Key) -> None:
        """Conflict when a route ``key`` now wants collides with another interface's (or its own)."""
        self.slots.check(self.m.desired, key)

    def _input(self, netns: str | None, view: KernelView, scope: Scope | None,
               released: dict[str, str] | None = None) -> PlanInput:
        desired = self.m.desired
        if scope is None:
            ifaces = desired.in_netns(netns)
            retired = {k[1]: set(v) for k, v in desired.retired.items() if k[0] == netns}
        else:
            # The scoped interfaces, plus those sharing one of the marks: their peer
            # rules look like the scoped ones' to the kernel (rules have no device).
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
            mask=self.m.settings.name_policy.mark_mask,
            peer=self.peer,
            default_mtu=self.m.settings.default_mtu,
            retired=retired,
            scope=scope,
            released=released or {},
        )

    # --- one call --------------------------------------------------------------

    def objects(self, key: Key) -> frozenset[tuple]:
        """What the desired state of ``key`` puts in the kernel, as comparable tags."""
        iface = self.m.desired.get(key)
        if iface is None:
            return frozenset()
        settings = self.m.settings
        routes, rules = iface.kernel_routes(settings.name_policy.mark_mask, self.peer)
        mtu = iface.mtu if iface.mtu is not None else settings.default_mtu
        # the link's fields as link_spec() takes them (a plain tuple: built twice per call)
        return frozenset(
            {("link", iface.name, iface.if_id, iface.link, mtu, iface.external, iface.owned)}
            | {("address", a) for a in iface.addresses()}
            | {("route", route_key(r)) for r in routes}
            | {("rule", rule_key(q)) for q in rules}
        )

    async def change(self, key: Key, mutate: Callable[[], object], *, why: str | None = None) -> None:
        """Apply ``mutate`` to the desired state, persist, sync the kernel; undo all on failure.

        Only what the change adds must succeed in the kernel (its ``delta``): a Detach
        always goes through, and an AddAddress is not failed because another owner's
        route cannot be repaired just now (reconcile keeps trying those). ``why``: the
        reason the interface goes, when the change removes it (for the log).
        """
        desired = self.m.desired
        free = key not in desired.interfaces and key in self.absent
        self.absent.discard(key)
        saved = self.savepoint(key)
        before = self.objects(key)
        parts = ALL_PARTS
        try:
            mutate()
            self.slots.update(desired, key)
            after = self.objects(key)
            # Only dump what this interface has or had: a plain Attach reads links only.
            parts = frozenset(tag[0] for tag in before | after) | (
                {"address"} if desired.retired.get(key) else set()
            )
            await self.m.persist({key})
            released = {key[1]: why} if why and key not in desired.interfaces else None
            if before == after and self._vouched(key):
                self.shortcuts["unchanged"] += 1
            elif not (free and await self._create(key, after)):
                await self.sync(key, saved.marks, delta=after - before, parts=parts, released=released)
        except XfrmidError:
            self.restore(saved)
            self.slots.update(desired, key)
            try:
                await self.m.persist({key})
                await self.sync(key, saved.marks, delta=frozenset(), parts=parts)
            except XfrmidError as exc:
                log.warning("could not undo a failed change of %s: %s", key[1], exc)
            self.m.publish(key)
            raise
        self.m.publish(key)

    # A change that adds and removes nothing in the kernel (another owner's Attach, the
    # Detach of one of several owners whose objects all stay) needs no kernel work when
    # the kernel is known to hold the interface as desired. Known means: the last sync
    # left nothing undone (``unsure``), the link it saw (``links``) is the desired one,
    # and the drift watcher, subscribed to the namespace since before that read, holds
    # no unjudged event that may concern it (``Watcher.vouches``). Any drift since then
    # was or will be seen by the watcher, which repairs it within about a second of the
    # event (after this call releases the interface). A kernel read now would only
    # narrow that race, not close it: the link can go the moment after the read just
    # as well. Without a watcher (the core alone), the call reads the kernel as before.

    def _vouched(self, key: Key) -> bool:
        """The kernel holds ``key`` as desired, as far as a running drift watcher can tell."""
        iface = self.m.desired.get(key)
        state = self.links.get(key)
        if iface is None or state is None or key in self.unsure or self.m.desired.retired.get(key):
            return False
        spec = iface.link_spec(self.m.settings.default_mtu)
        if (state.owned != iface.owned or link_differs(spec, state) is not None
                or (spec.up and not state.up) or (iface.owned and spec.mtu is not None and spec.mtu != state.mtu)):
            return False
        since = self.seen_at.get(key)
        for listener in self.m._listeners:
            vouches = getattr(listener, "vouches", None)
            if vouches is not None and vouches(key, state.ifindex, since):
                return True
        return False

    async def _create(self, key: Key, after: frozenset[tuple]) -> bool:
        """Create a fresh interface without reading the kernel first; False: use ``sync``.

        Only for a name the kernel reported free just before (``absent``): the view is
        then empty, so the plan creates the link and adds its objects. The create itself
        explains a name taken meanwhile (EEXIST): a foreign identical link is returned
        unowned and anything else raises; both go to the full path (``sync``), which
        reads the kernel and adopts or raises Conflict exactly as without this shortcut.
        """
        netns, name = key
        desired = self.m.desired
        iface = desired.get(key)
        if iface is None or not iface.owned or desired.retired.get(key) or len(desired.with_if_id(netns, iface.if_id)) != 1:
            return False  # retired addresses to remove, or peer rules another interface may hold
        scope = Scope(frozenset({name}), frozenset({iface.if_id}))
        actions = plan_netns(self._input(netns, EMPTY_VIEW, scope))
        if not actions or actions[0].op != "create_link" or any(a.op not in _CREATE_OPS for a in actions):
            return False
        self.unsure.add(key)  # until remembered below
        try:
            state = await run_action(self.m.kernel, actions[0])
        except XfrmidError:
            return False  # e.g. the name is taken after all: the full path reads and explains
        if state is None or not state.owned:
            return False  # a foreign identical link came meanwhile: the full path adopts it
        log_done(actions[0])

        def strict(action: Action) -> bool:
            return _tag(action) in after

        result = await apply(self.m.kernel, actions[1:], strict=strict)
        result.done.insert(0, actions[0])
        result.links[state.name] = state
        self._remember(netns, {name}, EMPTY_VIEW, result)
        self.shortcuts["created"] += 1
        return True

    def savepoint(self, key: Key) -> SavePoint:
        """What ``restore`` needs to undo a change of ``key``."""
        desired = self.m.desired
        current = desired.get(key)
        retired = desired.retired.get(key)
        return SavePoint(
            key=key,
            iface=None if current is None else current.copy(),
            retired=None if retired is None else set(retired),
            marks=frozenset({current.if_id} if current else ()),
        )

    def restore(self, saved: SavePoint) -> None:
        desired = self.m.desired
        desired.remove(saved.key)
        if saved.iface is not None:
            desired.put(saved.iface)
        if saved.retired is None:
            desired.retired.pop(saved.key, None)
        else:
            desired.retired[saved.key] = saved.retired

    async def sync(
        self,
        key: Key,
        marks: frozenset[int] = frozenset(),
        *,
        delta: frozenset[tuple] | None = None,
        parts: frozenset[str] = ALL_PARTS,
        released: dict[str, str] | None = None,
    ) -> list[Action]:
        """Make the kernel match the desired state for one interface; the actions done.

        ``delta``: what the calling change added; actions for it must succeed (raise),
        the rest is best effort. None: all best effort (reconcile). ``parts``: which
        kinds of objects (address, route, rule) the interface has or had; the others
        are not read.
        """
        return await self.sync_names(key[0], frozenset({key[1]}), marks, delta=delta, parts=parts, released=released)

    async def sync_names(
        self,
        netns: str | None,
        names: frozenset[str],
        marks: frozenset[int] = frozenset(),
        *,
        delta: frozenset[tuple] | None = None,
        parts: frozenset[str] = ALL_PARTS,
        released: dict[str, str] | None = None,
    ) -> list[Action]:
        """``sync`` for some interfaces of one namespace at once: one read, one plan."""
        desired = self.m.desired
        keys = [(netns, name) for name in sorted(names)]
        scope = Scope(names, frozenset(marks | {i.if_id for k in keys if (i := desired.get(k)) is not None}))
        must = bool(delta)

        def strict(action: Action) -> bool:
            return must and (action.op in _LINK_OPS or _tag(action) in delta)

        done: list[Action] = []
        self.unsure.update(keys)  # until a pass is remembered: an error leaves them unsure
        # An owned link that leaves the desired state is deleted, and the kernel drops its
        # addresses and routes with it: reading them first would be wasted (rules stay).
        goes = all(k not in desired.interfaces for k in keys)
        whole = len(names) > FEW  # one dump of the xfrm links beats a get each
        for _ in range(MAX_PASSES):
            try:
                # only these interfaces' links and objects: the cost does not grow with the namespace
                view = await snapshot(self.m.kernel, netns, set(names), parts & {"rule"} if goes else parts,
                                      whole=whole)
                if goes and parts - {"rule"} and any(not view.links[n].owned for n in names if n in view.links):
                    # not ours after all: it stays, and what xfrmid put on it must go
                    view = await snapshot(self.m.kernel, netns, set(names), parts, whole=whole)
            except XfrmidError as exc:
                if must:
                    raise
                log.warning("could not sync %s: %s", ", ".join(sorted(names)), exc)
                return done
            actions = plan_netns(self._input(netns, view, scope, released))
            dirty = self._decide(netns, actions, strict=must)
            result = await apply(self.m.kernel, actions, strict=strict)
            self._remember(netns, set(names), view, result)
            done += result.done + [a for a in actions if a.op == "adopt"]
            if not result.failed:
                dirty |= {k for k in keys if desired.retired.pop(k, None)}
            if dirty:
                await self.m.persist(dirty)
            if not result.removed_addresses:
                break
        return done

    async def reconcile_one(self, key: Key) -> dict[str, int]:
        seen = {key[1]} if key in self.links else set()
        done = await self.sync(key)
        self._report_repairs(key[0], done, seen)
        self.m.publish(key)
        return summarise(done)

    # --- everything ----------------------------------------------------------------

    async def reconcile_all(self, released: dict[Key, str] | None = None) -> dict[str, int]:
        """Full reconcile of every namespace xfrmid knows; counts created/repaired/adopted/removed.

        ``released``: interfaces let go of on purpose just before (a reload), with the
        reason, so their deletion is not logged as a crash's leftover.
        """
        desired = self.m.desired
        totals: Counter[str] = Counter({"created": 0, "repaired": 0, "adopted": 0, "removed": 0})
        dirty: set[Key] = set()
        # Settings (mask, peer table) may have changed: index the route slots afresh.
        self._slots = RouteSlots.of(desired, self.m.settings.name_policy.mark_mask, self.peer)
        namespaces = set(desired.namespaces) | {i.netns for i in desired.interfaces.values()}
        for netns in sorted(namespaces, key=lambda n: n or ""):
            names = {i.name for i in desired.in_netns(netns)} | {k[1] for k in desired.retired if k[0] == netns}
            try:
                view = await snapshot(self.m.kernel, netns, names)
            except NotFound as exc:
                log.warning("reconcile skipped a namespace: %s", exc)
                if netns is not None and not desired.has_netns(netns):
                    desired.namespaces.discard(netns)
                continue
            except XfrmidError as exc:
                log.warning("reconcile could not read the kernel: %s", exc)
                continue
            why = {k[1]: v for k, v in (released or {}).items() if k[0] == netns}
            actions = plan_netns(self._input(netns, view, None, why))
            dirty |= self._decide(netns, actions, strict=False)
            seen = {k[1] for k in self.links if k[0] == netns}
            result = await apply(self.m.kernel, actions, strict=False)
            self._remember(netns, set(view.links) | names, view, result)
            done = result.done + [a for a in actions if a.op == "adopt"]
            totals.update(summarise(done))
            failed = {a.ifname for a, _ in result.failed}
            passes = 1
            while result.removed_addresses and passes < MAX_PASSES:
                passes += 1
                view = await snapshot(self.m.kernel, netns, names)
                result = await apply(self.m.kernel, plan_netns(self._input(netns, view, None)), strict=False)
                self._remember(netns, set(view.links) | names, view, result)
                failed |= {a.ifname for a, _ in result.failed}
            for key in [k for k in desired.retired if k[0] == netns and k[1] not in failed]:
                desired.retired.pop(key)
                dirty.add(key)
            if netns is not None and not desired.has_netns(netns) and not failed:
                desired.namespaces.discard(netns)
            self._report_repairs(netns, done, seen)
            # the namespace's dumps and plan (kilobytes per interface) freed before the
            # views are built, which then reuse that memory (RSS at start-up, issue 6)
            del view, actions, result, done
        # The store compares the namespaces itself; only changed interfaces are written.
        await self.m.persist(dirty)
        for key in set(desired.interfaces) | set(self.m._published):
            self.m.publish(key)
        if any(totals.values()):
            log.info("reconcile: %s", ", ".join(f"{v} {k}" for k, v in totals.items()))
        return dict(totals)

    # --- helpers -----------------------------------------------------------------------

    def _decide(self, netns: str | None, actions: list[Action], strict: bool) -> set[Key]:
        """Apply adopt decisions to the desired state; raise or log conflicts. The keys changed."""
        dirty: set[Key] = set()
        for action in actions:
            if action.op == "conflict":
                if strict:
                    raise Conflict(_sentence(action.detail))
                log.warning("cannot reconcile: %s", action.detail)
            elif action.op == "adopt":
                iface = self.m.desired.get((netns, action.ifname))
                if iface is not None and iface.owned != action.owned:
                    iface.owned = bool(action.owned)
                    dirty.add((netns, action.ifname))
                    log.info("%s%s", action.detail, f" in namespace {netns}" if netns else "")
        return dirty

    def _remember(self, netns: str | None, names: set[str], view: KernelView, result: ApplyResult) -> None:
        deleted = {a.ifname for a in result.done if a.op == "delete_link"}
        failed = {a.ifname for a, _ in result.failed}
        now = asyncio.get_running_loop().time()
        for name in names:
            key = (netns, name)
            state = result.links.get(name) or (None if name in deleted else view.links.get(name))
            if state is None or key not in self.m.desired.interfaces:
                self.links.pop(key, None)
                self.seen_at.pop(key, None)
                self.unsure.discard(key)
            else:
                self.links[key] = state
                self.seen_at[key] = now
                if name in failed:
                    self.unsure.add(key)
                else:
                    self.unsure.discard(key)

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
            self.m.notify_repaired((netns, name), "; ".join(details))
