"""The manager: the core's public face, free of D-Bus.

Every mutating call follows one path: validate the arguments, take the
interface's lock, change the desired state (pure), persist it, then sync the
kernel for that interface with the same planner that reconcile uses. If the
kernel refuses, the desired state is restored, persisted and synced again,
and the typed error goes back to the caller. Listeners hear about every
change afterwards.

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

import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING

from ..errors import Busy, Conflict, InvalidArgument, NotFound, NotOwned, XfrmidError
from ..naming import check_ifname, check_u32
from ..settings import Settings
from ..validate import check_netns, parse_interface_cidr
from .desired import DesiredInterface, DesiredState, Key, check_owner
from .gate import Gate, KeyedLocks
from .info import build_info, where
from .interfaces import check_mtu, merge_static, new_interface, same_link
from .routes_policy import route_request
from .store import StateStore
from .timers import KeyedTimers
from .bulk_calls import BulkCalls
from .sync import Syncer
from .views import AttachResult, InterfaceInfo, ManagerListener

if TYPE_CHECKING:
    from ..kernel.backend import KernelBackend
    from ..kernel.features import Features
    from ..kernel.objects import LinkState

log = logging.getLogger("xfrmid.core")


class Manager(BulkCalls):
    def __init__(self, kernel: "KernelBackend", settings: Settings, store: StateStore | None = None) -> None:
        self.kernel = kernel
        self.settings = settings
        self.store = store if store is not None else StateStore.in_dir(settings.state_dir)
        self.features: "Features | None" = None
        self.desired = DesiredState()
        self._sync = Syncer(self)
        self._gate = Gate()
        self._locks = KeyedLocks()
        self._listeners: list[ManagerListener] = []
        self._published: dict[Key, InterfaceInfo] = {}
        self._linger = KeyedTimers(self._linger_expired)
        # The drift watcher replaces this so xfrmid's own changes are not "repaired".
        self.hold = lambda key=None: nullcontext()

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> dict[str, int]:
        """Probe the kernel, load the persisted promises and the static interfaces, reconcile."""
        self.features = await self.kernel.features()
        data = self.store.load()
        self.desired = DesiredState.from_json(data) if data else DesiredState()
        # The file's parsed tree (kilobytes per interface) freed now, not after the
        # reconcile: what the reconcile keeps then reuses its memory (RSS, issue 6).
        del data
        # What the start changes before the reconcile: the configured interfaces (those
        # static before or after the merge) and lingering ones whose time is up. The rest
        # is as the store just read it, so only these are written (not all 10,000 again).
        changed = {k for k, i in self.desired.interfaces.items() if i.static}
        self._apply_static(self.settings)
        changed |= {k for k, i in self.desired.interfaces.items() if i.static}
        now = time.time()
        for iface in list(self.desired.interfaces.values()):
            if iface.linger_until is not None and not iface.owners and not iface.pinned:
                if iface.linger_until <= now:
                    self.desired.drop(iface.key)
                    changed.add(iface.key)
                else:
                    self._linger.schedule(iface.key, iface.linger_until - now)
        async with self._gate.exclusive():
            await self.persist(changed)
            counts = await self._sync.reconcile_all()
        log.info("started: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
        return counts

    async def stop(self) -> None:
        """Wait for running calls, cancel linger timers. The kernel objects stay (they are promises);
        the kernel backend is not closed (its creator owns it)."""
        async with self._gate.exclusive():
            pass  # running calls are done now
        await self._linger.close()
        self.store.close()

    async def reload(self, settings: Settings) -> None:
        """Apply new settings: static interfaces added/removed/changed, peer table, MTU default.

        A change of state_dir needs a restart and is ignored here.
        """
        async with self._gate.exclusive():
            old_settings, old_state = self.settings, self.desired.snapshot()
            try:
                self.settings = settings
                self._apply_static(settings)
                await self.persist()
            except XfrmidError:
                self.settings, self.desired = old_settings, old_state
                raise
            unconfigured = set(old_state.interfaces) - set(self.desired.interfaces)
            await self._sync.reconcile_all(released=dict.fromkeys(unconfigured, "no longer configured"))

    def _apply_static(self, settings: Settings) -> None:
        merge_static(self.desired, settings)

    # --- queries -------------------------------------------------------------

    def subscribe(self, listener: ManagerListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: ManagerListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def interfaces(self) -> list[InterfaceInfo]:
        """Every managed or adopted interface, sorted by namespace and name."""
        keys = sorted(self.desired.interfaces, key=lambda k: (k[0] or "", k[1]))
        return [self.info(key) for key in keys]

    def published(self) -> list[InterfaceInfo]:
        """The views last published to listeners, sorted like interfaces(): the same content
        once a call or reconcile is done, without building every view again (start-up)."""
        keys = sorted(self._published, key=lambda k: (k[0] or "", k[1]))
        return [self._published[key] for key in keys]

    def get(self, name: str, netns: str | None = None) -> InterfaceInfo:
        key = (check_netns(netns), check_ifname(name))
        if key not in self.desired.interfaces:
            raise NotFound(f"Interface {name!r} is not managed by xfrmid{where(key[0])}.")
        return self.info(key)

    def info(self, key: Key) -> InterfaceInfo:
        return build_info(self.desired.interfaces[key], self._sync.links.get(key), self.settings)

    def view(self, key: Key) -> InterfaceInfo:
        """``info(key)`` right after a change of ``key``, which published it (not built again)."""
        published = self._published.get(key)
        return published if published is not None else self.info(key)

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
        args = self._create_args(name, if_id, link, mtu, external, addresses)
        key = (netns, name)
        async with self._op(key):
            await self._sync.change(key, await self._create_change(key, *args))
            return self.view(key)

    def _create_args(self, name: str, if_id: int, link: str | None, mtu: int | None, external: bool,
                     addresses: Sequence[str]) -> tuple:
        """create_interface's arguments checked: (if_id, link, mtu, external, cidrs)."""
        check_u32("if_id", if_id)
        link = None if link in (None, "") else check_ifname(link)
        mtu = check_mtu(mtu, name)
        if not isinstance(external, bool):
            raise InvalidArgument(f"Option external {external!r} is not a boolean.")
        if isinstance(addresses, str):
            raise InvalidArgument(f"Addresses {addresses!r} must be a list of addresses, not one string.")
        return if_id, link, mtu, external, frozenset(parse_interface_cidr(a) for a in addresses)

    async def _create_change(self, key: Key, if_id: int, link: str | None, mtu: int | None, external: bool,
                             cidrs: frozenset[str], known: "dict[str, LinkState] | None" = None):
        """The desired-state change that creates (or re-asserts) ``key``; the caller holds its lock.
        ``known``: the namespace's xfrm links from one dump (see new_interface)."""
        netns, name = key
        iface = self.desired.get(key)
        fresh = iface is None
        if fresh:
            iface = await new_interface(self, netns, name, if_id, link=link, mtu=mtu, external=external, known=known)
        else:
            same_link(iface, if_id, link, external, self.settings)
        if mtu is not None and mtu != iface.mtu:
            if not iface.owned:
                have = self._sync.links.get(key)
                if have is None or have.mtu != mtu:
                    raise Conflict(f"Interface {name!r}{where(netns)} was not created by xfrmid; "
                                   f"its MTU is not changed to {mtu}.")
            elif iface.mtu is not None and not fresh:
                raise Conflict(f"Interface {name!r}{where(netns)} exists with MTU {iface.mtu}, not {mtu}.")
        # a link the get just found absent has no addresses
        on_link = await self._addresses_on_link(key) if cidrs and key not in self._sync.absent else set()

        def change() -> None:
            if fresh:
                self.desired.put(iface)
            current = self.desired.interfaces[key]
            current.explicit = True
            current.linger_until = None
            if mtu is not None and current.owned:
                current.mtu = mtu
            self.desired.hold_created(key, set(cidrs), on_link)
            self._linger.cancel(key)

        return change

    async def delete_interface(self, name: str, *, netns: str | None = None, force: bool = False) -> None:
        """Delete an interface xfrmid created. NotOwned if adopted, Busy while owners are attached unless force."""
        netns, name = check_netns(netns), check_ifname(name)
        key = (netns, name)
        async with self._op(key):
            self._check_deletable(key, force)
            await self._sync.change(key, lambda: (self.desired.drop(key), self._linger.cancel(key)),
                                    why="requested by DeleteInterface")

    def _check_deletable(self, key: Key, force: bool) -> None:
        netns, name = key
        iface = self.desired.get(key)
        if iface is None:
            raise NotFound(f"Interface {name!r} is not managed by xfrmid{where(netns)}.")
        if not iface.owned:
            raise NotOwned(f"Interface {name!r}{where(netns)} existed before xfrmid adopted it; "
                           "xfrmid does not delete it.")
        if iface.static:
            raise Conflict(f"Interface {name!r}{where(netns)} is declared in the configuration file; "
                           "remove it there and reload.")
        if iface.owners and not force:
            raise Busy(f"Interface {name!r}{where(netns)} is still attached by "
                       f"{', '.join(sorted(iface.owners))}; detach them or use force.")

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
        async with self._op(key):
            iface = self.desired.get(key)
            fresh = iface is None
            if fresh:
                iface = await new_interface(self, netns, name, 0)

            def change() -> None:
                if fresh:
                    self.desired.put(iface)
                self.desired.attach(key, owner, caller)
                self._linger.cancel(key)

            await self._sync.change(key, change)
            info = self.view(key)
            return AttachResult(info=info, if_id=info.if_id, mark=info.mark, mask=info.mask)

    async def detach(self, name: str, owner: str, *, netns: str | None = None) -> bool:
        """Drop owner's reference and everything it added. True when that deleted the interface.

        Not attached (or unknown interface): nothing happens, returns False.
        """
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        key = (netns, name)
        async with self._op(key):
            return await self._detach_locked(key, owner)

    async def _detach_locked(self, key: Key, owner: str) -> bool:
        iface = self.desired.get(key)
        if iface is None or owner not in iface.owners:
            return False
        linger = self.settings.linger
        outcome = {"deleted": False}

        def change() -> None:
            self.desired.detach(key, owner)
            if iface.wanted:
                return
            if iface.owned and linger > 0:
                iface.linger_until = time.time() + linger
                self._linger.schedule(key, linger)
            else:
                self.desired.drop(key)
                outcome["deleted"] = iface.owned

        await self._sync.change(key, change, why=f"its last owner {owner} detached")
        return outcome["deleted"]

    async def caller_vanished(self, caller: str) -> None:
        """Release every bind_to_caller reference held for bus name ``caller``."""
        held = [
            (key, owner.name)
            for key, iface in list(self.desired.interfaces.items())
            for owner in iface.owners.values()
            if owner.caller == caller
        ]
        for key, owner in held:
            try:
                async with self._op(key):
                    iface = self.desired.get(key)
                    if iface is not None and owner in iface.owners and iface.owners[owner].caller == caller:
                        log.info("released %s on %s: bus client %s went away", owner, key[1], caller)
                        await self._detach_locked(key, owner)
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
        async with self._op(key):
            self._holder(key, owner)
            on_link = await self._addresses_on_link(key)
            await self._sync.change(key, lambda: self.desired.add_address(key, owner, cidr, on_link=cidr in on_link))

    async def remove_address(self, name: str, owner: str, cidr: str, *, netns: str | None = None) -> None:
        """Owner lets go of ``cidr``; the kernel loses it when no holder is left. Not held: no-op."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        cidr = parse_interface_cidr(cidr)
        key = (netns, name)
        async with self._op(key):
            iface = self.desired.get(key)
            if iface is None or cidr not in iface.owners.get(owner, _NOBODY).addresses:
                return
            await self._sync.change(key, lambda: self.desired.remove_address(key, owner, cidr))

    async def add_route(self, name: str, owner: str, destination: str, *, netns: str | None = None,
                        table: int | None = None, src: str | None = None, metric: int | None = None,
                        peer: str | None = None) -> None:
        """Owner holds a route (split when /0; the peer pattern with ``peer``). Idempotent per owner."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        request = route_request(destination, table=table, src=src, metric=metric, peer=peer)
        key = (netns, name)
        async with self._op(key):
            self._holder(key, owner)

            def change() -> None:
                if self.desired.add_route(key, owner, request):
                    try:
                        self._sync.check_routes(key)
                    except Conflict:
                        self.desired.remove_route(key, owner, request)
                        raise

            await self._sync.change(key, change)

    async def remove_route(self, name: str, owner: str, destination: str, *, netns: str | None = None,
                           table: int | None = None, src: str | None = None, metric: int | None = None,
                           peer: str | None = None) -> None:
        """Owner lets go of its routes to ``destination`` matching the given options. None held: no-op."""
        netns, name, owner = check_netns(netns), check_ifname(name), check_owner(owner)
        pattern = route_request(destination, table=table, src=src, metric=metric, peer=peer)
        key = (netns, name)
        async with self._op(key):
            iface = self.desired.get(key)
            held = iface.owners.get(owner, _NOBODY).routes if iface is not None else set()
            if not any(r.matches(pattern) for r in held):
                return
            await self._sync.change(key, lambda: self.desired.remove_route(key, owner, pattern))

    # --- reconcile -------------------------------------------------------------

    async def reconcile(self) -> dict[str, int]:
        """Compare kernel and desired state now and repair; counts created/repaired/adopted/removed."""
        async with self._gate.exclusive():
            return await self._sync.reconcile_all()

    async def reconcile_interface(self, name: str, netns: str | None = None) -> dict[str, int]:
        """Reconcile one interface only (for the event monitor: cheap, other interfaces not blocked)."""
        key = (check_netns(netns), check_ifname(name))
        async with self._op(key):
            return await self._sync.reconcile_one(key)

    # --- plumbing ----------------------------------------------------------------

    @asynccontextmanager
    async def _op(self, key: Key):
        async with self._gate.shared():
            async with self._locks(key):
                try:
                    with self.hold(key):
                        yield
                finally:
                    self._sync.absent.discard(key)  # a read is trusted only within its call

    def note_absent(self, key: Key) -> None:
        """A get just found no link named ``key`` (new_interface): the call's create needs no read."""
        self._sync.absent.add(key)

    async def persist(self, keys: "set[Key] | None" = None) -> None:
        """Make the desired state durable: the interfaces ``keys`` changed (None: everything)."""
        await self.store.commit(self.desired, keys)

    async def _addresses_on_link(self, key: Key) -> set[str]:
        try:
            return await self.kernel.addresses(key[0], key[1])
        except NotFound:
            return set()

    def publish(self, key: Key) -> None:
        """Tell listeners what changed for ``key`` since the last time."""
        old = self._published.get(key)
        new = self.info(key) if key in self.desired.interfaces else None
        if new == old:
            return
        if new is None:
            del self._published[key]
            self._notify("interface_removed", old)
        else:
            self._published[key] = new
            self._notify("interface_added" if old is None else "interface_changed", new)

    def notify_repaired(self, key: Key, what: str) -> None:
        if key in self.desired.interfaces:
            self._notify("repaired", self.info(key), what)

    def _notify(self, event: str, *args: object) -> None:
        for listener in list(self._listeners):
            try:
                getattr(listener, event)(*args)
            except Exception:  # a broken listener must not break the core
                log.exception("listener %r failed on %s", listener, event)

    async def _linger_expired(self, key: Key) -> None:
        async with self._op(key):
            iface = self.desired.get(key)
            if iface is None or iface.owners or iface.pinned or iface.linger_until is None:
                return
            log.info("interface %s unused for %s s: deleting it", key[1], self.settings.linger)
            try:
                await self._sync.change(key, lambda: self.desired.drop(key),
                                        why=f"unused for {self.settings.linger} s")
            except XfrmidError as exc:
                log.warning("deleting unused interface %s failed: %s", key[1], exc)


class _Nobody:
    addresses: frozenset = frozenset()
    routes: frozenset = frozenset()


_NOBODY = _Nobody()
