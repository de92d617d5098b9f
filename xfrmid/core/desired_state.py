"""The desired state of every interface: the interfaces by key with their indexes, the
addresses released but not yet removed, the namespaces in use; its mutations (pure: the
manager persists and applies them) and a call's save points.

The state of one interface (its holders, what they hold) is desired.py's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .desired import NO_REQUESTS, DesiredInterface, Key, Owner, frozen
from .holdings import Delta
from .routes_policy import RouteRequest

# From this many owners on, an interface keeps its Holdings (counts of what its owners
# hold, holdings.py) between calls: a call then costs O(its change), not O(owners).
# Below, a call counts afresh (a few owners: cheaper than keeping the counts).
BIG = 32


@dataclass(slots=True)
class SavePoint:
    """What undoes a change of one interface: the interface object and its fields as they were,
    each owner the change replaced as it was (filled in by ``DesiredInterface.set_owner``), and
    the retired addresses. Taking one costs O(1), not a copy of the interface's owners."""

    key: Key
    iface: DesiredInterface | None  # the object in the state at the save point
    fields: tuple  # its FIELDS then
    owners: dict[str, Owner | None]  # owners replaced since, as they were
    retired: set[str] | None
    counted: bool = False  # the interface had no Holdings before: counted for this change only

    @property
    def fresh(self) -> bool:
        """The interface did not exist at the save point."""
        return self.iface is None


@dataclass
class DesiredState:
    """Every interface xfrmid keeps, plus the bookkeeping reconcile needs.

    ``interfaces`` is read freely but changed only through ``put``/``remove``/``drop``,
    which keep the per-namespace indexes (by name, by if_id) in step, so a call on
    one interface never has to walk the others.
    """

    interfaces: dict[Key, DesiredInterface] = field(default_factory=dict)
    # Addresses xfrmid released but may not have removed yet (a crash in between):
    # addresses carry no marker, so this is how reconcile knows they were ours.
    retired: dict[Key, set[str]] = field(default_factory=dict)
    # Every namespace xfrmid has put objects in: where reconcile looks for leftovers.
    namespaces: set[str | None] = field(default_factory=lambda: {None})
    _by_netns: dict[str | None, dict[str, DesiredInterface]] = field(default_factory=dict, repr=False, compare=False)
    # names per (netns, if_id): a tuple, almost always of one (a set would cost 216 bytes each)
    _by_if_id: dict[tuple[str | None, int], tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)

    # --- queries -----------------------------------------------------------

    def get(self, key: Key) -> DesiredInterface | None:
        return self.interfaces.get(key)

    def in_netns(self, netns: str | None) -> list[DesiredInterface]:
        return list(self._by_netns.get(netns, {}).values())

    def has_netns(self, netns: str | None) -> bool:
        return bool(self._by_netns.get(netns))

    def names_in(self, netns: str | None) -> set[str]:
        return set(self._by_netns.get(netns, ()))

    def with_if_id(self, netns: str | None, if_id: int) -> list[DesiredInterface]:
        """The interfaces of a namespace with this if_id (several only when external ones share it)."""
        names = self._by_if_id.get((netns, if_id), ())
        return [self.interfaces[(netns, n)] for n in sorted(names)]

    def if_ids(self, netns: str | None) -> dict[str, int]:
        return {i.name: i.if_id for i in self.in_netns(netns)}

    def snapshot(self) -> "DesiredState":
        return copy.deepcopy(self)

    def savepoint(self, key: Key, *, count: bool = False) -> "SavePoint":
        """What ``restore`` needs to undo any change of ``key`` (a call's save point); close it
        with ``restore`` or ``release``. ``count``: record, in the interface's Holdings, which
        kernel objects its owners gain and lose (``Holdings.delta``)."""
        iface = self.interfaces.get(key)
        retired = self.retired.get(key)
        kept = None if retired is None else set(retired)
        if iface is None:
            return SavePoint(key, None, (), {}, kept)
        iface._undo = {}
        counted = False
        if count:
            counted = iface._holdings is None
            iface.hold().delta = Delta()
        return SavePoint(key, iface, tuple(getattr(iface, f) for f in iface.FIELDS), iface._undo, kept, counted)

    def restore(self, saved: "SavePoint") -> None:
        """Put ``saved.key`` back as it was at the save point (and close the save point)."""
        key, iface = saved.key, saved.iface
        current = self.interfaces.get(key)
        if current is not None and current is not iface:
            self.remove(key)  # created by the change
        if iface is not None:
            iface._undo = None
            if iface._holdings is not None:
                iface._holdings.delta = None
            for name, old in saved.owners.items():
                iface.set_owner(name, old)
            for name, value in zip(iface.FIELDS, saved.fields):
                setattr(iface, name, value)
            if current is not iface:
                self.put(iface)  # removed or replaced by the change
        if saved.retired is None:
            self.retired.pop(key, None)
        else:
            self.retired[key] = saved.retired
        self.release(saved)

    def release(self, saved: "SavePoint") -> None:
        """Close a save point: the change stays. An interface keeps its Holdings from BIG owners on."""
        iface = saved.iface
        if iface is None:
            return
        iface._undo = None
        holdings = iface._holdings
        if holdings is not None:
            holdings.delta = None
            if len(iface.owners) < (BIG if saved.counted else BIG // 4):
                iface._holdings = None

    # --- mutations (pure; the manager persists and applies) ----------------

    def put(self, iface: DesiredInterface) -> None:
        self.remove(iface.key)
        self.interfaces[iface.key] = iface
        self._by_netns.setdefault(iface.netns, {})[iface.name] = iface
        ids = self._by_if_id.get((iface.netns, iface.if_id), ())
        if iface.name not in ids:
            self._by_if_id[(iface.netns, iface.if_id)] = ids + (iface.name,)
        self.namespaces.add(iface.netns)

    def remove(self, key: Key) -> DesiredInterface | None:
        """Forget an interface and nothing else (restoring a save point)."""
        iface = self.interfaces.pop(key, None)
        if iface is not None:
            names = self._by_netns.get(iface.netns, {})
            names.pop(iface.name, None)
            if not names:
                self._by_netns.pop(iface.netns, None)
            ids = tuple(n for n in self._by_if_id.get((iface.netns, iface.if_id), ()) if n != iface.name)
            if ids:
                self._by_if_id[(iface.netns, iface.if_id)] = ids
            else:
                self._by_if_id.pop((iface.netns, iface.if_id), None)
        return iface

    def drop(self, key: Key) -> DesiredInterface | None:
        """Forget an interface; its addresses become retired (removed unless the link goes too)."""
        iface = self.remove(key)
        if iface is not None:
            self.retire(iface, iface.addresses())
        return iface

    def attach(self, key: Key, owner: str, caller: str | None) -> bool:
        """Add (or refresh) owner's reference; True when it is new. The latest Attach decides the binding."""
        iface = self.interfaces[key]
        iface.linger_until = None
        existing = iface.owners.get(owner)
        if existing is not None:
            if existing.caller != caller:
                iface.set_owner(owner, replace(existing, caller=caller))
            return False
        iface.set_owner(owner, Owner(owner, caller))
        return True

    def detach(self, key: Key, owner: str) -> Owner | None:
        """Drop owner's reference and everything it added; None when it was not attached."""
        iface = self.interfaces[key]
        gone = iface.owners.get(owner)
        if gone is not None:
            iface.set_owner(owner, None)
            self.retire(iface, gone.addresses)
        return gone

    def add_address(self, key: Key, owner: str, cidr: str, *, on_link: bool) -> bool:
        """Owner holds ``cidr``; ``on_link``: the kernel already has it. True when new for that owner."""
        iface = self.interfaces[key]
        retired = self.retired.get(key)
        if on_link and not iface.holds_address(cidr) and (retired is None or cidr not in retired):
            iface.preexisting = iface.preexisting | {cidr}
        if retired is not None:
            retired.discard(cidr)
        holder = iface.owners[owner]
        if cidr in holder.addresses:
            return False
        iface.set_owner(owner, replace(holder, addresses=holder.addresses | {cidr}))
        return True

    def hold_created(self, key: Key, cidrs: set[str], on_link: set[str]) -> None:
        """CreateInterface's ``addresses``: held by the interface itself until DeleteInterface."""
        iface = self.interfaces[key]
        retired = self.retired.get(key, set())
        for cidr in cidrs:
            if iface.holds_address(cidr):
                continue
            if cidr in on_link and cidr not in retired:
                iface.preexisting = iface.preexisting | {cidr}
            retired.discard(cidr)
        iface.created_addresses = frozen(iface.created_addresses | cidrs)

    def remove_address(self, key: Key, owner: str, cidr: str) -> bool:
        iface = self.interfaces[key]
        holder = iface.owners.get(owner)
        if holder is None or cidr not in holder.addresses:
            return False
        iface.set_owner(owner, replace(holder, addresses=frozen(holder.addresses - {cidr})))
        self.retire(iface, {cidr})
        return True

    def add_route(self, key: Key, owner: str, request: RouteRequest) -> bool:
        iface = self.interfaces[key]
        holder = iface.owners[owner]
        if request in holder.routes:
            return False
        iface.set_owner(owner, replace(holder, routes=holder.routes | {request}))
        return True

    def remove_route(self, key: Key, owner: str, pattern: RouteRequest) -> int:
        """Drop the owner's requests matching ``pattern`` (None options are wildcards); how many."""
        iface = self.interfaces[key]
        holder = iface.owners.get(owner)
        if holder is None:
            return 0
        gone = {r for r in holder.routes if r.matches(pattern)}
        if gone:
            iface.set_owner(owner, replace(holder, routes=holder.routes - gone or NO_REQUESTS))
        return len(gone)

    def retire(self, iface: DesiredInterface, addresses: set[str] | frozenset[str]) -> None:
        """``addresses`` lost a holder: the ones nobody holds now are to be removed from the link."""
        kept = iface.key in self.interfaces
        for cidr in addresses:
            if kept and iface.holds_address(cidr):
                continue
            if cidr in iface.preexisting:
                iface.preexisting = frozen(iface.preexisting - {cidr})  # it was not ours: leave it on the link
            else:
                self.retired.setdefault(iface.key, set()).add(cidr)

    def forget_retired(self, key: Key) -> None:
        self.retired.pop(key, None)

    # --- persistence ---------------------------------------------------------

    def persisted(self, key: Key) -> dict | None:
        """What the state file keeps of one interface; None when nothing (gone, or only configured)."""
        iface = self.interfaces.get(key)
        if iface is None:
            return None
        if iface.static and not iface.explicit and not iface.owners and not iface.created_addresses:
            return None  # the configuration file brings it back
        return iface.to_json()

    def persisted_head(self, key: Key) -> dict | None:
        """``persisted(key)`` without its owners; None when that is None."""
        iface = self.interfaces.get(key)
        if iface is None or (iface.static and not iface.explicit and not iface.owners and not iface.created_addresses):
            return None
        return iface.head_json()

    def persisted_owners(self, key: Key, names: Iterable[str] | None = None) -> dict[str, dict | None]:
        """What ``persisted(key)`` keeps of each owner in ``names`` (None: every owner); None
        for one that is not attached."""
        iface = self.interfaces.get(key)
        owners = {} if iface is None else iface.owners
        chosen = owners if names is None else names
        return {name: (o.to_json() if (o := owners.get(name)) is not None else None) for name in chosen}

    def owner_count(self, key: Key) -> int:
        iface = self.interfaces.get(key)
        return 0 if iface is None else len(iface.owners)

    def persisted_keys(self) -> list[Key]:
        return list(self.interfaces) + [k for k in self.retired if k not in self.interfaces]

    def retired_json(self, key: Key) -> list[str]:
        return sorted(self.retired.get(key, ()))

    def namespaces_json(self) -> list[str]:
        return sorted(n for n in self.namespaces if n is not None)

    def to_json(self) -> dict:
        """The runtime promises; static interfaces are saved only for what runtime callers added."""
        interfaces = [d for d in map(self.persisted, self.interfaces) if d is not None]
        interfaces.sort(key=lambda d: (d["netns"] or "", d["name"]))
        return {
            "version": 1,
            "interfaces": interfaces,
            "retired": [
                {"netns": k[0], "name": k[1], "addresses": sorted(v)}
                for k, v in sorted(self.retired.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
                if v
            ],
            "namespaces": self.namespaces_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "DesiredState":
        state = cls()
        for item in data.get("interfaces", ()):
            state.put(DesiredInterface.from_json(item))
        for item in data.get("retired", ()):
            state.retired[(item.get("netns"), item["name"])] = set(item.get("addresses", ()))
        state.namespaces.update(data.get("namespaces", ()))
        return state
