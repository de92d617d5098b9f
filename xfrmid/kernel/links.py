"""XFRM links: list, create (idempotent), change MTU/up, delete.

Links xfrmid creates carry two markers: IFLA_GROUP = XFRMID_LINK_GROUP and
IFLA_IFALIAS = XFRMID_ALIAS. ``owned`` is true only when both are present,
so a link someone else made (``ip link add ... type xfrm``) is adopted, never
mistaken for ours. (A link of ours caught by a crash half-way through its
deletion sits in XFRMID_DELETING_GROUP, alias kept: still ours, see
link_reaper.py, which deletes concurrent requests as one batch.) A create goes straight to the kernel (no dump first):
xfrmi_newlink answers EEXIST for a used name, a used if_id or a second
external link, and only then does ``create_link`` look (a get by name, or
one dump) to name the holder in a Conflict, or to return an identical link.

Dumps are parsed from the raw replies, attribute by attribute, for what a
LinkState holds (``_raw_state``): pyroute2's full decoding of thousands of
links costs many times the kernel's own work.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from ..errors import Conflict, InvalidArgument, NotFound
from ..naming import Identity, check_ifname, check_unique
from . import nlattrs, xfrm_kind
from .events import _IFINFO, IFLA_GROUP, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, IFLA_OPERSTATE
from .events import OPERSTATES, _walk
from .namespace import F_CREATE, F_REQ, raw_dump, request, where
from .nlerrors import NO_XFRM_KIND, code_of, translate
from .link_reaper import reaper_of
from .objects import XFRMID_ALIAS, XFRMID_LINK_GROUP, XFRMID_LINK_GROUPS, LinkSpec, LinkState

KIND = xfrm_kind.XFRM
IFLA_IFALIAS = 20
IFLA_INFO_DATA = 2
IFLA_XFRM_LINK, IFLA_XFRM_IF_ID = 1, 2
_OPERSTATES = tuple(state.upper() for state in OPERSTATES)  # as pyroute2 names them
RTEXT_FILTER_SKIP_STATS = 1 << 3  # IFLA_EXT_MASK: no link statistics in dumps (bytes nobody reads)


def _kind_of(msg) -> tuple[str | None, object]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None, None
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


GETS_IN_FLIGHT = 64


def _gets_in_flight(ipr) -> asyncio.Semaphore:
    """Bounds the gets awaiting answers on one socket: a reply the kernel cannot queue
    (the receive buffer full of a thousand concurrent callers' answers) is lost, and
    its caller would wait forever."""
    sem = getattr(ipr, "_xfrmid_gets", None)
    if sem is None:
        sem = asyncio.Semaphore(GETS_IN_FLIGHT)
        ipr._xfrmid_gets = sem
    return sem


async def get_msg(ipr, name: str | None = None, index: int | None = None):
    """The RTM_NEWLINK message of one device, or None if it does not exist."""
    msg = ifinfmsg()
    # no statistics: smaller replies, so many gets in flight fit the socket's buffer
    attrs = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    if index is not None:
        msg["index"] = index
    else:
        attrs.insert(0, ("IFLA_IFNAME", name))
    msg["attrs"] = attrs
    try:
        async with _gets_in_flight(ipr):
            replies = await request(ipr, msg, RTM_GETLINK)
    except NetlinkError as exc:
        if code_of(exc) in (19, 2):  # ENODEV, ENOENT
            return None
        raise
    for reply in replies:
        if reply.get("header", {}).get("type") == RTM_NEWLINK:
            return reply
    return None


async def index_of(ipr, netns: str | None, name: str, what: str = "Device") -> int:
    msg = await get_msg(ipr, name=name)
    if msg is None:
        raise NotFound(f"{what} {name!r} does not exist{where(netns)}.")
    return msg["index"]


async def _names(ipr, indices: set[int]) -> dict[int, str]:
    names: dict[int, str] = {}
    for index in indices:
        msg = await get_msg(ipr, index=index)
        if msg is not None:
            names[index] = msg.get_attr("IFLA_IFNAME")
    return names


async def names_of(ipr, indices: set[int]) -> dict[int, str]:
    """Names of devices by ifindex: a get each for a few, one name-only dump for many."""
    if len(indices) <= 4:
        return await _names(ipr, indices)
    query = ifinfmsg()
    query["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    raw = await raw_dump(ipr, query, RTM_GETLINK)
    names: dict[int, str] = {}
    for mtype, data, pos, end in raw:
        if mtype != RTM_NEWLINK:
            continue
        index = _IFINFO.unpack_from(data, pos)[2]
        if index in indices:
            for atype, start, stop in _walk(data, pos + 16, end):
                if atype == IFLA_IFNAME:  # the kernel puts it first: stop there
                    names[index] = nlattrs.text(data, start, stop)
                    break
    return names


def _state(msg, names: dict[int, str]) -> LinkState | None:
    kind, data = _kind_of(msg)
    if kind != KIND.name:
        return None
    parsed = KIND.parse(data)
    return LinkState(
        name=msg.get_attr("IFLA_IFNAME"),
        if_id=parsed.if_id,
        ifindex=msg["index"],
        link=names.get(parsed.link_index) if parsed.link_index else None,
        mtu=msg.get_attr("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        external=parsed.external,
        owned=msg.get_attr("IFLA_GROUP") in XFRMID_LINK_GROUPS
        and msg.get_attr("IFLA_IFALIAS") == XFRMID_ALIAS,
    )


async def _states(ipr, msgs, known: dict[int, str] | None = None) -> list[LinkState]:
    """LinkStates of decoded messages; ``known`` names underlying devices already resolved."""
    names = dict(known or {})
    wanted = set()
    for msg in msgs:
        kind, data = _kind_of(msg)
        if kind == KIND.name:
            link_index = KIND.parse(data).link_index
            if link_index and link_index not in names:
                wanted.add(link_index)
    if wanted:
        names.update(await _names(ipr, wanted))
    return [state for state in (_state(m, names) for m in msgs) if state is not None]


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
    IFLA_XFRM_IF_ID: nlattrs.u32,
    IFLA_XFRM_LINK: nlattrs.u32,
    xfrm_kind.IFLA_XFRM_COLLECT_METADATA: nlattrs.flag,
}


def _raw_state(data: bytes, pos: int, end: int) -> tuple[LinkState, int] | None:
    """(LinkState with link=None, underlying ifindex) of one raw RTM_NEWLINK; None if not xfrm."""
    _family, _type, index, flags, _change = _IFINFO.unpack_from(data, pos)
    attrs = nlattrs.pick(data, pos + 16, end, _LINK_ATTRS)
    if IFLA_LINKINFO not in attrs:
        return None
    info = nlattrs.pick(data, *attrs[IFLA_LINKINFO], _INFO_ATTRS)
    if info.get(IFLA_INFO_KIND) != KIND.name:
        return None
    xfrm = nlattrs.pick(data, *info[IFLA_INFO_DATA], _XFRM_ATTRS) if IFLA_INFO_DATA in info else {}
    oper = attrs.get(IFLA_OPERSTATE, 0)
    state = LinkState(
        name=attrs.get(IFLA_IFNAME, ""),
        if_id=xfrm.get(IFLA_XFRM_IF_ID, 0),
        ifindex=index,
        link=None,
        mtu=attrs.get(IFLA_MTU, 0),
        up=bool(flags & IFF_UP),
        operstate=_OPERSTATES[oper] if oper < len(_OPERSTATES) else "UNKNOWN",
        external=xfrm.get(xfrm_kind.IFLA_XFRM_COLLECT_METADATA, False),
        owned=attrs.get(IFLA_GROUP) in XFRMID_LINK_GROUPS and attrs.get(IFLA_IFALIAS) == XFRMID_ALIAS,
    )
    return state, xfrm.get(IFLA_XFRM_LINK, 0)


def _query_xfrm() -> ifinfmsg:
    msg = ifinfmsg()
    msg["attrs"] = [
        ("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", KIND.name)]}),
    ]
    return msg


async def xfrm_links(ipr, netns: str | None) -> list[LinkState]:
    """Every xfrm link of the namespace (the kernel filters the dump by kind)."""
    try:
        raw = await raw_dump(ipr, _query_xfrm(), RTM_GETLINK)
    except NetlinkError as exc:
        raise translate(exc, f"Listing xfrm interfaces{where(netns)}") from None
    found = [
        parsed
        for mtype, data, pos, end in raw
        if mtype == RTM_NEWLINK and (parsed := _raw_state(data, pos, end)) is not None
    ]
    wanted = {link_index for _, link_index in found if link_index}
    names = await _names(ipr, wanted) if wanted else {}
    return [
        replace(state, link=names.get(link_index)) if link_index else state for state, link_index in found
    ]


async def link_state(ipr, netns: str | None, name: str) -> LinkState:
    """The state of one xfrm link; NotFound/InvalidArgument if it is missing or not xfrm."""
    msg = await get_msg(ipr, name=name)
    if msg is None:
        raise NotFound(f"Interface {name!r} does not exist{where(netns)}.")
    states = await _states(ipr, [msg])
    if not states:
        kind, _ = _kind_of(msg)
        raise InvalidArgument(
            f"Interface {name!r}{where(netns)} is {_a(kind)}, not an xfrm interface."
        )
    return states[0]


def _a(kind: str | None) -> str:
    return f"a {kind} device" if kind else "a device without a link kind"


def _same_identity(spec: LinkSpec, state: LinkState) -> bool:
    if spec.external or state.external:
        return spec.external == state.external
    return spec.if_id == state.if_id and spec.link == state.link


def _describe(state: LinkState) -> str:
    if state.external:
        return "external (collect_md) mode"
    return f"if_id {state.if_id}" + (f" on {state.link!r}" if state.link else " without an underlying device")


async def create_link(ipr, netns: str | None, spec: LinkSpec, features=None) -> LinkState:
    """Create the link, or return the identical existing one (applying MTU/up)."""
    KIND.verify(spec, features)
    link_index = 0
    if spec.link is not None:
        link_index = await index_of(ipr, netns, spec.link, what="Underlying device")
    doing = f"Creating interface {spec.name!r}{where(netns)}"
    for attempt in range(3):
        try:
            await request(ipr, _create_message(spec, link_index), RTM_NEWLINK, F_CREATE)
            break
        except NetlinkError as exc:
            if code_of(exc) != 17:
                raise translate(exc, doing, unsupported=NO_XFRM_KIND) from None
            # EEXIST: the name, the if_id or the external slot is taken; say by whom
            existing = await _existing(ipr, netns, spec)
            if existing is not None:
                return existing
            if attempt == 2:  # the holder keeps vanishing before we can name it
                raise translate(exc, doing) from None
    mark = ifinfmsg()
    mark["attrs"] = [("IFLA_IFNAME", spec.name), ("IFLA_IFALIAS", XFRMID_ALIAS)]  # addressed by name
    if spec.up:
        mark["flags"] = IFF_UP
        mark["change"] = IFF_UP
    try:
        await request(ipr, mark, RTM_NEWLINK, F_REQ)
    except NetlinkError as exc:
        if code_of(exc) == 19:  # ENODEV
            raise NotFound(f"{doing} failed: it vanished right after creation.") from None
        raise translate(exc, f"Marking new interface {spec.name!r}{where(netns)}") from None
    created = await get_msg(ipr, name=spec.name)
    if created is None:
        raise NotFound(f"{doing} failed: it vanished right after creation.")
    states = await _states(ipr, [created], {link_index: spec.link} if link_index else {})
    if not states:
        raise Conflict(f"{doing} failed: the name was taken by {_a(_kind_of(created)[0])} meanwhile.")
    return states[0]


def _create_message(spec: LinkSpec, link_index: int) -> ifinfmsg:
    msg = ifinfmsg()
    # Created down and marked with the group at once; alias and IFF_UP follow in
    # one request, so an interface never carries traffic before it is marked.
    attrs = [
        ("IFLA_IFNAME", spec.name),
        ("IFLA_GROUP", XFRMID_LINK_GROUP),
        (
            "IFLA_LINKINFO",
            {"attrs": [("IFLA_INFO_KIND", KIND.name), ("IFLA_INFO_DATA", {"attrs": KIND.fill_create(spec, link_index)})]},
        ),
    ]
    if spec.mtu is not None:
        attrs.append(("IFLA_MTU", spec.mtu))
    msg["attrs"] = attrs
    return msg


async def _existing(ipr, netns: str | None, spec: LinkSpec) -> LinkState | None:
    """After EEXIST: the identical link (MTU/up applied), else raise Conflict naming the holder.

    None: nothing holds the name, the if_id or the external slot any more (the
    holder went away meanwhile), so the create may be tried again.
    """
    other = await get_msg(ipr, name=spec.name)
    if other is not None:
        states = await _states(ipr, [other])
        if not states:
            raise Conflict(f"Interface name {spec.name!r} is already used{where(netns)} by {_a(_kind_of(other)[0])}.")
        current = states[0]
        if not _same_identity(spec, current):
            if not spec.external and not current.external and spec.link == current.link:
                check_unique(_identity(spec), {spec.name: current.if_id})
            wanted = "external (collect_md) mode" if spec.external else f"if_id {spec.if_id}" + (
                f" on {spec.link!r}" if spec.link else " without an underlying device"
            )
            raise Conflict(
                f"Interface {spec.name!r} already exists{where(netns)} with {_describe(current)}, not {wanted}."
            )
        if (spec.mtu is not None and spec.mtu != current.mtu) or spec.up != current.up:
            return await change_link(ipr, netns, spec.name, mtu=spec.mtu, up=spec.up)
        return current
    # the name is free: the kernel refused the if_id or a second external link (one dump, rare)
    existing = await xfrm_links(ipr, netns)
    if spec.external:
        for state in existing:
            if state.external:
                raise Conflict(
                    f"Interface {state.name!r} is already the external (collect_md) xfrm interface"
                    f"{where(netns)}; the kernel allows one per namespace."
                )
    else:
        check_unique(_identity(spec), {s.name: s.if_id for s in existing if not s.external})
    return None


def _identity(spec: LinkSpec) -> Identity:
    return Identity(name=spec.name, if_id=spec.if_id, mark=spec.if_id, mask=0xFFFFFFFF)


async def change_link(
    ipr, netns: str | None, name: str, *, mtu: int | None = None, up: bool | None = None
) -> LinkState:
    """Change MTU and/or administrative state of an xfrm link."""
    check_ifname(name)
    if mtu is not None and (
        isinstance(mtu, bool) or not isinstance(mtu, int) or not xfrm_kind.MTU_MIN <= mtu <= xfrm_kind.MTU_MAX
    ):
        raise InvalidArgument(
            f"MTU {mtu!r} of interface {name!r} is outside {xfrm_kind.MTU_MIN}..{xfrm_kind.MTU_MAX}."
        )
    state = await link_state(ipr, netns, name)
    if (mtu is None or mtu == state.mtu) and (up is None or up == state.up):
        return state
    msg = ifinfmsg()
    msg["index"] = state.ifindex
    if mtu is not None:
        msg["attrs"] = [("IFLA_MTU", mtu)]
    if up is not None:
        msg["flags"] = IFF_UP if up else 0
        msg["change"] = IFF_UP
    try:
        await request(ipr, msg, RTM_NEWLINK, F_REQ)
    except NetlinkError as exc:
        if code_of(exc) == 19:  # ENODEV: someone deleted it meanwhile
            raise NotFound(f"Interface {name!r} does not exist{where(netns)}.") from None
        raise translate(exc, f"Changing interface {name!r}{where(netns)}") from None
    if up and not state.up:
        # the operational state of a link coming up is the kernel's to tell
        return await link_state(ipr, netns, name)
    # The kernel accepted exactly this; a down link reports operstate DOWN (rtnl_fill_ifinfo).
    return replace(
        state,
        mtu=mtu if mtu is not None else state.mtu,
        up=state.up if up is None else up,
        operstate="DOWN" if up is False else state.operstate,
    )


async def delete_link(ipr, netns: str | None, name: str, ifindex: int | None = None) -> None:
    """Delete an xfrm link (NotFound if missing; refuses other kinds).

    ``ifindex``: the link's index from a state read just before (an xfrm link's
    ifindex never passes to another device of the namespace), which saves the
    get that checks the kind. Concurrent deletions in one namespace are deleted
    together, in one unregister batch (link_reaper.py).
    """
    check_ifname(name)
    group = XFRMID_LINK_GROUP
    if ifindex is None:
        found = await get_msg(ipr, name=name)
        if found is None:
            raise NotFound(f"Interface {name!r} does not exist{where(netns)}.")
        kind, _ = _kind_of(found)
        if kind != KIND.name:
            raise InvalidArgument(f"Interface {name!r}{where(netns)} is {_a(kind)}, not an xfrm interface.")
        ifindex = found["index"]
        group = found.get_attr("IFLA_GROUP") or 0
    await reaper_of(ipr, netns).delete(name, ifindex, group)
