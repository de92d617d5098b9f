"""One device's RTM_NEWLINK, asked for by name or index and read from its bytes.

Calls ask for single devices all the time (does the name exist, which ifindex,
what kind, the state of one xfrm link), so the get goes out as bytes
(``NetnsConnection.transact``) and the reply is parsed only for what the
caller reads: the same parser reads the links of a dump (``xfrm_state``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyroute2.netlink.exceptions import NetlinkError

from . import nlattrs, xfrm_kind
from .netlink import (
    IFF_UP,
    IFINFO,
    IFLA_GROUP,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_OPERSTATE,
    OPERSTATES,
    RTM_GETLINK,
    RTM_NEWLINK,
    RawMessage,
    ifinfo,
    link_attrs,
    walk,
)
from .nlerrors import code_of
from .objects import XFRMID_ALIAS, XFRMID_LINK_GROUP, XFRMID_LINK_GROUPS, LinkState

if TYPE_CHECKING:
    from .connection import NetnsConnection

KIND = xfrm_kind.XFRM
_OPERSTATES = tuple(state.upper() for state in OPERSTATES)  # as pyroute2 names them


async def get_link(conn: NetnsConnection, name: str | None = None, index: int | None = None) -> RawMessage | None:
    """The RTM_NEWLINK of one device (by name, else by index), None if there is none."""
    # no statistics: smaller replies, so many gets in flight fit the socket's buffer
    if index is not None and name is None:
        body = ifinfo(index=index) + link_attrs(skip_stats=True)
    else:
        body = ifinfo() + link_attrs(name=name, skip_stats=True)
    try:
        async with conn.gets_in_flight:
            replies = await conn.transact(RTM_GETLINK, body)
    except NetlinkError as exc:
        if code_of(exc) in (19, 2):  # ENODEV, ENOENT
            return None
        raise
    for reply in replies:
        if reply[0] == RTM_NEWLINK:
            return reply
    return None


def index(raw: RawMessage) -> int:
    return IFINFO.unpack_from(raw[1], raw[2])[2]


def name(raw: RawMessage) -> str | None:
    _mtype, data, pos, end = raw
    for atype, start, stop in walk(data, pos + IFINFO.size, end):
        if atype == IFLA_IFNAME:  # the kernel puts it first
            return nlattrs.text(data, start, stop)
    return None


_KIND_ATTRS = {IFLA_GROUP: nlattrs.u32, IFLA_LINKINFO: nlattrs.span}
_KIND_INFO = {IFLA_INFO_KIND: nlattrs.text}


def kind_and_group(raw: RawMessage) -> tuple[str | None, int]:
    """The device's link kind (None: none) and group."""
    _mtype, data, pos, end = raw
    attrs = nlattrs.pick(data, pos + IFINFO.size, end, _KIND_ATTRS)
    kind = None
    if IFLA_LINKINFO in attrs:
        kind = nlattrs.pick(data, *attrs[IFLA_LINKINFO], _KIND_INFO).get(IFLA_INFO_KIND)
    return kind, attrs.get(IFLA_GROUP, 0)


_LINK_ATTRS = {
    IFLA_IFNAME: nlattrs.text,
    IFLA_MTU: nlattrs.u32,
    IFLA_OPERSTATE: nlattrs.u8,
    IFLA_GROUP: nlattrs.u32,
    IFLA_IFALIAS: nlattrs.text,
    IFLA_LINKINFO: nlattrs.span,
}
_INFO_ATTRS = {IFLA_INFO_KIND: nlattrs.text, IFLA_INFO_DATA: nlattrs.span}
_XFRM_ATTRS = {
    xfrm_kind.IFLA_XFRM_IF_ID: nlattrs.u32,
    xfrm_kind.IFLA_XFRM_LINK: nlattrs.u32,
    xfrm_kind.IFLA_XFRM_COLLECT_METADATA: nlattrs.flag,
}


def xfrm_state(data: bytes, pos: int, end: int) -> tuple[LinkState, int] | None:
    """(LinkState with link=None, underlying ifindex) of one raw RTM_NEWLINK; None if not xfrm."""
    _family, _type, ifindex, flags, _change = IFINFO.unpack_from(data, pos)
    attrs = nlattrs.pick(data, pos + IFINFO.size, end, _LINK_ATTRS)
    if IFLA_LINKINFO not in attrs:
        return None
    info = nlattrs.pick(data, *attrs[IFLA_LINKINFO], _INFO_ATTRS)
    if info.get(IFLA_INFO_KIND) != KIND.name:
        return None
    xfrm = nlattrs.pick(data, *info[IFLA_INFO_DATA], _XFRM_ATTRS) if IFLA_INFO_DATA in info else {}
    oper = attrs.get(IFLA_OPERSTATE, 0)
    state = LinkState(
        name=attrs.get(IFLA_IFNAME, ""),
        if_id=xfrm.get(xfrm_kind.IFLA_XFRM_IF_ID, 0),
        ifindex=ifindex,
        link=None,
        mtu=attrs.get(IFLA_MTU, 0),
        up=bool(flags & IFF_UP),
        operstate=_OPERSTATES[oper] if oper < len(_OPERSTATES) else "UNKNOWN",
        external=xfrm.get(xfrm_kind.IFLA_XFRM_COLLECT_METADATA, False),
        owned=attrs.get(IFLA_GROUP) in XFRMID_LINK_GROUPS and attrs.get(IFLA_IFALIAS) == XFRMID_ALIAS,
        unmarked=attrs.get(IFLA_GROUP) == XFRMID_LINK_GROUP and not attrs.get(IFLA_IFALIAS),
    )
    return state, xfrm.get(xfrm_kind.IFLA_XFRM_LINK, 0)


async def names_by_get(conn: NetnsConnection, indices: set[int]) -> dict[int, str]:
    """Names of a few devices by ifindex, a get each."""
    names: dict[int, str] = {}
    for ifindex in indices:
        raw = await get_link(conn, index=ifindex)
        if raw is not None and (found := name(raw)) is not None:
            names[ifindex] = found
    return names
