"""What a route request becomes in the kernel: the default split and the peer pattern.

Pure functions. A caller asks for a route (destination plus options); the
kernel gets one or more RouteSpecs and, with ``peer``, the peer pattern's rules:

- ``0.0.0.0/0`` and ``::/0`` never replace the default route: they become the
  two halves ``0.0.0.0/1`` + ``128.0.0.0/1`` (``::/1`` + ``8000::/1``), which
  win over the default by being longer prefixes and vanish with the interface.
- ``peer`` (the IKE peer, inside the destination): the route goes into the
  dedicated peer table, and four rule priorities from ``PeerPolicy.priority``
  (P, 100 by default) make the table apply to everything but the peers' own
  ESP/IKE, for any number of peers, per address family::

      P:   fwmark 0/MASK goto P+2                   gate: a packet without an output mark skips the next rules
      P+1: to DEST fwmark MARK/MASK goto P+3        skip: one per peer route; a full tunnel's has no "to"
      P+2: lookup TABLE                             the peer routes (a miss falls through to P+3)
      P+3: nop                                      landing place: the rules after it, as without xfrmid

  A packet carrying an interface's output mark, to a destination that
  interface routes with ``peer`` (its ESP and IKE), jumps past the peer table;
  every other packet looks it up, and anything not routed there misses and
  goes on as if xfrmid were not there. For one peer that is exactly what the
  design notes' ``to DEST not fwmark MARK/MASK lookup TABLE`` does; unlike that
  inverted rule, one peer's rules never catch another peer's ESP. The gate is
  only a short cut: unmarked packets need not walk one skip rule per peer.
  The gate, lookup and landing rules are shared by every peer route of the
  namespace (``shared_rules``); each skip rule belongs to its interface's mark.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..kernel.objects import MAIN_TABLE, RouteSpec, RuleSpec
from ..naming import check_u32
from ..validate import family_of, parse_address, parse_network

# Tables the kernel reserves: 0 is "unspecified", 253 "default", 255 "local".
_RESERVED_TABLES = {0: "unspecified", 253: "default", 255: "local"}
_REQUEST_FIELDS = ("destination", "table", "src", "metric", "peer")  # RouteRequest's, in JSON order


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """One route as an owner asked for it (normalised), before expansion."""

    destination: str
    table: int | None = None  # None: main, or the peer table with ``peer``
    src: str | None = None
    metric: int | None = None
    peer: str | None = None

    def to_json(self) -> dict:
        return {k: v for k in _REQUEST_FIELDS if (v := getattr(self, k)) is not None}

    def sort_key(self) -> tuple:
        """A total order: unset options sort first (tuple order fails on None)."""
        return (
            self.destination,
            -1 if self.table is None else self.table,
            self.src or "",
            -1 if self.metric is None else self.metric,
            self.peer or "",
        )

    @classmethod
    def from_json(cls, data: dict) -> "RouteRequest":
        # positional, in _REQUEST_FIELDS' order: 10,000 of these at start-up
        get = data.get
        return cls(get("destination"), get("table"), get("src"), get("metric"), get("peer"))

    def matches(self, other: "RouteRequest") -> bool:
        """True when ``other`` (a removal pattern) selects this request: None options are wildcards."""
        if other.destination != self.destination:
            return False
        for field in ("table", "src", "metric", "peer"):
            wanted = getattr(other, field)
            if wanted is not None and wanted != getattr(self, field):
                return False
        return True


def check_table(value: object) -> int:
    table = check_u32("Routing table", value)
    if table in _RESERVED_TABLES:
        raise InvalidArgument(
            f"Routing table {table} is the kernel's {_RESERVED_TABLES[table]} table; use 1 to 252 or above 255."
        )
    return table


def route_request(
    destination: object,
    *,
    table: object = None,
    src: object = None,
    metric: object = None,
    peer: object = None,
) -> RouteRequest:
    """Validate AddRoute/RemoveRoute arguments into a RouteRequest."""
    dst = parse_network(destination)
    tbl = None if table is None else check_table(table)
    met = None if metric is None else check_u32("Route metric", metric)
    source = None
    if src is not None:
        source = parse_address("Source address", src)
        if family_of(source) != family_of(dst):
            raise InvalidArgument(f"Source address {source!r} is not of the same family as destination {dst!r}.")
    peer_addr = None
    if peer is not None:
        peer_addr = parse_address("Peer address", peer)
        if family_of(peer_addr) != family_of(dst) or ipaddress.ip_address(peer_addr) not in ipaddress.ip_network(dst):
            raise InvalidArgument(f"Peer address {peer_addr!r} is not inside destination {dst!r}.")
    return RouteRequest(destination=dst, table=tbl, src=source, metric=met, peer=peer_addr)


def effective_metric(spec: RouteSpec) -> int:
    """The metric the kernel reports: IPv6 turns "none" and 0 into 1024, IPv4 keeps 0."""
    if spec.metric:
        return spec.metric
    return 1024 if ":" in spec.dst else 0


def route_key(spec: RouteSpec) -> tuple:
    """What makes two routes the same for xfrmid (the kernel's defaults filled in)."""
    return (spec.dst, spec.dev, spec.table, spec.src, effective_metric(spec))


def split_default(destination: str) -> tuple[str, ...]:
    """The prefixes actually installed for a destination: /0 becomes its two /1 halves."""
    if destination == "0.0.0.0/0":
        return ("0.0.0.0/1", "128.0.0.0/1")
    if destination == "::/0":
        return ("::/1", "8000::/1")
    return (destination,)


@dataclass(frozen=True)
class PeerPolicy:
    """Where the peer pattern lives (Settings.peer_table / peer_rule_priority): its table, and
    the first of the four rule priorities it uses (gate, skip, lookup, landing)."""

    table: int = 50
    priority: int = 100

    @property
    def skip(self) -> int:
        return self.priority + 1

    @property
    def lookup(self) -> int:
        return self.priority + 2

    @property
    def landing(self) -> int:
        return self.priority + 3


def shared_rules(family: int, table: int, mask: int, peer: PeerPolicy) -> tuple[RuleSpec, ...]:
    """The gate, lookup and landing rules every peer route of ``family`` into ``table`` needs."""
    return (
        RuleSpec(priority=peer.priority, table=0, family=family, fwmark=0, fwmask=mask,
                 action="goto", goto=peer.lookup),
        RuleSpec(priority=peer.lookup, table=table, family=family),
        RuleSpec(priority=peer.landing, table=0, family=family, action="nop"),
    )


def is_shared(rule: RuleSpec) -> bool:
    """A rule no interface's mark selects (gate, lookup, landing): held by every peer route
    of its namespace together, not by one interface. The skip rules carry a mark."""
    return not rule.fwmark


def expand(
    request: RouteRequest, dev: str, mark: int, mask: int, peer: PeerPolicy = PeerPolicy()
) -> tuple[tuple[RouteSpec, ...], tuple[RuleSpec, ...]]:
    """Kernel routes and rules for one request on interface ``dev`` with output mark/mask."""
    if request.peer is None:
        table = request.table if request.table is not None else MAIN_TABLE
    else:
        table = request.table if request.table is not None else peer.table
    routes = tuple(
        RouteSpec(dst=prefix, dev=dev, table=table, src=request.src, metric=request.metric)
        for prefix in split_default(request.destination)
    )
    if request.peer is None:
        return routes, ()
    # One skip rule for the whole destination, never one per half of a split default.
    net = ipaddress.ip_network(request.destination)
    family = family_of(request.destination)
    skip = RuleSpec(
        priority=peer.skip,
        table=0,
        family=family,
        dst=None if net.prefixlen == 0 else request.destination,
        fwmark=mark,
        fwmask=mask,
        action="goto",
        goto=peer.landing,
    )
    return routes, (skip, *shared_rules(family, table, mask, peer))
