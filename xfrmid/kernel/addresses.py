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
from .links import index_of
from .namespace import F_CREATE, F_REQ, dump, request, where
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


async def addresses(ipr, netns: str | None, ifname: str) -> set[str]:
    index = await index_of(ipr, netns, ifname, what="Interface")
    query = ifaddrmsg()
    query["index"] = index  # strict dump: the kernel filters by ifa_index
    try:
        msgs = await dump(ipr, query, RTM_GETADDR)
    except NetlinkError as exc:
        raise translate(exc, f"Listing addresses of {ifname!r}{where(netns)}") from None
    found: set[str] = set()
    for msg in msgs:
        if msg.get("header", {}).get("type") != RTM_NEWADDR or msg["index"] != index:
            continue
        if msg.get_attr("IFA_PROTO") in _KERNEL_PROTOS:
            continue
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if address is None:
            continue
        cidr = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
        if cidr.version == 6 and cidr.ip.is_link_local and msg.get_attr("IFA_PROTO") != XFRMID_PROTO:
            continue  # the kernel's own link-local address (untagged before 5.18)
        found.add(cidr.with_prefixlen)
    return found


async def _apply(ipr, netns, spec: AddressSpec, msg_type: int, flags: int, fine: tuple[int, ...],
                 doing: str) -> None:
    cidr = parse_interface_cidr(spec.cidr)
    index = await index_of(ipr, netns, spec.ifname, what="Interface")
    try:
        await request(ipr, _message(index, cidr), msg_type, flags)
    except NetlinkError as exc:
        if code_of(exc) in fine:  # already as asked
            return
        raise translate(exc, doing.format(cidr=cidr, ifname=spec.ifname, where=where(netns))) from None


async def add_address(ipr, netns: str | None, spec: AddressSpec) -> None:
    """Add the address; fine if it is already there (EEXIST)."""
    await _apply(ipr, netns, spec, RTM_NEWADDR, F_CREATE, (17,), "Adding address {cidr} to {ifname!r}{where}")


async def remove_address(ipr, netns: str | None, spec: AddressSpec) -> None:
    """Remove the address; fine if it is not there (EADDRNOTAVAIL/ENOENT/ENODEV)."""
    await _apply(ipr, netns, spec, RTM_DELADDR, F_REQ, (99, 2, 19), "Removing address {cidr} from {ifname!r}{where}")
