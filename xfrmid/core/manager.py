"""The manager: the core's public API (the calls of org.xfrmid1 and the lifecycle), free of D-Bus.

Every mutating call follows one path: validate the arguments, take the
interfaces' locks (``gate.CallLocks``; a call on one interface queues for its
lock, and calls queued together share one transaction: ``call_queue``),
describe the change of the desired state, and run it as a ``Transaction``:
persisted, the kernel synced with the same planner a reconcile uses,
everything undone when the kernel refuses what the call adds, listeners told
afterwards. The manager builds its parts and
owns the lifecycle (start, reload, stop); the parts own the state:
``CoreState`` the settings and desired state, ``KernelSeen`` what the kernel
was last seen to hold, ``Publisher`` the listeners and the views published.

Choices where the contract is silent:
- Detach, RemoveAddress and RemoveRoute are idempotent: removing what is not
  held (an owner that is not attached, an unknown interface) succeeds and
  changes nothing; Detach then returns False.
- AddAddress/AddRoute need the owner to be attached first (NotFound otherwise),
  so every address and route has an owner whose Detach takes it away.
- RemoveRoute matches the owner's routes by destination; options that are
  given must match too, options left out match anything.
- DeleteInterface of an unknown interface is NotFound; of a configured
  (static) one is Conflict (remove it from the configuration and Reload).
- With Settings.linger > 0 the last Detach keeps an on-demand interface for
  that long (an Attach meanwhile reuses it); Detach then returns False.
- bind_to_caller references are persisted with the caller's unique bus name:
  a daemon restart does not end the caller's bus connection, and unique names
  are never reused while the bus runs. After start the bus adapter must call
  caller_vanished() for every name in bound_callers() that no longer exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound, XfrmidError, where
from ..naming import check_ifname
from ..settings import Settings
from ..validate import check_netns, parse_interface_cidr
from .call_queue import CallQueues, Step, Ungroupable
from .desired import DesiredInterface, Key, check_owner
from .desired_state import DesiredState
from .gate import CallLocks
from .guard import NO_GUARD, DriftGuard
from .interfaces import (
    CreateRequest,
    check_deletable,
    check_mtu_change,
    create_request,
    create_requests,
    merge_static,
    new_interface,
    same_link,
)
from .publish import Publisher
from .reconcile import Reconciler
from .routes_policy import route_request
from .seen import KernelSeen
from .state import CoreState
from .store import StateStore
from .timers import KeyedTimers
from .transaction import Transaction
from .views import AttachResult, InterfaceInfo, ManagerListener

if TYPE_CHECKING:
    from collections import Counter

    from ..kernel.backend import KernelBackend
    from ..kernel.features import Features
    from ..kernel.objects import LinkState

log = logging.getLogger("xfrmid.core")

# The calls that may share a transaction with one another (call_queue.py): those that
# change an interface's owners, addresses and routes but cannot delete it.
GROW = "grow"

# Up to this many new names, CreateInterfaces asks the kernel about each with a get;
# beyond, one dump of the namespace's xfrm links says which exist (to adopt).
NAME_GETS_MAX = 3


class Manager:
    def __init__(self, kernel: "KernelBackend", settings: Settings, store: StateStore | None = None, *,
                 guard: DriftGuard = NO_GUARD) -> None:
        self.kernel = kernel
        self.store = store if store is not None else StateStore.in_dir(settings.state_dir)
        self.features: "Features | None" = None  # probed by start()
        self._state = CoreState(settings)
        self._seen = KernelSeen()
        self._publisher = Publisher(self._state, self._seen)
        self._reconciler = Reconciler(kernel, self._state, self.store, self._seen, self._publisher, guard)
        self._transaction = Transaction(self._state, self.store, self._reconciler, self._publisher)
        self._locks = CallLocks(guard)
        self._calls = CallQueues(self._locks, self._transaction, self._state)
        self._guard = guard
        self._linger = KeyedTimers(self._linger_expired)

    @property
    def settings(self) -> Settings:
        return self._state.settings

    @property
    def desired(self) -> DesiredState:
        return self._state.desired

    @property
    def shortcuts(self) -> "Counter[str]":
        """How many changes took each shortcut ("unchanged", "created"; see transaction.py)."""
        return self._transaction.shortcuts

    @property
    def grouped(self) -> "Counter[str]":
        """Calls run together as one transaction ("groups", "grouped", "regrouped"; see call_queue.py)."""
        return self._calls.counts

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> dict[str, int]:
        """Probe the kernel, load the persisted promises and the static interfaces, reconcile."""
        self.features = await self.kernel.features()
        data = self.store.load()
        self._state.reset(DesiredState.from_json(data) if data else DesiredState())
        # The file's parsed tree (kilobytes per interface) freed now, not after the
        # reconcile: what the reconcile keeps then reuses its memory (RSS at start-up).
        del data
        desired = self.desired
        # What the start changes before the reconcile: the configured interfaces (those
        # static before or after the merge) and lingering ones whose time is up. The rest
        # is as the store just read it, so only these are written (not all 10,000 again).
        changed = {k for k, i in desired.interfaces.items() if i.static}
        merge_static(desired, self.settings)
        changed |= {k for k, i in desired.interfaces.items() if i.static}
        now = time.time()
        for iface in list(desired.interfaces.values()):
            if iface.linger_until is not None and not iface.owners and not iface.pinned:
                if iface.linger_until <= now:
                    desired.drop(iface.key)
                    changed.add(iface.key)
                else:
                    self._linger.schedule(iface.key, iface.linger_until - now)
        async with self._locks.everything():
            await self.store.commit(desired, changed)
            counts = await self._reconciler.reconcile_all()
        log.info("started: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
        return counts

    async def stop(self) -> None:
        """Wait for running calls, cancel linger timers. The kernel objects stay (they are promises);
        the kernel backend is not closed (its creator owns it)."""
        await self._calls.close()
        async with self._locks.everything():
            pass  # running calls are done now
        await self._linger.close()
        self.store.close()

    async def reload(self, settings: Settings) -> None:
        """Apply new settings: static interfaces added/removed/changed, peer table, MTU default.

        A change of state_dir needs a restart and is ignored here.
        """
        state = self._state
        # the reload's own changes are not drift; what it leaves is judged afterwards
        with self._guard.hold():
            async with self._locks.everything():
                old_settings, old_desired = state.settings, state.desired.snapshot()
                try:
                    state.settings = settings
                    merge_static(state.desired, settings)
                    await self.store.commit(state.desired)
                except XfrmidError:
                    state.settings = old_settings
                    state.reset(old_desired)
                    raise
                unconfigured = set(old_desired.interfaces) - set(state.desired.interfaces)
                await self._reconciler.reconcile_all(released=dict.fromkeys(unconfigured, "no longer configured"))

    # --- queries -------------------------------------------------------------

    def subscribe(self, listener: ManagerListener) -> None:
        self._publisher.subscribe(listener)

    def unsubscribe(self, listener: ManagerListener) -> None:
        self._publisher.unsubscribe(listener)

    def interfaces(self) -> list[InterfaceInfo]:
        """Every managed or adopted interface, sorted by namespace and name (each view built now)."""
        keys = sorted(self.desired.interfaces, key=lambda k: (k[0] or "", k[1]))
        return [self._publisher.info(key) for key in keys]

    def published(self) -> list[InterfaceInfo]:
        """The views last published to listeners, sorted like interfaces(): the same content
        once a call or reconcile is done, without building every view again (start-up)."""
        return self._publisher.published()

    def get(self, name: str, netns: str | None = None) -> InterfaceInfo:
        key = (check_netns(netns), check_ifname(name))
        if key not in self.desired.interfaces:
            raise NotFound(f"Interface {name!r} is not managed by xfrmid{where(key[0])}.")
        return self._publisher.info(key)

    def view(self, key: Key) -> InterfaceInfo:
        """The view of ``key`` right after a change of it, which published it (not built again)."""
        return self._publisher.view(key)

    def bound_callers(self) -> set[str]:
        """Bus unique names holding bind_to_caller references (check them after a restart)."""
        return {
            o.caller for i in self.desired.interfaces.values() for o in i.owners.values() if o.caller is not None
        }

    # --- interfaces ------------------------------------------------------------

    async def create_interface(
        self,
        name: str,
        if_id: int = 0,
        *,
        netns: str | None = None,
        link: str | None = None,
        mtu: int | None = None,
        external: bool = False,
        addresses: Sequence[str] = (),
    ) -> InterfaceInfo:
        """Create the interface, or return the identical existing one, pinned until DeleteInterface.

        An existing foreign xfrm link with the same if_id is adopted (owned=False).
        Different if_id, underlying link, mode or MTU than the existing one: Conflict.
        """
        netns, name = check_netns(netns), check_ifname(name)
        request = create_request(name, if_id, link, mtu, external, addresses)
        key = (netns, name)

        async def alone() -> InterfaceInfo:
            change, free = await self._create_change(key, request)
            await self._transaction.run(netns, [name], change, free={name} if free else ())
            return self.view(key)

        return await self._calls.run(key, Step(alone))

    async def create_interfaces(self, entries: Sequence[tuple[str, int, dict]], *,
                                netns: str | None = None) -> list[InterfaceInfo]:
        """create_interface for many interfaces of one namespace in one change: each entry
        (name, if_id, {link, mtu, external, addresses}). All or nothing: every entry is
        checked first, and if the kernel refuses one, those this call created are removed."""
        wanted = create_requests(entries)
        netns = check_netns(netns)
        names = sorted(wanted)
        keys = [(netns, name) for name in names]
        if not keys:
            return []
        async with self._locks.many(keys):
            # Many new names: one dump of the namespace's xfrm links tells which exist
            # (to adopt) instead of a get each (the sync dumps them the same way).
            known = None
            if sum(key not in self.desired.interfaces for key in keys) > NAME_GETS_MAX:
                known = {state.name: state for state in await self.kernel.xfrm_links(netns)}
            made = await asyncio.gather(*(self._create_change(key, wanted[key[1]], known) for key in keys))

            def change() -> None:
                for one, _free in made:
                    one()

            free = {name for name, (_change, is_free) in zip(names, made) if is_free}
            await self._transaction.run(netns, names, change, free=free)
            return [self.view((netns, check_ifname(e[0]))) for e in entries]

    async def _create_change(self, key: Key, request: CreateRequest,
                             known: "dict[str, LinkState] | None" = None) -> tuple[Callable[[], None], bool]:
        """The desired-state change that creates (or re-asserts) ``key``, and whether the kernel
        just reported its name free; the caller holds its lock. ``known``: the namespace's
        xfrm links from one dump (see new_interface)."""
        netns, name = key
        mtu = request.mtu
        iface = self.desired.get(key)
        fresh, free = iface is None, False
        if iface is None:
            iface, free = await new_interface(self.kernel, self.settings, self.desired, self.features, netns, name,
                                              request.if_id, link=request.link, mtu=mtu, external=request.external,
                                              known=known)
        else:
            same_link(iface, request.if_id, request.link, request.external, self.settings)
        check_mtu_change(iface, mtu, fresh, self._seen.link(key))
        # a link the get just found absent has no addresses
        on_link = await self._addresses_on_link(key) if request.cidrs and not free else set()
        new = iface

        def change() -> None:
            if fresh:
                self.desired.put(new)
            current = self.desired.interfaces[key]
            current.explicit = True
            current.linger_until = None
            if mtu is not None and current.owned:
                current.mtu = mtu
            self.desired.hold_created(key, set(request.cidrs), on_link)
            self._linger.cancel(key)

        return change, free

    async def delete_interface(self, name: str, *, netns: str | None = None, force: bool = False) -> None:
        """Delete an interface xfrmid created. NotOwned if adopted, Busy while owners are attached unless force."""
        netns, name = check_netns(netns), check_ifname(name)
        key = (netns, name)

        async def alone() -> None:
            check_deletable(self.desired.get(key), key, force)
            await self._transaction.run(netns, [name], lambda: self._drop([key]), why="requested by DeleteInterface")

        await self._calls.run(key, Step(alone))

    async def delete_interfaces(self, names: Sequence[str], *, netns: str | None = None, force: bool = False) -> None:
        """delete_interface for many interfaces of one namespace in one change (one journal
        write, one kernel read, the links deleted in one batch). Every interface is checked
        before any is deleted: one that may not be deleted fails the call and nothing changes."""
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"Names {names!r} must be a list of interface names.")
        netns = check_netns(netns)
        chosen = sorted({check_ifname(n) for n in names})
        keys = [(netns, name) for name in chosen]
        if not keys:
            return
        async with self._locks.many(keys):
            for key in keys:
                check_deletable(self.desired.get(key), key, force)
            await self._transaction.run(netns, chosen, lambda: self._drop(keys), why="requested by DeleteInterfaces")

    def _drop(self, keys: list[Key]) -> None:
        for key in keys:
            self.desired.drop(key)
            self._linger.cancel(key)

    # --- attachments -----------------------------------------------------------

    async def attach(self, name: str, owner: str, *, netns: str | None = None,
                     caller: str | None = None) -> AttachResult:
        """Reference the interface for ``owner``, creating ipsecN on demand or adopting a foreign one.

        Idempotent per (name, owner); the latest Attach decides whether the reference
        is bound to ``caller`` (a bus unique name) or lasts until Detach.
        """
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        if caller is not None and (not isinstance(caller, str) or not caller):
            raise InvalidArgument(f"Caller {caller!r} is not a bus name.")
        key = (netns, name)

        def attach_owner() -> None:
            self.desired.attach(key, owner, caller)
            self._linger.cancel(key)

        def prepare() -> Callable[[], None]:
            if self.desired.get(key) is None:
                raise Ungroupable  # the interface is created first: a kernel read
            return attach_owner

        def finish() -> AttachResult:
            info = self.view(key)
            return AttachResult(info=info, if_id=info.if_id, mark=info.mark, mask=info.mask)

        async def alone() -> AttachResult:
            iface = self.desired.get(key)
            fresh, free = iface is None, False
            if iface is None:
                iface, free = await new_interface(self.kernel, self.settings, self.desired, self.features,
                                                  netns, name, 0)
            new = iface

            def change() -> None:
                if fresh:
                    self.desired.put(new)
                attach_owner()

            await self._transaction.run(netns, [name], change, free={name} if free else ())
            return finish()

        return await self._calls.run(key, Step(alone, prepare, finish, family=GROW))

    async def detach(self, name: str, owner: str, *, netns: str | None = None) -> bool:
        """Drop owner's reference and everything it added. True when that deleted the interface.

        Not attached (or unknown interface): nothing happens, returns False.
        """
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        return await self._calls.run((netns, name), self._detach_step((netns, name), owner))

    def _detach_step(self, key: Key, owner: str) -> Step:
        deleted = [False]

        def prepare() -> Callable[[], None] | None:
            deleted[0] = False
            iface = self.desired.get(key)
            if iface is None or owner not in iface.owners:
                return None
            linger = self.settings.linger

            def change() -> None:
                self.desired.detach(key, owner)
                if iface.wanted:
                    return
                if iface.owned and linger > 0:
                    iface.linger_until = time.time() + linger
                    self._linger.schedule(key, linger)
                else:
                    self.desired.drop(key)
                    deleted[0] = iface.owned

            return change

        # a Detach may delete the interface: grouped with Detaches only
        return self._calls.step(key, prepare, lambda: deleted[0], family="detach",
                                why=f"its last owner {owner} detached")

    async def caller_vanished(self, caller: str) -> None:
        """Release every bind_to_caller reference held for bus name ``caller``."""
        held = [
            (key, owner.name)
            for key, iface in list(self.desired.interfaces.items())
            for owner in iface.owners.values()
            if owner.caller == caller
        ]
        for key, owner in held:

            async def alone(key: Key = key, owner: str = owner) -> None:
                iface = self.desired.get(key)
                if iface is not None and owner in iface.owners and iface.owners[owner].caller == caller:
                    log.info("released %s on %s: bus client %s went away", owner, key[1], caller)
                    await self._detach_step(key, owner).alone()

            try:
                await self._calls.run(key, Step(alone))
            except XfrmidError as exc:
                log.warning("releasing %s on %s for %s failed: %s", owner, key[1], caller, exc)

    # --- addresses and routes ----------------------------------------------------

    def _holder(self, key: Key, owner: str) -> DesiredInterface:
        iface = self.desired.get(key)
        if iface is None:
            raise NotFound(f"Interface {key[1]!r} is not managed by xfrmid{where(key[0])}.")
        if owner not in iface.owners:
            raise NotFound(f"Owner {owner!r} is not attached to interface {key[1]!r}{where(key[0])}; "
                           "call Attach first.")
        return iface

    async def add_address(self, name: str, owner: str, cidr: str, *, netns: str | None = None) -> None:
        """Owner holds address ``cidr`` on the interface (idempotent per owner)."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        cidr = parse_interface_cidr(cidr)
        key = (netns, name)

        async def alone() -> None:  # it asks the kernel whether the link has the address
            self._holder(key, owner)
            on_link = await self._addresses_on_link(key)
            await self._transaction.run(
                netns, [name], lambda: self.desired.add_address(key, owner, cidr, on_link=cidr in on_link))

        await self._calls.run(key, Step(alone))

    async def remove_address(self, name: str, owner: str, cidr: str, *, netns: str | None = None) -> None:
        """Owner lets go of ``cidr``; the kernel loses it when no holder is left. Not held: no-op."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        cidr = parse_interface_cidr(cidr)
        key = (netns, name)

        def prepare() -> Callable[[], object] | None:
            iface = self.desired.get(key)
            holder = iface.owners.get(owner) if iface is not None else None
            if holder is None or cidr not in holder.addresses:
                return None
            return lambda: self.desired.remove_address(key, owner, cidr)

        await self._calls.run(key, self._calls.step(key, prepare, family=GROW))

    async def add_route(self, name: str, owner: str, destination: str, *, netns: str | None = None,
                        table: int | None = None, src: str | None = None, metric: int | None = None,
                        peer: str | None = None) -> None:
        """Owner holds a route (split when /0; the peer pattern with ``peer``). Idempotent per owner."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        request = route_request(destination, table=table, src=src, metric=metric, peer=peer)
        key = (netns, name)

        def prepare() -> Callable[[], object]:
            self._holder(key, owner)
            # a route colliding with another interface's: Conflict from the transaction
            return lambda: self.desired.add_route(key, owner, request)

        await self._calls.run(key, self._calls.step(key, prepare, family=GROW))

    async def remove_route(self, name: str, owner: str, destination: str, *, netns: str | None = None,
                           table: int | None = None, src: str | None = None, metric: int | None = None,
                           peer: str | None = None) -> None:
        """Owner lets go of its routes to ``destination`` matching the given options. None held: no-op."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        pattern = route_request(destination, table=table, src=src, metric=metric, peer=peer)
        key = (netns, name)

        def prepare() -> Callable[[], object] | None:
            iface = self.desired.get(key)
            holder = iface.owners.get(owner) if iface is not None else None
            if holder is None or not any(r.matches(pattern) for r in holder.routes):
                return None
            return lambda: self.desired.remove_route(key, owner, pattern)

        await self._calls.run(key, self._calls.step(key, prepare, family=GROW))

    # --- reconcile -------------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Compare kernel and desired state now and repair; counts created/repaired/adopted/removed."""
        async with self._locks.everything():
            return await self._reconciler.reconcile_all()

    async def reconcile_interface(self, name: str, netns: str | None = None) -> dict[str, int]:
        """Reconcile one interface only (for the drift watcher: cheap, other interfaces not blocked)."""
        key = (check_netns(netns), check_ifname(name))
        async with self._locks.one(key):
            return await self._reconciler.reconcile_one(key)

    # --- helpers -------------------------------------------------------------------

    async def _addresses_on_link(self, key: Key) -> set[str]:
        try:
            return await self.kernel.addresses(key[0], key[1])
        except NotFound:
            return set()

    async def _linger_expired(self, key: Key) -> None:
        async with self._locks.one(key):
            iface = self.desired.get(key)
            if iface is None or iface.owners or iface.pinned or iface.linger_until is None:
                return
            log.info("interface %s unused for %s s: deleting it", key[1], self.settings.linger)
            try:
                await self._transaction.run(key[0], [key[1]], lambda: self.desired.drop(key),
                                            why=f"unused for {self.settings.linger} s")
            except XfrmidError as exc:
                log.warning("deleting unused interface %s failed: %s", key[1], exc)

