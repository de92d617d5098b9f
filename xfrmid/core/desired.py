"""The desired state of one interface: who holds it and what each holder added
(the state of them all, with its indexes and save points: desired_state.py).

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

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..kernel.objects import LinkSpec, RouteSpec, RuleSpec
from ..naming import output_mark
from .holdings import Holdings
from .routes_policy import PeerPolicy, RouteRequest, expand
from .sorted_items import with_item

Key = tuple[str | None, str]  # (netns or None for the daemon's own, interface name)

OWNER_MAX = 255

# Shared by every interface without such addresses (most: an empty set costs
# 216 bytes, three per interface at 10,000 interfaces). The interface's
# address sets are frozensets, replaced on change, so sharing is safe.
NO_ADDRESSES: frozenset[str] = frozenset()
NO_REQUESTS: frozenset[RouteRequest] = frozenset()
_NO_RULES: frozenset[RuleSpec] = frozenset()


def frozen(items) -> frozenset[str]:
    """A frozenset of addresses (the empty one shared)."""
    return frozenset(items) if items else NO_ADDRESSES


def check_owner(owner: object) -> str:
    """An owner label (pluto connection name, NM UUID...): 1..255 printable characters."""
    if not isinstance(owner, str) or not owner.strip():
        raise InvalidArgument(f"Owner {owner!r} is empty or not a string.")
    if len(owner.encode()) > OWNER_MAX or not owner.isprintable():
        raise InvalidArgument(f"Owner {owner!r} is longer than {OWNER_MAX} bytes or has control characters.")
    return owner


@dataclass(frozen=True, slots=True)
class Owner:
    """One Attach reference and what that owner added since: a value, replaced on change
    (``DesiredInterface.set_owner``), so a save point keeps the old one as it is."""

    name: str
    caller: str | None = None  # D-Bus unique name when bound to the caller's connection
    addresses: frozenset[str] = NO_ADDRESSES
    routes: frozenset[RouteRequest] = NO_REQUESTS

    def __post_init__(self) -> None:
        if type(self.addresses) is not frozenset:
            object.__setattr__(self, "addresses", frozen(self.addresses))
        if type(self.routes) is not frozenset:
            object.__setattr__(self, "routes", frozenset(self.routes) if self.routes else NO_REQUESTS)

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
        routes = data.get("routes")
        return cls(name, data.get("caller"), frozen(data.get("addresses")),
                   frozenset(map(RouteRequest.from_json, routes)) if routes else NO_REQUESTS)


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
    # what the owners hold, counted (holdings.py): kept from BIG owners on, or during a call
    _holdings: Holdings | None = field(default=None, repr=False, compare=False)
    # while a call's save point is open: each owner it replaced, as it was before (None: absent)
    _undo: dict[str, Owner | None] | None = field(default=None, repr=False, compare=False)

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

    @property
    def holdings(self) -> Holdings | None:
        return self._holdings

    def set_owner(self, name: str, owner: Owner | None) -> None:
        """Owner ``name`` is ``owner`` from now on (None: not attached). Every change of an
        owner goes through here: the counts and a call's save point follow it."""
        old = self.owners.get(name)
        undo = self._undo
        if undo is not None and name not in undo:
            undo[name] = old
        if owner is None:
            self.owners.pop(name, None)
        else:
            self.owners[name] = owner
        if self._holdings is not None:
            self._holdings.replace(name, old, owner)

    def hold(self) -> Holdings:
        """The interface's Holdings, counted now if it keeps none."""
        if self._holdings is None:
            self._holdings = Holdings(self.owners)
        return self._holdings

    def holds_address(self, cidr: str) -> bool:
        """Whether anyone holds ``cidr`` (``cidr in addresses()``, without building the set)."""
        if cidr in self.created_addresses or cidr in self.static_addresses:
            return True
        if self._holdings is not None:
            return cidr in self._holdings.addresses
        return any(cidr in owner.addresses for owner in self.owners.values())

    def addresses(self) -> set[str]:
        held = set(self.created_addresses) | self.static_addresses
        if self._holdings is not None:
            held.update(self._holdings.addresses)
            return held
        for owner in self.owners.values():
            held |= owner.addresses
        return held

    def route_requests(self) -> set[RouteRequest]:
        if self._holdings is not None:
            return set(self._holdings.requests)
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
        if self._holdings is not None:
            exp = self._holdings.expanded(self.name, self.if_id, mask, peer)
            return frozenset(exp.routes), frozenset(exp.rules) if exp.rules else _NO_RULES
        # the cache key: the owners' route sets, which are values replaced on change (a tuple
        # compares them by identity first: no sorting, no hashing of the requests per call)
        held = tuple(owner.routes for owner in self.owners.values())
        cached = self._expanded
        if cached is not None and cached[0] == mask and cached[1] == peer and cached[2] == held:
            return cached[3]
        mark, mask_ = self.mark(mask)
        routes: set[RouteSpec] = set()
        rules: set[RuleSpec] = set()
        for request in frozenset().union(*held):
            r, q = expand(request, self.name, mark, mask_, peer)
            routes.update(r)
            rules.update(q)
        result = (frozenset(routes), frozenset(rules) if rules else _NO_RULES)
        self._expanded = (mask, peer, held, result)
        return result

    def listing(self, mask: int, peer: PeerPolicy, *, routes: bool = True
                ) -> tuple[Sequence[str], Sequence[str], Sequence[tuple]]:
        """The view's sorted owners, addresses and routes (destination, table, src; none when
        not ``routes``): from the counts when the interface keeps them (no sorting), else sorted now."""
        holdings = self._holdings
        if holdings is None:
            specs = self.kernel_routes(mask, peer)[0] if routes else ()
            return (tuple(sorted(self.owners)), tuple(sorted(self.addresses())),
                    tuple(sorted((r.dst, r.table, r.src or "") for r in specs)))
        addresses = holdings.address_list
        for cidr in self.created_addresses | self.static_addresses:
            if cidr not in addresses:
                addresses = with_item(addresses, cidr)
        listed = holdings.expanded(self.name, self.if_id, mask, peer).listed if routes else ()
        return holdings.owners, addresses, listed

    FIELDS = ("link", "mtu", "external", "owned", "explicit", "static", "created_addresses",
              "static_addresses", "preexisting", "linger_until")  # what a save point keeps besides the owners

    def copy(self) -> "DesiredInterface":
        """An independent copy (the owners are values: shared); no counts, no save point."""
        twin = DesiredInterface(self.netns, self.name, self.if_id, owners=dict(self.owners),
                                _expanded=self._expanded)
        for name in self.FIELDS:
            setattr(twin, name, getattr(self, name))
        return twin

    def to_json(self) -> dict:
        data = self.head_json()
        data["owners"] = {name: o.to_json() for name, o in sorted(self.owners.items())}
        return data

    def head_json(self) -> dict:
        """``to_json`` without the owners (the state file's journal writes them one by one)."""
        data: dict = {
            "netns": self.netns,
            "name": self.name,
            "if_id": self.if_id,
            "owned": self.owned,
            "explicit": self.explicit,
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
            created_addresses=frozen(data.get("created_addresses")),
            preexisting=frozen(data.get("preexisting")),
            linger_until=data.get("linger_until"),
        )
