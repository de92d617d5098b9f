"""XFRM links: list, create (idempotent), change MTU/up, delete.

Links xfrmid creates carry two markers: IFLA_GROUP = XFRMID_LINK_GROUP and
IFLA_IFALIAS = XFRMID_ALIAS. ``owned`` is true only when both are present,
so a link someone else made (``ip link add ... type xfrm``) is adopted, never
mistaken for ours. (A link of ours caught by a crash half-way through its
deletion sits in XFRMID_DELETING_GROUP, alias kept: still ours, see
link_reaper.py, which deletes concurrent requests as one batch.) A create
goes straight to the kernel (no dump first): xfrmi_newlink answers EEXIST for a used name, a used if_id or a second
external link, and only then does ``create_link`` look (a get by name, or
one dump) to name the holder in a Conflict, or to return an identical link.
``create_links`` sends many creations, and then their markings, as two
batches (batch.py): the kernel's work runs beside the event loop.

Dumps are parsed from the raw replies, attribute by attribute, for what a
LinkState holds (``link_msgs.xfrm_state``): pyroute2's full decoding of thousands of
links costs many times the kernel's own work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from ..errors import Conflict, InvalidArgument, NotFound, XfrmidError, where
from ..naming import Identity, check_ifname, check_unique
from . import batch, link_msgs, xfrm_kind
from .link_msgs import KIND, get_link, names_by_get, xfrm_state
from .netlink import (
    F_CREATE,
    F_REQ,
    IFF_UP,
    RTEXT_FILTER_SKIP_STATS,
    RTM_GETLINK,
    RTM_NEWLINK,
    ifinfo,
    link_attrs,
    linkinfo,
)
from .nlerrors import NO_XFRM_KIND, code_of, translate
from .objects import XFRMID_ALIAS, XFRMID_LINK_GROUP, LinkSpec, LinkState

if TYPE_CHECKING:
    from .connection import NetnsConnection

EEXIST, ENODEV = 17, 19


async def index_of(conn: NetnsConnection, netns: str | None, name: str, what: str = "Device") -> int:
    raw = await get_link(conn, name=name)
    if raw is None:
        raise NotFound(f"{what} {name!r} does not exist{where(netns)}.")
    return link_msgs.index(raw)


async def names_of(conn: NetnsConnection, indices: set[int]) -> dict[int, str]:
    """Names of devices by ifindex: a get each for a few, one name-only dump for many."""
    if len(indices) <= 4:
        return await names_by_get(conn, indices)
    query = ifinfmsg()
    query["attrs"] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    raw = await conn.raw_dump(query, RTM_GETLINK)
    names: dict[int, str] = {}
    for msg in raw:
        if msg[0] == RTM_NEWLINK and (index := link_msgs.index(msg)) in indices:
            if (name := link_msgs.name(msg)) is not None:
                names[index] = name
    return names


async def _state_of(conn: NetnsConnection, raw, known: dict[int, str] | None = None) -> LinkState | None:
    """The LinkState of one device's message (its underlying device named), None if not xfrm."""
    parsed = xfrm_state(*raw[1:])
    if parsed is None:
        return None
    state, link_index = parsed
    if not link_index:
        return state
    names = known if known and link_index in known else await names_by_get(conn, {link_index})
    return replace(state, link=names.get(link_index))


def _query_xfrm() -> ifinfmsg:
    msg = ifinfmsg()
    msg["attrs"] = [
        ("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", KIND.name)]}),
    ]
    return msg


async def xfrm_links(conn: NetnsConnection, netns: str | None) -> list[LinkState]:
    """Every xfrm link of the namespace (the kernel filters the dump by kind)."""
    try:
        raw = await conn.raw_dump(_query_xfrm(), RTM_GETLINK)
    except NetlinkError as exc:
        raise translate(exc, f"Listing xfrm interfaces{where(netns)}") from None
    found = [
        parsed
        for mtype, data, pos, end in raw
        if mtype == RTM_NEWLINK and (parsed := xfrm_state(data, pos, end)) is not None
    ]
    wanted = {link_index for _, link_index in found if link_index}
    names = await names_by_get(conn, wanted) if wanted else {}
    return [
        replace(state, link=names.get(link_index)) if link_index else state for state, link_index in found
    ]


async def link_state(conn: NetnsConnection, netns: str | None, name: str) -> LinkState:
    """The state of one xfrm link; NotFound/InvalidArgument if it is missing or not xfrm."""
    raw = await get_link(conn, name=name)
    if raw is None:
        raise NotFound(f"Interface {name!r} does not exist{where(netns)}.")
    state = await _state_of(conn, raw)
    if state is None:
        raise InvalidArgument(
            f"Interface {name!r}{where(netns)} is {_a(link_msgs.kind_and_group(raw)[0])}, not an xfrm interface."
        )
    return state


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


async def create_link(
    conn: NetnsConnection, netns: str | None, spec: LinkSpec, features=None, *, read: bool = True
) -> LinkState | None:
    """Create the link, or return the identical existing one (applying MTU/up).

    ``read=False``: None after a create, not the new link's state (a get): a caller
    creating many reads them all with one dump afterwards (``xfrm_links``)."""
    KIND.verify(spec, features)
    link_index = 0
    if spec.link is not None:
        link_index = await index_of(conn, netns, spec.link, what="Underlying device")
    doing = f"Creating interface {spec.name!r}{where(netns)}"
    for attempt in range(3):
        try:
            await conn.transact(RTM_NEWLINK, _create_message(spec, link_index), F_CREATE)
            break
        except NetlinkError as exc:
            if code_of(exc) != EEXIST:
                raise translate(exc, doing, unsupported=NO_XFRM_KIND) from None
            # EEXIST: the name, the if_id or the external slot is taken; say by whom
            existing = await _existing(conn, netns, spec)
            if existing is not None:
                return existing
            if attempt == 2:  # the holder keeps vanishing before we can name it
                raise translate(exc, doing) from None
    try:
        await conn.transact(RTM_NEWLINK, _mark_message(spec))
    except NetlinkError as exc:
        raise _marking_failed(exc, spec, netns) from None
    if not read:
        return None
    created = await get_link(conn, name=spec.name)
    if created is None:
        raise NotFound(f"{doing} failed: it vanished right after creation.")
    state = await _state_of(conn, created, {link_index: spec.link} if link_index else None)
    if state is None:
        kind = link_msgs.kind_and_group(created)[0]
        raise Conflict(f"{doing} failed: the name was taken by {_a(kind)} meanwhile.")
    return state


async def create_links(conn: NetnsConnection, netns: str | None, specs: Sequence[LinkSpec],
                       features=None) -> list[LinkState | XfrmidError | None]:
    """``create_link(read=False)`` for many links, each outcome in order (an error is returned,
    not raised): all creations in one batch, then all markings in another (batch.py).

    A name the kernel says is taken (EEXIST) goes through ``create_link``, which
    names the holder or returns the identical link, as a single create does.
    """
    outcomes: list[LinkState | XfrmidError | None] = [None] * len(specs)
    creates: list[tuple[int, batch.Request]] = []
    for i, spec in enumerate(specs):
        try:
            KIND.verify(spec, features)
            link_index = await index_of(conn, netns, spec.link, what="Underlying device") if spec.link else 0
        except XfrmidError as exc:
            outcomes[i] = exc
            continue
        creates.append((i, (RTM_NEWLINK, F_CREATE, _create_message(spec, link_index))))
    codes = await batch.exchange(conn.batch_socket(), [request for _, request in creates])
    taken: list[int] = []
    made: list[int] = []
    for (i, _), code in zip(creates, codes):
        if code == EEXIST:
            taken.append(i)
        elif code:
            doing = f"Creating interface {specs[i].name!r}{where(netns)}"
            outcomes[i] = translate(NetlinkError(code), doing, unsupported=NO_XFRM_KIND)
        else:
            made.append(i)
    codes = await batch.exchange(conn.batch_socket(), [(RTM_NEWLINK, F_REQ, _mark_message(specs[i])) for i in made])
    for i, code in zip(made, codes):
        if code:
            outcomes[i] = _marking_failed(NetlinkError(code), specs[i], netns)
    for i in taken:
        try:
            outcomes[i] = await create_link(conn, netns, specs[i], features, read=False)
        except XfrmidError as exc:
            outcomes[i] = exc
    return outcomes


def _marking_failed(exc: NetlinkError, spec: LinkSpec, netns: str | None) -> XfrmidError:
    if code_of(exc) == ENODEV:
        return NotFound(f"Creating interface {spec.name!r}{where(netns)} failed: it vanished right after creation.")
    return translate(exc, f"Marking new interface {spec.name!r}{where(netns)}")


def _mark_message(spec: LinkSpec) -> bytes:
    # addressed by name; up with the alias, see _create_message
    up = IFF_UP if spec.up else 0
    return ifinfo(flags=up, change=up) + link_attrs(name=spec.name, alias=XFRMID_ALIAS)


def _create_message(spec: LinkSpec, link_index: int) -> bytes:
    # Created down and marked with the group at once; alias and IFF_UP follow in
    # one request, so an interface never carries traffic before it is marked.
    return ifinfo() + link_attrs(name=spec.name, group=XFRMID_LINK_GROUP, mtu=spec.mtu) + linkinfo(
        KIND.name, KIND.fill_create(spec, link_index)
    )


async def _existing(conn: NetnsConnection, netns: str | None, spec: LinkSpec) -> LinkState | None:
    """After EEXIST: the identical link (MTU/up applied), else raise Conflict naming the holder.

    None: nothing holds the name, the if_id or the external slot any more (the
    holder went away meanwhile), so the create may be tried again.
    """
    other = await get_link(conn, name=spec.name)
    if other is not None:
        current = await _state_of(conn, other)
        if current is None:
            kind = link_msgs.kind_and_group(other)[0]
            raise Conflict(f"Interface name {spec.name!r} is already used{where(netns)} by {_a(kind)}.")
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
            return await change_link(conn, netns, spec.name, mtu=spec.mtu, up=spec.up)
        return current
    # the name is free: the kernel refused the if_id or a second external link (one dump, rare)
    existing = await xfrm_links(conn, netns)
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
    conn: NetnsConnection, netns: str | None, name: str, *, mtu: int | None = None, up: bool | None = None, mark: bool = False
) -> LinkState:
    """Change MTU and/or administrative state of an xfrm link; ``mark``: put xfrmid's
    markers (group and alias) on it, to finish a create of ours cut short by a crash."""
    check_ifname(name)
    if mtu is not None and (
        isinstance(mtu, bool) or not isinstance(mtu, int) or not xfrm_kind.MTU_MIN <= mtu <= xfrm_kind.MTU_MAX
    ):
        raise InvalidArgument(
            f"MTU {mtu!r} of interface {name!r} is outside {xfrm_kind.MTU_MIN}..{xfrm_kind.MTU_MAX}."
        )
    state = await link_state(conn, netns, name)
    if (mtu is None or mtu == state.mtu) and (up is None or up == state.up) and (not mark or state.owned):
        return state
    flags = IFF_UP if up else 0
    msg = ifinfo(index=state.ifindex, flags=flags, change=IFF_UP if up is not None else 0)
    markers = link_attrs(group=XFRMID_LINK_GROUP, alias=XFRMID_ALIAS) if mark else b""
    try:
        await conn.transact(RTM_NEWLINK, msg + link_attrs(mtu=mtu) + markers)
    except NetlinkError as exc:
        if code_of(exc) == ENODEV:  # someone deleted it meanwhile
            raise NotFound(f"Interface {name!r} does not exist{where(netns)}.") from None
        raise translate(exc, f"Changing interface {name!r}{where(netns)}") from None
    if (up and not state.up) or mark:
        # the operational state of a link coming up is the kernel's to tell
        return await link_state(conn, netns, name)
    # The kernel accepted exactly this; a down link reports operstate DOWN (rtnl_fill_ifinfo).
    return replace(
        state,
        mtu=mtu if mtu is not None else state.mtu,
        up=state.up if up is None else up,
        operstate="DOWN" if up is False else state.operstate,
    )


async def delete_link(conn: NetnsConnection, netns: str | None, name: str, ifindex: int | None = None) -> None:
    """Delete an xfrm link (NotFound if missing; refuses other kinds).

    ``ifindex``: the link's index from a state read just before (an xfrm link's
    ifindex never passes to another device of the namespace), which saves the
    get that checks the kind. Concurrent deletions in one namespace are deleted
    together, in one unregister batch (link_reaper.py).
    """
    check_ifname(name)
    group = XFRMID_LINK_GROUP
    if ifindex is None:
        found = await get_link(conn, name=name)
        if found is None:
            raise NotFound(f"Interface {name!r} does not exist{where(netns)}.")
        kind, group = link_msgs.kind_and_group(found)
        if kind != KIND.name:
            raise InvalidArgument(f"Interface {name!r}{where(netns)} is {_a(kind)}, not an xfrm interface.")
        ifindex = link_msgs.index(found)
    await conn.reaper.delete(name, ifindex, group)
