"""Addresses on one interface, IPv4 and IPv6, as normalised "addr/prefix" strings.

Adding an address that is there, or removing one that is not, succeeds:
callers state what they want, not what to do. Addresses the kernel makes by
itself (IPv6 link-local, IFA_PROTO kernel_*) are not reported, so a desired
set never fights the kernel over them.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_GETADDR, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from ..validate import parse_interface_cidr
from . import nlattrs
from .netlink import F_CREATE, F_REQ, IFA_ADDRESS, IFA_LOCAL, IFADDR
from .links import index_of
from ..errors import where
from .nlerrors import code_of, translate
from .objects import XFRMID_PROTO, AddressSpec

# IFA_PROTO values the kernel sets on addresses it generates (kernel_lo, kernel_ra, kernel_ll)
_KERNEL_PROTOS = {1, 2, 3}


def _message(index: int, cidr: str) -> ifaddrmsg:
    iface = ipaddress.ip_interface(cidr)
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    msg["prefixlen"] = iface.network.prefixlen
    msg["index"] = index
    address = str(iface.ip)
    # IFA_PROTO (Linux 5.18+, ignored before) tells our addresses from the kernel's own
    msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address), ("IFA_PROTO", XFRMID_PROTO)]
    return msg


IFA_PROTO = 11
_ADDR_ATTRS = {IFA_LOCAL: nlattrs.span, IFA_ADDRESS: nlattrs.span, IFA_PROTO: nlattrs.u8}


def _parse(data: bytes, pos: int, end: int) -> tuple[int, str] | None:
    """(ifindex, "addr/prefix") of one raw RTM_NEWADDR; None for the kernel's own addresses."""
    family, plen, _flags, _scope, index = IFADDR.unpack_from(data, pos)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs = nlattrs.pick(data, pos + 8, end, _ADDR_ATTRS)
    proto = attrs.get(IFA_PROTO, 0)
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point links
    where_ = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if proto in _KERNEL_PROTOS or where_ is None:
        return None
    if family == socket.AF_INET:  # inet_ntop's text is ipaddress's for IPv4 (and cheaper)
        return index, f"{socket.inet_ntop(family, data[where_[0]:where_[1]])}/{plen}"
    raw = data[where_[0]:where_[1]]
    # fe80::/10, the kernel's own link-local address (untagged before 5.18): one on
    # every xfrm link, half of a start-up's address dump, dropped before ipaddress
    if len(raw) == 16 and raw[0] == 0xFE and raw[1] & 0xC0 == 0x80 and proto != XFRMID_PROTO:
        return None
    return index, f"{ipaddress.ip_address(raw)}/{plen}"


async def _dump(conn, query: ifaddrmsg, doing: str) -> list[tuple[int, str]]:
    try:
        raw = await conn.raw_dump(query, RTM_GETADDR)
    except NetlinkError as exc:
        raise translate(exc, doing) from None
    return [
        parsed for mtype, data, pos, end in raw if mtype == RTM_NEWADDR and (parsed := _parse(data, pos, end))
    ]


async def addresses(conn, netns: str | None, ifname: str, ifindex: int | None = None) -> set[str]:
    """The addresses of one interface; ``ifindex`` (if the caller knows it) saves a lookup."""
    index = ifindex if ifindex is not None else await index_of(conn, netns, ifname, what="Interface")
    query = ifaddrmsg()
    query["index"] = index  # strict dump: the kernel filters by ifa_index
    doing = f"Listing addresses of {ifname!r}{where(netns)}"
    return {cidr for i, cidr in await _dump(conn, query, doing) if i == index}


async def addresses_by_index(conn, netns: str | None) -> dict[int, set[str]]:
    """Every address of the namespace in one dump, by ifindex (interfaces without any are absent)."""
    found: dict[int, set[str]] = {}
    for index, cidr in await _dump(conn, ifaddrmsg(), f"Listing addresses{where(netns)}"):
        found.setdefault(index, set()).add(cidr)
    return found


async def _apply(conn, netns, spec: AddressSpec, msg_type: int, flags: int, fine: tuple[int, ...],
                 doing: str) -> None:
    cidr = parse_interface_cidr(spec.cidr)
    index = await index_of(conn, netns, spec.ifname, what="Interface")
    try:
        await conn.request(_message(index, cidr), msg_type, flags)
    except NetlinkError as exc:
        if code_of(exc) in fine:  # already as asked
            return
        raise translate(exc, doing.format(cidr=cidr, ifname=spec.ifname, where=where(netns))) from None


async def add_address(conn, netns: str | None, spec: AddressSpec) -> None:
    """Add the address; fine if it is already there (EEXIST)."""
    await _apply(conn, netns, spec, RTM_NEWADDR, F_CREATE, (17,), "Adding address {cidr} to {ifname!r}{where}")


async def remove_address(conn, netns: str | None, spec: AddressSpec) -> None:
    """Remove the address; fine if it is not there (EADDRNOTAVAIL/ENOENT/ENODEV)."""
    await _apply(conn, netns, spec, RTM_DELADDR, F_REQ, (99, 2, 19), "Removing address {cidr} from {ifname!r}{where}")
