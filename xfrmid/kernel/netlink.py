"""The rtnetlink wire layout: headers, fixed structs, attributes, as bytes.

One place for what linux/netlink.h, linux/rtnetlink.h, linux/if_link.h and
linux/fib_rules.h define and xfrmid reads or writes itself: message types and
flags, the fixed headers as ``struct.Struct``, attribute types, and the few
functions that encode requests (``attr``, ``ifinfo``, ``link_attrs``...) and
walk replies (``split``, ``walk``, ``cstr``, ``error_code``). Pure: no
sockets, no pyroute2. The hot paths (dumps of thousands of links, the event
stream, the per-call requests) use these instead of pyroute2's message
classes, whose full decoding costs many times the kernel's own work.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# message types (linux/netlink.h, linux/rtnetlink.h)
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

# nlmsg_flags
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP_INTR = 0x10  # the dumped table changed during the dump: not a consistent view
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
F_REQ = NLM_F_REQUEST | NLM_F_ACK
F_CREATE = F_REQ | NLM_F_CREATE | NLM_F_EXCL
F_DUMP = NLM_F_REQUEST | NLM_F_DUMP

# fixed headers
HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
HDR_LEN = HDR.size  # 16
NLA = struct.Struct("=HH")  # nlattr: len, type
U32 = struct.Struct("=I")
ERRNO = struct.Struct("=i")  # nlmsgerr.error: 0 or a negative errno
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBi")  # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
# fib_rule_hdr has the same layout: family, dst_len, src_len, tos, table, res1, res2, action, flags
FIBRULE = RTMSG
IFINFO_END = HDR_LEN + IFINFO.size  # 32: where a link message's attributes start
IFADDR_END = HDR_LEN + IFADDR.size  # 24
RTMSG_END = HDR_LEN + RTMSG.size  # 28 (fib_rule_hdr alike)

# link attributes (IFLA_*), their IFLA_LINKINFO nest, and link flags
IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE, IFLA_LINKINFO = 3, 4, 16, 18
IFLA_IFALIAS, IFLA_GROUP, IFLA_EXT_MASK = 20, 27, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
RTEXT_FILTER_SKIP_STATS = 1 << 3  # IFLA_EXT_MASK: no statistics (bytes nobody reads)
IFF_UP = 0x1
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")

# address, route and rule attributes
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_TABLE = 1, 4, 6, 15
FRA_DST, FRA_SRC, FRA_PRIORITY, FRA_TABLE, FRA_PROTOCOL = 1, 2, 6, 15, 21

NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

RawMessage = tuple[int, bytes, int, int]  # one reply left undecoded: type, datagram, payload start, end


# -- reading ---------------------------------------------------------------


def split(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, payload start, message end) of each netlink message of one datagram."""
    unpack = HDR.unpack_from
    pos, size = 0, len(data)
    while pos + HDR_LEN <= size:
        length, mtype, flags, _seq, _pid = unpack(data, pos)
        if length < HDR_LEN or pos + length > size:
            return
        yield mtype, flags, pos + HDR_LEN, pos + length
        pos += (length + 3) & ~3


def error_code(data: bytes, start: int, end: int) -> int:
    """The errno an NLMSG_ERROR (or NLMSG_DONE) payload carries, positive; 0 is success."""
    return abs(ERRNO.unpack_from(data, start)[0]) if end - start >= ERRNO.size else 0


def walk(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in data[pos:end]."""
    unpack = NLA.unpack_from
    while pos + 4 <= end:
        alen, atype = unpack(data, pos)
        if alen < 4:
            return
        yield atype & NLA_TYPE_MASK, pos + 4, pos + alen
        pos += (alen + 3) & ~3


def cstr(data: bytes, start: int, stop: int) -> str:
    """A NUL-terminated string attribute's text."""
    return data[start:stop].split(b"\0", 1)[0].decode("utf-8", "replace")


# -- writing ---------------------------------------------------------------


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: nlmsghdr (port id 0: the kernel fills it in) and its body."""
    return HDR.pack(HDR_LEN + len(body), msg_type, flags, seq, 0) + body


def attr(atype: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return NLA.pack(length, atype) + payload + b"\0" * (-length % 4)


def u32(atype: int, value: int) -> bytes:
    return attr(atype, U32.pack(value))


def text(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def flag(atype: int) -> bytes:
    return attr(atype, b"")


def nest(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    """struct ifinfomsg (AF_UNSPEC)."""
    return IFINFO.pack(0, 0, index, flags, change)


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
        out.append(u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
    return b"".join(out)


def linkinfo(kind: str, data: bytes) -> bytes:
    """IFLA_LINKINFO with the kind and its IFLA_INFO_DATA (already encoded)."""
    return nest(IFLA_LINKINFO, text(IFLA_INFO_KIND, kind), nest(IFLA_INFO_DATA, data))
