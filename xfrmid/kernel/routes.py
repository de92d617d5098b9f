"""Routes through an interface, IPv4 and IPv6, any table, carrying xfrmid's protocol.

Every route xfrmid adds has rtm_protocol = XFRMID_PROTO; ``own_routes``
reports only those (the kernel filters the dump by protocol) and removal
names the protocol too, so a foreign route to the same prefix is never
touched. Specs are normalised (``normalize``) so sets compare: a metric
equal to the family's default (IPv4 0, IPv6 1024, which IPv6 also makes
of 0) is None, as if it had not been given.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELROUTE, RTM_GETROUTE, RTM_NEWROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ..errors import Conflict, InvalidArgument, where
from ..naming import check_ifname, check_u32
from ..validate import family_of, packed_prefix, parse_address, parse_network
from . import nlattrs
from .netlink import F_CREATE, F_REQ, RTMSG, attr, u32
from . import link_msgs
from .links import index_of, names_of
from .nlerrors import code_of, translate
from .objects import MAIN_TABLE, XFRMID_PROTO, RouteSpec

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1
DEFAULT_METRIC = {socket.AF_INET: 0, socket.AF_INET6: 1024}


def normalize(spec: RouteSpec) -> RouteSpec:
    """Validate a RouteSpec and put it in the form own_routes reports."""
    dst = parse_network(spec.dst)
    check_ifname(spec.dev)
    table = check_u32("Routing table", spec.table)
    if table == 0:
        raise InvalidArgument("Routing table 0 is not a table; use 1 to 4294967295 (254 is main).")
    src = None
    if spec.src is not None:
        src = parse_address("Source address", spec.src)
        if family_of(src) != family_of(dst):
            raise InvalidArgument(f"Source address {src} is not of the same family as destination {dst}.")
    metric = spec.metric
    if metric is not None:
        metric = check_u32("Metric", metric)
        # IPv6 turns 0 into its default 1024; both mean "not given"
        if metric in (0, DEFAULT_METRIC[family_of(dst)]):
            metric = None
    return replace(spec, dst=dst, table=table, src=src, metric=metric)


def describe(spec: RouteSpec) -> str:
    text = f"route to {spec.dst} via {spec.dev!r}"
    if spec.table != MAIN_TABLE:
        text += f" in table {spec.table}"
    return text


_RTA_DST, _RTA_OIF, _RTA_PRIORITY, _RTA_PREFSRC, _RTA_TABLE = 1, 4, 6, 7, 15


def _message(spec: RouteSpec, oif: int, adding: bool) -> bytes:
    """The body of an RTM_NEWROUTE/RTM_DELROUTE for ``spec`` through ``oif``, as bytes
    (pyroute2's encoder was a fifth of a hub connection's time, bench/README.md)."""
    family, packed, prefixlen = packed_prefix(spec.dst)
    table = spec.table if spec.table < 256 else 0  # RT_TABLE_UNSPEC + RTA_TABLE
    scope = RT_SCOPE_LINK if adding else RT_SCOPE_NOWHERE
    body = [RTMSG.pack(family, prefixlen, 0, 0, table, XFRMID_PROTO, scope, RTN_UNICAST, 0),
            u32(_RTA_TABLE, spec.table), u32(_RTA_OIF, oif)]
    if prefixlen:
        body.append(attr(_RTA_DST, packed))
    if spec.src is not None:
        body.append(attr(_RTA_PREFSRC, socket.inet_pton(family, spec.src)))
    # A removal without RTA_PRIORITY removes the lowest metric of that prefix,
    # which may be another owner's route: IPv6 names its default exactly.
    # IPv4's default 0 reads as "any" to the kernel: remove_route checks first.
    metric = spec.metric if spec.metric is not None else DEFAULT_METRIC[family]
    if metric:
        body.append(u32(_RTA_PRIORITY, metric))
    return b"".join(body)


_ROUTE_ATTRS = {
    family: {_RTA_DST: ip, _RTA_OIF: nlattrs.u32, _RTA_PRIORITY: nlattrs.u32, _RTA_PREFSRC: ip,
             _RTA_TABLE: nlattrs.u32}
    for family, ip in nlattrs.ADDRESS.items()
}


def _parse(data: bytes, pos: int, end: int) -> tuple[RouteSpec, int] | None:
    """(RouteSpec with dev "", oif) of one raw RTM_NEWROUTE carrying xfrmid's protocol."""
    family, dst_len, _src_len, _tos, table, proto, _scope, _rtype, _flags = RTMSG.unpack_from(data, pos)
    if proto != XFRMID_PROTO or family not in DEFAULT_METRIC:
        return None
    attrs = nlattrs.pick(data, pos + 12, end, _ROUTE_ATTRS[family])
    dst = attrs.get(_RTA_DST) or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    metric = attrs.get(_RTA_PRIORITY, 0)
    # IPv4: inet_ntop's text is ipaddress's, and the kernel keeps no host bits in a
    # route's destination; IPv6 text differs for v4-mapped forms: normalised there.
    spec = RouteSpec(
        dst=f"{dst}/{dst_len}" if family == socket.AF_INET else ipaddress.ip_network(f"{dst}/{dst_len}").with_prefixlen,
        dev="",
        table=attrs.get(_RTA_TABLE, table),
        src=attrs.get(_RTA_PREFSRC),
        metric=None if metric == DEFAULT_METRIC[family] else metric,
    )
    return spec, attrs.get(_RTA_OIF, 0)


async def own_routes(
    conn, netns: str | None, dev: str | None = None, ifindex: int | None = None,
    known: dict[int, str] | None = None,
) -> set[RouteSpec]:
    """xfrmid's routes, all tables; only those through ``dev`` if given (``ifindex``
    saves its lookup). The kernel filters the dump by protocol (and device).
    ``known``: device names by ifindex the caller just read (the xfrm links of a
    reconcile's dump): only other devices' names are looked up."""
    query = rtmsg()
    query["family"] = socket.AF_UNSPEC
    query["proto"] = XFRMID_PROTO  # strict dump: the kernel filters by protocol, all tables
    if dev is not None:
        if ifindex is None:
            found_dev = await link_msgs.get_link(conn, name=dev)
            if found_dev is None:
                return set()  # no device, no route through it
            ifindex = link_msgs.index(found_dev)
        query["attrs"] = [("RTA_OIF", ifindex)]
    try:
        raw = await conn.raw_dump(query, RTM_GETROUTE)
    except NetlinkError as exc:
        if dev is not None and code_of(exc) == 19:  # ENODEV: the device went meanwhile
            return set()
        raise translate(exc, f"Listing xfrmid's routes{where(netns)}") from None
    found = [parsed for mtype, data, pos, end in raw if mtype == RTM_NEWROUTE and (parsed := _parse(data, pos, end))]
    if dev is not None:
        return {replace(spec, dev=dev) for spec, oif in found if oif == ifindex}
    names = dict(known or {})
    if missing := {oif for _, oif in found if oif and oif not in names}:
        names.update(await names_of(conn, missing))
    return {replace(spec, dev=names.get(oif, "")) for spec, oif in found}


async def add_route(conn, netns: str | None, spec: RouteSpec, ifindex: int | None = None) -> None:
    """Add the route; fine if xfrmid's identical route is there, Conflict if another is.
    ``ifindex``: the device's index as last seen, which saves looking it up by name (a get
    was 8 % of an AddRoute under emulation); if that device is gone, the name decides."""
    spec = normalize(spec)
    oif = ifindex if ifindex is not None else await index_of(conn, netns, spec.dev, what="Interface")
    try:
        await conn.transact(RTM_NEWROUTE, _message(spec, oif, adding=True), F_CREATE)
    except NetlinkError as exc:
        doing = f"Adding {describe(spec)}{where(netns)}"
        code = code_of(exc)
        if code == 19 and ifindex is not None:  # ENODEV: the index seen is stale
            return await add_route(conn, netns, spec)
        if code == 17:  # EEXIST
            if spec in await own_routes(conn, netns):
                return
            raise Conflict(
                f"{doing} failed: another route to {spec.dst} with the same metric is already in "
                f"table {spec.table}."
            ) from None
        if code == 22 and spec.src is not None:
            raise InvalidArgument(
                f"{doing} failed: the kernel rejected it; is source address {spec.src} "
                f"assigned to an interface{where(netns) or ' of this host'}?"
            ) from None
        raise translate(exc, doing) from None


async def remove_route(conn, netns: str | None, spec: RouteSpec, *, sole: bool = False,
                       ifindex: int | None = None) -> None:
    """Remove xfrmid's route; a missing route (or device) is fine. ``sole``: no other route
    of xfrmid's to this prefix through this device in this table is wanted (see below).
    ``ifindex``: as for add_route; a removal that finds nothing through it asks by name."""
    spec = normalize(spec)
    checked = ":" not in spec.dst and spec.metric is None and not sole
    if checked:
        ifindex = None  # the read below must see the device the name holds now
    if ifindex is None:
        dev = await link_msgs.get_link(conn, name=spec.dev)
        if dev is None:
            return  # the kernel removed the route together with its device
        oif = link_msgs.index(dev)
    else:
        oif = ifindex
    if checked:
        # IPv4 reads metric 0 as "any metric": if ours is gone, the kernel would
        # remove our route to the same prefix with the next metric instead (with
        # ``sole`` any such route is an unwanted one of ours: no read of them all first).
        if spec not in await own_routes(conn, netns, spec.dev, oif):
            return
    try:
        await conn.transact(RTM_DELROUTE, _message(spec, oif, adding=False), F_REQ)
    except NetlinkError as exc:
        code = code_of(exc)
        if code in (3, 2, 19):  # ESRCH/ENOENT/ENODEV: not there
            if ifindex is not None:  # through that index: the name decides (it may be stale)
                return await remove_route(conn, netns, spec, sole=sole)
            return
        raise translate(exc, f"Removing {describe(spec)}{where(netns)}") from None
