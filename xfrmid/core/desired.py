"""The desired state: which interfaces should exist, who holds them, and what each holder added.

Pure data and pure operations, no kernel access. Reference counting is by set
union: an address, route or rule is wanted while at least one holder's
requests produce it, so the same request twice from one owner counts once and
a kernel object disappears only when its last holder lets go.

Holders of an interface:
- ``explicit``: CreateInterface pinned it (stays until DeleteInterface);
- ``static``: the configuration file declares it (stays while declared);
- ``owners``: Attach references; an on-demand interface (not pinned) is
  wanted while it has owners, or while it lingers after the last Detach.
``owned`` says whether xfrmid created the kernel link (and so may delete it);
an adopted interface (owned=False) is never deleted by xfrmid.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..kernel.objects import LinkSpec, RouteSpec, RuleSpec
from ..naming import output_mark
from .routes_policy import PeerPolicy, RouteRequest, expand

Key = tuple[str | None, str]  # (netns or None for the daemon's own, interface name)

OWNER_MAX = 255

# Shared by every interface without such addresses (most: an empty set costs
# 216 bytes, three per interface at 10,000 interfaces). The interface's
# address sets are frozensets, replaced on change, so sharing is safe.
NO_ADDRESSES: frozenset[str] = frozenset()
_NO_RULES: frozenset[RuleSpec] = frozenset()


def _frozen(items) -> frozenset[str]:
    return frozenset(items) if items else NO_ADDRESSES


def check_owner(owner: object) -> str:
    """An owner label (pluto connection name, NM UUID...): 1..255 printable characters."""
    if not isinstance(owner, str) or not owner.strip():
        raise InvalidArgument(f"Owner {owner!r} is empty or not a string.")
    if len(owner.encode()) > OWNER_MAX or not owner.isprintable():
        raise InvalidArgument(f"Owner {owner!r} is longer than {OWNER_MAX} bytes or has control characters.")
    return owner


@dataclass(slots=True)
class Owner:
    """One Attach reference and what that owner added since."""

    name: str
    caller: str | None = None  # D-Bus unique name when bound to the caller's connection
    addresses: set[str] = field(default_factory=set)
    routes: set[RouteRequest] = field(default_factory=set)

    def to_json(self) -> dict:
        data: dict = {
            "addresses": sorted(self.addresses),
            "routes": [r.to_json() for r in sorted(self.routes, key=RouteRequest.sort_key)],
        }
        if self.caller is not None:
            data["caller"] = self.caller
        return data

    @classmethod
    def from_json(cls, name: str, data: dict) -> "Owner":
        return cls(
            name=name,
            caller=data.get("caller"),
            addresses=set(data.get("addresses", ())),
            routes={RouteRequest.from_json(r) for r in data.get("routes", ())},
        )

    def copy(self) -> "Owner":
        """Independent sets; their items (strings, frozen RouteRequests) are shared."""
        return Owner(self.name, self.caller, set(self.addresses), set(self.routes))


def _own(items: set[str] | frozenset[str]) -> set[str] | frozenset[str]:
    """A copy of a set that may be changed in place; an immutable one is shared."""
    return items if isinstance(items, frozenset) else set(items)



# slots: one of each per interface and owner (10,000s of them at scale); an
# instance __dict__ would cost ~100 bytes more each.
@dataclass(slots=True)
class DesiredInterface:
    netns: str | None
    name: str
    if_id: int
    link: str | None = None
    mtu: int | None = None
    external: bool = False
    owned: bool = True
    explicit: bool = False
    static: bool = False
    owners: dict[str, Owner] = field(default_factory=dict)
    # immutable (replaced on change: see NO_ADDRESSES)
    created_addresses: frozenset[str] = NO_ADDRESSES  # CreateInterface's `addresses`
    static_addresses: frozenset[str] = NO_ADDRESSES  # the configuration's addresses
    preexisting: frozenset[str] = NO_ADDRESSES  # were on the link before anyone asked: never removed
    linger_until: float | None = None  # wall-clock deadline of an unused on-demand interface
    _expanded: tuple | None = field(default=None, repr=False, compare=False)  # kernel_routes' last answer

    @property
    def key(self) -> Key:
        return (self.netns, self.name)

    @property
    def pinned(self) -> bool:
        return self.explicit or self.static

    @property
    def wanted(self) -> bool:
        return self.pinned or bool(self.owners) or self.linger_until is not None

    def mark(self, mask: int) -> tuple[int, int]:
        return output_mark(self.if_id, mask)

    def addresses(self) -> set[str]:
        held = set(self.created_addresses) | self.static_addresses
        for owner in self.owners.values():
            held |= owner.addresses
        return held

    def route_requests(self) -> set[RouteRequest]:
        held: set[RouteRequest] = set()
        for owner in self.owners.values():
            held |= owner.routes
        return held

    def link_spec(self, default_mtu: int | None = None) -> LinkSpec:
        return LinkSpec(
            name=self.name,
            if_id=self.if_id,
            link=self.link,
            mtu=self.mtu if self.mtu is not None else default_mtu,
            up=True,
            external=self.external,
        )

    def kernel_routes(self, mask: int, peer: PeerPolicy) -> tuple[frozenset[RouteSpec], frozenset[RuleSpec]]:
        """What the owners' route requests become in the kernel (kept until they or the settings change:
        a reconcile, the published view and the route index all ask for them)."""
        # the cache key: a sorted tuple (one request: 48 bytes, a frozenset 216)
        requests = tuple(sorted(self.route_requests(), key=RouteRequest.sort_key))
        cached = self._expanded
        if cached is not None and cached[0] == mask and cached[1] == peer and cached[2] == requests:
            return cached[3]
        mark, mask_ = self.mark(mask)
        routes: set[RouteSpec] = set()
        rules: set[RuleSpec] = set()
        for request in requests:
            r, q = expand(request, self.name, mark, mask_, peer)
            routes.update(r)
            rules.update(q)
        result = (frozenset(routes), frozenset(rules) if rules else _NO_RULES)
        self._expanded = (mask, peer, requests, result)
        return result

    def copy(self) -> "DesiredInterface":
        """A copy no mutation of this one reaches (a call's save point): every container is
        copied, the immutable items in them shared. copy.deepcopy did the same in a
        quarter of an Attach's CPU, most of it walking the immutable ``_expanded`` cache."""
        return DesiredInterface(
            netns=self.netns,
            name=self.name,
            if_id=self.if_id,
            link=self.link,
            mtu=self.mtu,
            external=self.external,
            owned=self.owned,
            explicit=self.explicit,
            static=self.static,
            owners={name: owner.copy() for name, owner in self.owners.items()},
            created_addresses=_own(self.created_addresses),
            static_addresses=_own(self.static_addresses),
            preexisting=_own(self.preexisting),
            linger_until=self.linger_until,
            _expanded=self._expanded,
        )

    def to_json(self) -> dict:
        data: dict = {
            "netns": self.netns,
            "name": self.name,
            "if_id": self.if_id,
            "owned": self.owned,
            "explicit": self.explicit,
            "owners": {name: o.to_json() for name, o in sorted(self.owners.items())},
            "created_addresses": sorted(self.created_addresses),
            "preexisting": sorted(self.preexisting),
        }
        for key in ("link", "mtu", "linger_until"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.external:
            data["external"] = True
        return data

    @classmethod
    def from_json(cls, data: dict) -> "DesiredInterface":
        return cls(
            netns=data.get("netns"),
            name=data["name"],
            if_id=int(data["if_id"]),
            link=data.get("link"),
            mtu=data.get("mtu"),
            external=bool(data.get("external", False)),
            owned=bool(data.get("owned", True)),
            explicit=bool(data.get("explicit", False)),
            owners={n: Owner.from_json(n, o) for n, o in data.get("owners", {}).items()},
            created_addresses=_frozen(data.get("created_addresses")),
            preexisting=_frozen(data.get("preexisting")),
            linger_until=data.get("linger_until"),
        )


@dataclass(frozen=True, slots=True)
class SavePoint:
    """One interface's desired state and retired addresses, copied before a change."""

    key: Key
    iface: DesiredInterface | None
    retired: set[str] | None


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

    def savepoint(self, key: Key) -> "SavePoint":
        """What ``restore`` needs to undo any change of ``key`` (a call's save point)."""
        current = self.interfaces.get(key)
        retired = self.retired.get(key)
        return SavePoint(key, None if current is None else current.copy(), None if retired is None else set(retired))

    def restore(self, saved: "SavePoint") -> None:
        """Put ``saved.key`` back as it was at the save point."""
        self.remove(saved.key)
        if saved.iface is not None:
            self.put(saved.iface)
        if saved.retired is None:
            self.retired.pop(saved.key, None)
        else:
            self.retired[saved.key] = saved.retired

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
            existing.caller = caller
            return False
        iface.owners[owner] = Owner(name=owner, caller=caller)
        return True

    def detach(self, key: Key, owner: str) -> Owner | None:
        """Drop owner's reference and everything it added; None when it was not attached."""
        iface = self.interfaces[key]
        gone = iface.owners.pop(owner, None)
        if gone is not None:
            self.retire(iface, gone.addresses)
        return gone

    def add_address(self, key: Key, owner: str, cidr: str, *, on_link: bool) -> bool:
        """Owner holds ``cidr``; ``on_link``: the kernel already has it. True when new for that owner."""
        iface = self.interfaces[key]
        held = iface.addresses()
        if on_link and cidr not in held and cidr not in self.retired.get(key, ()):
            iface.preexisting = iface.preexisting | {cidr}
        self.retired.get(key, set()).discard(cidr)
        holder = iface.owners[owner]
        if cidr in holder.addresses:
            return False
        holder.addresses.add(cidr)
        return True

    def hold_created(self, key: Key, cidrs: set[str], on_link: set[str]) -> None:
        """CreateInterface's ``addresses``: held by the interface itself until DeleteInterface."""
        iface = self.interfaces[key]
        held = iface.addresses()
        retired = self.retired.get(key, set())
        for cidr in cidrs - held:
            if cidr in on_link and cidr not in retired:
                iface.preexisting = iface.preexisting | {cidr}
            retired.discard(cidr)
        iface.created_addresses = _frozen(iface.created_addresses | cidrs)

    def remove_address(self, key: Key, owner: str, cidr: str) -> bool:
        iface = self.interfaces[key]
        holder = iface.owners.get(owner)
        if holder is None or cidr not in holder.addresses:
            return False
        holder.addresses.discard(cidr)
        self.retire(iface, {cidr})
        return True

    def add_route(self, key: Key, owner: str, request: RouteRequest) -> bool:
        holder = self.interfaces[key].owners[owner]
        if request in holder.routes:
            return False
        holder.routes.add(request)
        return True

    def remove_route(self, key: Key, owner: str, pattern: RouteRequest) -> int:
        """Drop the owner's requests matching ``pattern`` (None options are wildcards); how many."""
        holder = self.interfaces[key].owners.get(owner)
        if holder is None:
            return 0
        gone = {r for r in holder.routes if r.matches(pattern)}
        holder.routes -= gone
        return len(gone)

    def retire(self, iface: DesiredInterface, addresses: set[str]) -> None:
        """``addresses`` lost a holder: the ones nobody holds now are to be removed from the link."""
        still = iface.addresses() if iface.key in self.interfaces else set()
        for cidr in addresses - still:
            if cidr in iface.preexisting:
                iface.preexisting = _frozen(iface.preexisting - {cidr})  # it was not ours: leave it on the link
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
