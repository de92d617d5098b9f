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

from ..errors import Conflict, InvalidArgument
from ..naming import check_ifname, check_u32
from ..validate import family_of, parse_address, parse_network
from .links import _names, get_msg, index_of
from .namespace import F_CREATE, F_REQ, dump, request, where
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


def _message(spec: RouteSpec, oif: int, adding: bool) -> rtmsg:
    net = ipaddress.ip_network(spec.dst)
    msg = rtmsg()
    msg["family"] = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    msg["dst_len"] = net.prefixlen
    msg["table"] = spec.table if spec.table < 256 else 0  # RT_TABLE_UNSPEC + RTA_TABLE
    msg["proto"] = XFRMID_PROTO
    msg["scope"] = RT_SCOPE_LINK if adding else RT_SCOPE_NOWHERE
    msg["type"] = RTN_UNICAST
    attrs: list = [("RTA_TABLE", spec.table), ("RTA_OIF", oif)]
    if net.prefixlen:
        attrs.append(("RTA_DST", str(net.network_address)))
    if spec.src is not None:
        attrs.append(("RTA_PREFSRC", spec.src))
    metric = spec.metric if spec.metric is not None else (DEFAULT_METRIC[msg["family"]] if adding else None)
    if metric is not None:
        attrs.append(("RTA_PRIORITY", metric))
    msg["attrs"] = attrs
    return msg


async def own_routes(ipr, netns: str | None) -> set[RouteSpec]:
    query = rtmsg()
    query["family"] = socket.AF_UNSPEC
    query["proto"] = XFRMID_PROTO  # strict dump: the kernel filters by protocol, all tables
    try:
        msgs = await dump(ipr, query, RTM_GETROUTE)
    except NetlinkError as exc:
        raise translate(exc, f"Listing xfrmid's routes{where(netns)}") from None
    raw = []
    for msg in msgs:
        if msg.get("header", {}).get("type") != RTM_NEWROUTE:
            continue
        if msg["proto"] != XFRMID_PROTO or msg["family"] not in DEFAULT_METRIC:
            continue
        raw.append(msg)
    names = await _names(ipr, {m.get_attr("RTA_OIF") for m in raw if m.get_attr("RTA_OIF")})
    routes: set[RouteSpec] = set()
    for msg in raw:
        family = msg["family"]
        dst = msg.get_attr("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        metric = msg.get_attr("RTA_PRIORITY") or 0
        routes.add(
            RouteSpec(
                dst=ipaddress.ip_network(f"{dst}/{msg['dst_len']}").with_prefixlen,
                dev=names.get(msg.get_attr("RTA_OIF"), ""),
                table=msg.get_attr("RTA_TABLE") or msg["table"],
                src=msg.get_attr("RTA_PREFSRC"),
                metric=None if metric == DEFAULT_METRIC[family] else metric,
            )
        )
    return routes


async def add_route(ipr, netns: str | None, spec: RouteSpec) -> None:
    """Add the route; fine if xfrmid's identical route is there, Conflict if another is."""
    spec = normalize(spec)
    oif = await index_of(ipr, netns, spec.dev, what="Interface")
    doing = f"Adding {describe(spec)}{where(netns)}"
    try:
        await request(ipr, _message(spec, oif, adding=True), RTM_NEWROUTE, F_CREATE)
    except NetlinkError as exc:
        code = code_of(exc)
        if code == 17:  # EEXIST
            if spec in await own_routes(ipr, netns):
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


async def remove_route(ipr, netns: str | None, spec: RouteSpec) -> None:
    """Remove xfrmid's route; a missing route (or device) is fine."""
    spec = normalize(spec)
    dev = await get_msg(ipr, name=spec.dev)
    if dev is None:
        return  # the kernel removed the route together with its device
    try:
        await request(ipr, _message(spec, dev["index"], adding=False), RTM_DELROUTE, F_REQ)
    except NetlinkError as exc:
        if code_of(exc) in (3, 2, 19):  # ESRCH/ENOENT/ENODEV: not there
            return
        raise translate(exc, f"Removing {describe(spec)}{where(netns)}") from None
