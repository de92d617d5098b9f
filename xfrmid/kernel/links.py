"""XFRM links: list, create (idempotent), change MTU/up, delete.

Links xfrmid creates carry two markers: IFLA_GROUP = XFRMID_LINK_GROUP and
IFLA_IFALIAS = XFRMID_ALIAS. ``owned`` is true only when both are present,
so a link someone else made (``ip link add ... type xfrm``) is adopted, never
mistaken for ours. Clashes (a name with another if_id, an if_id under another
name, a second external link) are reported as Conflict before the kernel
would answer a bare EEXIST.
"""

from __future__ import annotations

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from ..errors import Conflict, InvalidArgument, NotFound
from ..naming import Identity, check_ifname, check_unique
from . import xfrm_kind
from .namespace import F_CREATE, F_REQ, dump, request, where
from .nlerrors import NO_XFRM_KIND, code_of, translate
from .objects import XFRMID_ALIAS, XFRMID_LINK_GROUP, LinkSpec, LinkState

KIND = xfrm_kind.XFRM


def _kind_of(msg) -> tuple[str | None, object]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return None, None
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


async def get_msg(ipr, name: str | None = None, index: int | None = None):
    """The RTM_NEWLINK message of one device, or None if it does not exist."""
    msg = ifinfmsg()
    if index is not None:
        msg["index"] = index
    else:
        msg["attrs"] = [("IFLA_IFNAME", name)]
    try:
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
        owned=msg.get_attr("IFLA_GROUP") == XFRMID_LINK_GROUP
        and msg.get_attr("IFLA_IFALIAS") == XFRMID_ALIAS,
    )


async def _states(ipr, msgs) -> list[LinkState]:
    wanted = set()
    for msg in msgs:
        kind, data = _kind_of(msg)
        if kind == KIND.name:
            link_index = KIND.parse(data).link_index
            if link_index:
                wanted.add(link_index)
    names = await _names(ipr, wanted) if wanted else {}
    return [state for state in (_state(m, names) for m in msgs) if state is not None]


async def xfrm_links(ipr, netns: str | None) -> list[LinkState]:
    """Every xfrm link of the namespace (the kernel filters the dump by kind)."""
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", KIND.name)]})]
    try:
        msgs = await dump(ipr, msg, RTM_GETLINK)
    except NetlinkError as exc:
        raise translate(exc, f"Listing xfrm interfaces{where(netns)}") from None
    return await _states(ipr, [m for m in msgs if m.get("header", {}).get("type") == RTM_NEWLINK])


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
    existing = {state.name: state for state in await xfrm_links(ipr, netns)}
    current = existing.get(spec.name)
    if current is not None:
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
    other = await get_msg(ipr, name=spec.name)
    if other is not None:
        kind, _ = _kind_of(other)
        if kind == KIND.name:  # a concurrent create made it since the dump: judge it as it is
            return await create_link(ipr, netns, spec, features)
        raise Conflict(f"Interface name {spec.name!r} is already used{where(netns)} by {_a(kind)}.")
    if spec.external:
        for state in existing.values():
            if state.external:
                raise Conflict(
                    f"Interface {state.name!r} is already the external (collect_md) xfrm interface"
                    f"{where(netns)}; the kernel allows one per namespace."
                )
    else:
        check_unique(_identity(spec), {n: s.if_id for n, s in existing.items() if not s.external})
    link_index = 0
    if spec.link is not None:
        link_index = await index_of(ipr, netns, spec.link, what="Underlying device")

    doing = f"Creating interface {spec.name!r}{where(netns)}"
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
    try:
        await request(ipr, msg, RTM_NEWLINK, F_CREATE)
    except NetlinkError as exc:
        if code_of(exc) == 17:  # EEXIST: lost a race; the winner may have made the same link
            for state in await xfrm_links(ipr, netns):
                if state.name == spec.name and _same_identity(spec, state):
                    return state
                if state.name == spec.name or (not spec.external and state.if_id == spec.if_id):
                    raise Conflict(
                        f"{doing} failed: interface {state.name!r} with {_describe(state)} appeared meanwhile."
                    ) from None
        raise translate(exc, doing, unsupported=NO_XFRM_KIND) from None

    created = await get_msg(ipr, name=spec.name)
    if created is None:
        raise NotFound(f"{doing} failed: it vanished right after creation.")
    mark = ifinfmsg()
    mark["index"] = created["index"]
    mark["attrs"] = [("IFLA_IFALIAS", XFRMID_ALIAS)]
    if spec.up:
        mark["flags"] = IFF_UP
        mark["change"] = IFF_UP
    try:
        await request(ipr, mark, RTM_NEWLINK, F_REQ)
    except NetlinkError as exc:
        raise translate(exc, f"Marking new interface {spec.name!r}{where(netns)}") from None
    return await link_state(ipr, netns, spec.name)


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
        raise translate(exc, f"Changing interface {name!r}{where(netns)}") from None
    return await link_state(ipr, netns, name)


async def delete_link(ipr, netns: str | None, name: str) -> None:
    """Delete an xfrm link (NotFound if missing; refuses other kinds)."""
    check_ifname(name)
    state = await link_state(ipr, netns, name)
    msg = ifinfmsg()
    msg["index"] = state.ifindex
    try:
        await request(ipr, msg, RTM_DELLINK, F_REQ)
    except NetlinkError as exc:
        if code_of(exc) == 19:  # ENODEV: someone deleted it meanwhile
            raise NotFound(f"Interface {name!r} does not exist{where(netns)}.") from None
        raise translate(exc, f"Deleting interface {name!r}{where(netns)}") from None
