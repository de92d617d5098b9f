"""Requests of the per-call hot paths, encoded and answered as bytes.

pyroute2's request machinery (message objects, its sequence number pool with
a ban list scanned on every allocation, full decoding of every reply) cost
most of a CreateInterface's or DeleteInterface's CPU, several times the
kernel's own work (bench/README.md). The requests a call makes per interface
are few and fixed, so they are built here with ``struct`` and their replies
handed back undecoded, for the parsers of links.py and nlattrs.py to read
only what they need.

They still travel on the namespace's pyroute2 socket and its reader: each
request registers its own sequence number with the socket's queue, taken
from a range pyroute2 never allocates (its pool ends at 0xFFFF), so replies
reach the right waiter whichever API sent the request.
"""

from __future__ import annotations

import errno
import itertools
import struct

from pyroute2.netlink.exceptions import NetlinkError

from .events import _IFINFO, IFLA_GROUP, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU
from .namespace import F_CREATE, F_REQ, NLMSG_DONE, NLMSG_ERROR, RawMessage, _HDR, check_status, split

__all__ = ["F_CREATE", "F_REQ", "attr", "ifinfo", "link_attrs", "nest", "transact", "u32", "text"]

IFLA_IFALIAS = 20
IFLA_EXT_MASK = 29
IFLA_INFO_DATA = 2
NLA_F_NESTED = 0x8000
_NLA = struct.Struct("=HH")
_U32 = struct.Struct("=I")

# pyroute2's pool hands out 0xFF..0xFFFF; ours wrap below 2**31
_FIRST_SEQ, _SEQ_SPAN = 0x10000, 0x7FFF0000
_counter = itertools.count()


def _next_seq() -> int:
    return _FIRST_SEQ + next(_counter) % _SEQ_SPAN


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return _NLA.pack(length, atype) + payload + b"\0" * (-length % 4)


def u32(atype: int, value: int) -> bytes:
    return attr(atype, _U32.pack(value))


def text(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def flag(atype: int) -> bytes:
    return attr(atype, b"")


def nest(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    """struct ifinfomsg (AF_UNSPEC)."""
    return _IFINFO.pack(0, 0, index, flags, change)


def link_attrs(*, name: str | None = None, group: int | None = None, alias: str | None = None,
               mtu: int | None = None, skip_stats: bool = False) -> bytes:
    """The common link attributes of a request, those given."""
    out = []
    if name is not None:
        out.append(text(IFLA_IFNAME, name))
    if mtu is not None:
        out.append(u32(IFLA_MTU, mtu))
    if group is not None:
        out.append(u32(IFLA_GROUP, group))
    if alias is not None:
        out.append(text(IFLA_IFALIAS, alias))
    if skip_stats:
        out.append(u32(IFLA_EXT_MASK, 1 << 3))  # RTEXT_FILTER_SKIP_STATS
    return b"".join(out)


def linkinfo(kind: str, data: bytes) -> bytes:
    """IFLA_LINKINFO with the kind and its IFLA_INFO_DATA (already encoded)."""
    return nest(IFLA_LINKINFO, text(IFLA_INFO_KIND, kind), nest(IFLA_INFO_DATA, data))


async def transact(ipr, msg_type: int, body: bytes, flags: int = F_REQ) -> list[RawMessage]:
    """Send one request; the reply messages before the kernel's ack (raises NetlinkError).

    Every request asks for an ack (NLM_F_ACK), so the answer always ends with an
    NLMSG_ERROR: zero for success, else the negative errno. The kernel does the
    work inside this send (rtnetlink is synchronous). Sending each request from
    a helper thread, so the loop could go on meanwhile, was measured slower: the
    hand-offs cost more than the overlap gained (bench/README.md, session 5).
    Many requests at once go through batch.py instead: one hand-off per batch.
    """
    seq = _next_seq()
    await ipr.setup_endpoint()  # the socket's reader and queue exist from here on
    queue = ipr.msg_queue
    queue.ensure_tag(seq)
    try:
        ipr.send(_HDR.pack(16 + len(body), msg_type, flags, seq, 0) + body)
        out: list[RawMessage] = []
        while True:
            data = await queue.get(seq)
            if not data:
                raise NetlinkError(errno.ECONNRESET, "netlink socket closed during a request")
            for mtype, _flags, start, end in split(data):
                if mtype == NLMSG_ERROR or mtype == NLMSG_DONE:
                    check_status(data, start, end)
                    return out
                out.append((mtype, data, start, end))
    finally:
        queue.free_tag(seq)
