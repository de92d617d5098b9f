"""What a route request becomes in the kernel: the default split and the peer pattern.

Pure functions. A caller asks for a route (destination plus options); the
kernel gets one or more RouteSpecs and, with ``peer``, one RuleSpec:

- ``0.0.0.0/0`` and ``::/0`` never replace the default route: they become the
  two halves ``0.0.0.0/1`` + ``128.0.0.0/1`` (``::/1`` + ``8000::/1``), which
  win over the default by being longer prefixes and vanish with the interface.
- ``peer`` (the IKE peer, inside the destination) installs the design notes'
  pattern: the route goes into the dedicated peer table and a rule
  ``to <destination> not fwmark <mark>/<mask> lookup <table>`` sends everything
  but the marked ESP/IKE packets there, so traffic to the peer is tunnelled
  while the packets that carry the output mark leave by the underlying route.
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
    net = ipaddress.ip_network(dst)
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
        if family_of(peer_addr) != family_of(dst) or ipaddress.ip_address(peer_addr) not in net:
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
    """Where the peer pattern lives (Settings.peer_table / peer_rule_priority)."""

    table: int = 50
    priority: int = 100


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
    # One rule for the whole destination, never one per half: inverted rules
    # match everything outside their selector, so two of them would send marked
    # packets for one half into the tunnel through the other half's rule.
    net = ipaddress.ip_network(request.destination)
    rule = RuleSpec(
        priority=peer.priority,
        table=table,
        family=family_of(request.destination),
        dst=None if net.prefixlen == 0 else request.destination,
        fwmark=mark,
        fwmask=mask,
        invert=True,
    )
    return routes, (rule,)
