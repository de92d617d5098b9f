"""rtnetlink notifications as small typed events, parsed only as far as needed.

A busy host sends thousands of link events that have nothing to do with
xfrmid (containers starting, veth pairs churning). ``Parser.feed`` looks at
the fixed headers first and at one or two attributes at most before it
drops a message; only messages about objects xfrmid could care about are
walked fully and become events:

- links of kind xfrm, or whose name or ifindex xfrmid manages (``Interest``);
- addresses on managed links;
- routes and rules carrying xfrmid's protocol marker, routes via managed links.

The parser works on raw bytes rather than pyroute2's message classes because
decoding a full RTM_NEWLINK with pyroute2 costs ~100x more than this filter.

``kernel_filter()`` is the same choice made earlier, in the kernel: a classic
BPF socket filter that drops link messages of other kinds and routes and
rules without xfrmid's protocol before they are queued on the socket, so a
storm of foreign events neither wakes the daemon nor fills its receive buffer
(no overrun, no resync). The parser still checks everything it is given.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from dataclasses import dataclass, field

from .objects import MAIN_TABLE, XFRMID_LINK_GROUPS, XFRMID_PROTO

from .netlink import (
    FIBRULE,
    FRA_DST,
    FRA_PRIORITY,
    FRA_PROTOCOL,
    FRA_SRC,
    FRA_TABLE,
    HDR,
    HDR_LEN,
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDR,
    IFF_UP,
    IFINFO,
    IFINFO_END,
    IFLA_GROUP,
    IFLA_IFNAME,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_OPERSTATE,
    NLMSG_ERROR,
    OPERSTATES,
    RTA_DST,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RTMSG,
    RTMSG_END,
    U32,
    cstr,
    error_code,
    walk,
)

# IFLA_INFO_KIND "xfrm" as it appears nested in IFLA_LINKINFO: a C-speed
# bytes.find for it tells most foreign links apart without walking attributes.
_XFRM_KIND_NLA = b"\x09\x00\x01\x00xfrm\x00"


@dataclass(frozen=True, slots=True)
class LinkEvent:
    netns: str | None
    deleted: bool
    ifindex: int
    ifname: str
    kind: str | None  # IFLA_INFO_KIND, None when the message had none
    up: bool  # IFF_UP
    operstate: str
    mtu: int
    group: int
    managed: bool  # its name or ifindex is in the Interest

    @property
    def marked(self) -> bool:
        """Carries one of xfrmid's link groups (made by it, or being deleted by it)."""
        return self.group in XFRMID_LINK_GROUPS


@dataclass(frozen=True, slots=True)
class AddressEvent:
    netns: str | None
    deleted: bool
    ifindex: int
    address: str  # "addr/prefix", as validate.parse_interface_cidr writes it
    pid: int  # netlink port of the process whose request caused it (0: the kernel)


@dataclass(frozen=True, slots=True)
class RouteEvent:
    netns: str | None
    deleted: bool
    family: int
    dst: str  # network, as validate.parse_network writes it
    table: int
    protocol: int
    oif: int
    metric: int | None
    pid: int


@dataclass(frozen=True, slots=True)
class RuleEvent:
    netns: str | None
    deleted: bool
    family: int
    priority: int
    table: int
    protocol: int
    dst: str | None
    src: str | None
    pid: int


@dataclass(frozen=True, slots=True)
class ResyncEvent:
    """The event stream cannot be trusted (socket overrun, namespace replaced): reconcile."""

    netns: str | None
    reason: str
    overrun: bool = False


Event = LinkEvent | AddressEvent | RouteEvent | RuleEvent | ResyncEvent


@dataclass
class Interest:
    """What xfrmid manages in one namespace; the parser keeps ``indexes`` current.

    ``names`` is the source of truth (set by the watcher from the manager's
    views); the ifindex of a managed name is learnt from its link events, so
    address and route events (which carry only an ifindex) can be matched.
    """

    names: set[str] = field(default_factory=set)
    indexes: set[int] = field(default_factory=set)


def _ip(family: int, data: bytes, start: int, stop: int) -> str:
    return socket.inet_ntop(family, data[start:stop])


def _net(family: int, data: bytes | None, start: int, stop: int, plen: int) -> str:
    if data is None:  # no RTA_DST: the default route of that family
        return "0.0.0.0/0" if family == socket.AF_INET else "::/0"
    addr = ipaddress.ip_address(data[start:stop])
    return ipaddress.ip_network((addr, plen), strict=False).with_prefixlen


class Parser:
    """Turns datagrams from one namespace's monitor socket into events."""

    def __init__(self, netns: str | None, interest: Interest) -> None:
        self.netns = netns
        self.interest = interest
        self.messages = 0  # counters for the curious (and the benchmarks)
        self.events = 0

    def feed(self, data: bytes) -> list[Event]:
        """Events for the messages in one datagram; NLMSG_ERROR raises OSError(errno)."""
        out: list[Event] = []
        pos, size = 0, len(data)
        while pos + HDR_LEN <= size:
            length, mtype, _flags, _seq, pid = HDR.unpack_from(data, pos)
            if length < HDR_LEN or pos + length > size:
                break
            end = pos + length
            self.messages += 1
            if mtype == RTM_NEWLINK or mtype == RTM_DELLINK:
                ev = self._link(data, pos + HDR_LEN, end, mtype == RTM_DELLINK)
            elif mtype == RTM_NEWADDR or mtype == RTM_DELADDR:
                ev = self._addr(data, pos + HDR_LEN, end, mtype == RTM_DELADDR, pid)
            elif mtype == RTM_NEWROUTE or mtype == RTM_DELROUTE:
                ev = self._route(data, pos + HDR_LEN, end, mtype == RTM_DELROUTE, pid)
            elif mtype == RTM_NEWRULE or mtype == RTM_DELRULE:
                ev = self._rule(data, pos + HDR_LEN, end, mtype == RTM_DELRULE, pid)
            elif mtype == NLMSG_ERROR:
                code = error_code(data, pos + HDR_LEN, end)
                if code:
                    raise OSError(code, "netlink error on the monitor socket")
                ev = None
            else:
                ev = None
            if ev is not None:
                out.append(ev)
            pos += (length + 3) & ~3
        self.events += len(out)
        return out

    def _link(self, data: bytes, pos: int, end: int, deleted: bool) -> LinkEvent | None:
        _family, _type, index, flags, _change = IFINFO.unpack_from(data, pos)
        interest = self.interest
        by_index = index in interest.indexes
        xfrm = data.find(_XFRM_KIND_NLA, pos + IFINFO.size, end) >= 0
        if not (by_index or xfrm or interest.names):
            return None
        name, kind, mtu, oper, group = "", None, 0, 0, 0
        for atype, start, stop in walk(data, pos + IFINFO.size, end):
            if atype == IFLA_IFNAME:
                name = cstr(data, start, stop)
                # the common case of a storm: a foreign link, named first
                if not (by_index or xfrm or name in interest.names):
                    return None
            elif atype == IFLA_MTU:
                mtu = U32.unpack_from(data, start)[0]
            elif atype == IFLA_OPERSTATE:
                oper = data[start]
            elif atype == IFLA_GROUP:
                group = U32.unpack_from(data, start)[0]
            elif atype == IFLA_LINKINFO:
                for itype, istart, istop in walk(data, start, stop):
                    if itype == IFLA_INFO_KIND:
                        kind = cstr(data, istart, istop)
        managed = by_index or name in interest.names
        if not managed and kind != "xfrm":
            return None  # the needle matched inside some other attribute
        if managed:
            # learn the index of a managed name; forget one renamed away or gone
            if name in interest.names and not deleted:
                interest.indexes.add(index)
            elif by_index:
                interest.indexes.discard(index)
        state = OPERSTATES[oper] if oper < len(OPERSTATES) else "unknown"
        return LinkEvent(
            self.netns, deleted, index, name, kind, bool(flags & IFF_UP), state, mtu, group, managed
        )

    def _addr(self, data: bytes, pos: int, end: int, deleted: bool, pid: int) -> AddressEvent | None:
        family, plen, _flags, _scope, index = IFADDR.unpack_from(data, pos)
        if index not in self.interest.indexes:
            return None
        local = address = None
        for atype, start, stop in walk(data, pos + IFADDR.size, end):
            if atype == IFA_LOCAL:
                local = _ip(family, data, start, stop)
            elif atype == IFA_ADDRESS:
                address = _ip(family, data, start, stop)
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on
        # point-to-point links (and the own one where there is no IFA_LOCAL)
        addr = local or address
        if addr is None:
            return None
        return AddressEvent(self.netns, deleted, index, f"{addr}/{plen}", pid)

    def _route(self, data: bytes, pos: int, end: int, deleted: bool, pid: int) -> RouteEvent | None:
        family, dst_len, _src_len, _tos, table, proto, _scope, _rtype, _flags = RTMSG.unpack_from(data, pos)
        if proto != XFRMID_PROTO and not self.interest.indexes:
            return None
        oif, metric, dst = 0, None, (None, 0, 0)
        for atype, start, stop in walk(data, pos + RTMSG.size, end):
            if atype == RTA_OIF:
                oif = U32.unpack_from(data, start)[0]
            elif atype == RTA_TABLE:
                table = U32.unpack_from(data, start)[0]
            elif atype == RTA_PRIORITY:
                metric = U32.unpack_from(data, start)[0]
            elif atype == RTA_DST:
                dst = (data, start, stop)
        if proto != XFRMID_PROTO and oif not in self.interest.indexes:
            return None
        net = _net(family, dst[0], dst[1], dst[2], dst_len)
        return RouteEvent(self.netns, deleted, family, net, table or MAIN_TABLE, proto, oif, metric, pid)

    def _rule(self, data: bytes, pos: int, end: int, deleted: bool, pid: int) -> RuleEvent | None:
        family, dst_len, src_len, _tos, table, _r1, _r2, _action, _flags = FIBRULE.unpack_from(data, pos)
        proto, priority, dst, src = 0, 0, None, None
        for atype, start, stop in walk(data, pos + RTMSG.size, end):
            if atype == FRA_PROTOCOL:
                proto = data[start]
            elif atype == FRA_TABLE:
                table = U32.unpack_from(data, start)[0]
            elif atype == FRA_PRIORITY:
                priority = U32.unpack_from(data, start)[0]
            elif atype == FRA_DST:
                dst = (start, stop)
            elif atype == FRA_SRC:
                src = (start, stop)
        if proto != XFRMID_PROTO:
            return None
        dst_net = _net(family, data, dst[0], dst[1], dst_len) if dst else None
        src_net = _net(family, data, src[0], src[1], src_len) if src else None
        return RuleEvent(self.netns, deleted, family, priority, table, proto, dst_net, src_net, pid)


# -- the kernel-side filter (classic BPF, linux/filter.h) ------------------------

_BPF_LD, _BPF_LDX, _BPF_JMP, _BPF_RET, _BPF_MISC = 0x00, 0x01, 0x05, 0x06, 0x07
_BPF_W, _BPF_H, _BPF_B = 0x00, 0x08, 0x10
_BPF_IMM, _BPF_ABS, _BPF_IND = 0x00, 0x20, 0x40
_BPF_JEQ, _BPF_TAX = 0x10, 0x00
_SKF_AD_OFF = -0x1000
# ancillary loads (Documentation/networking/filter.rst "nla", "nlan"): A = offset of the
# attribute of type X found from offset A on (nla) or inside the attribute at offset A (nlan), or 0
_SKF_AD_NLATTR, _SKF_AD_NLATTR_NEST = 12, 16
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def _net16(value: int) -> int:
    """A host-order u16 as BPF's (big-endian) half-word load sees it."""
    return value if sys.byteorder == "big" else ((value & 0xFF) << 8) | (value >> 8)


def kernel_filter() -> bytes:
    """The socket filter program (struct sock_filter[]) for a monitor socket.

    Passes: links of kind xfrm (IFLA_LINKINFO/IFLA_INFO_KIND "xfrm"), routes
    with protocol 120, rules with FRA_PROTOCOL 120, and every other message
    (addresses, errors) whole. Links without the kind xfrm cannot be managed
    (xfrmid manages xfrm links only; a foreign device can take a managed name
    only after the managed link was deleted or renamed, and those events pass),
    routes and rules of other protocols are never drift.
    """
    xfrm = int.from_bytes(b"xfrm", "big")
    # (label, code, k, jump-if-true label, jump-if-false label); None: next instruction
    prog: list[tuple[str | None, int, int, str | None, str | None]] = [
        (None, _BPF_LD | _BPF_H | _BPF_ABS, 4, None, None),  # nlmsg_type
        (None, _BPF_JMP | _BPF_JEQ, _net16(RTM_NEWLINK), "link", None),
        (None, _BPF_JMP | _BPF_JEQ, _net16(RTM_DELLINK), "link", None),
        (None, _BPF_JMP | _BPF_JEQ, _net16(RTM_NEWROUTE), "route", None),
        (None, _BPF_JMP | _BPF_JEQ, _net16(RTM_DELROUTE), "route", None),
        (None, _BPF_JMP | _BPF_JEQ, _net16(RTM_NEWRULE), "rule", None),
        (None, _BPF_JMP | _BPF_JEQ, _net16(RTM_DELRULE), "rule", None),
        (None, _BPF_RET, _ACCEPT, None, None),
        ("link", _BPF_LD | _BPF_W | _BPF_IMM, IFINFO_END, None, None),
        (None, _BPF_LDX | _BPF_W | _BPF_IMM, IFLA_LINKINFO, None, None),
        (None, _BPF_LD | _BPF_W | _BPF_ABS, _SKF_AD_OFF + _SKF_AD_NLATTR, None, None),
        (None, _BPF_JMP | _BPF_JEQ, 0, "drop", None),
        (None, _BPF_LDX | _BPF_W | _BPF_IMM, IFLA_INFO_KIND, None, None),
        (None, _BPF_LD | _BPF_W | _BPF_ABS, _SKF_AD_OFF + _SKF_AD_NLATTR_NEST, None, None),
        (None, _BPF_JMP | _BPF_JEQ, 0, "drop", None),
        (None, _BPF_MISC | _BPF_TAX, 0, None, None),
        (None, _BPF_LD | _BPF_W | _BPF_IND, 4, None, None),  # the kind's first 4 bytes
        (None, _BPF_JMP | _BPF_JEQ, xfrm, None, "drop"),
        (None, _BPF_LD | _BPF_B | _BPF_IND, 8, None, None),  # and its NUL: not "xfrmx"
        (None, _BPF_JMP | _BPF_JEQ, 0, "accept", "drop"),
        ("route", _BPF_LD | _BPF_B | _BPF_ABS, HDR_LEN + 5, None, None),  # rtm_protocol
        (None, _BPF_JMP | _BPF_JEQ, XFRMID_PROTO, "accept", "drop"),
        ("rule", _BPF_LD | _BPF_W | _BPF_IMM, RTMSG_END, None, None),
        (None, _BPF_LDX | _BPF_W | _BPF_IMM, FRA_PROTOCOL, None, None),
        (None, _BPF_LD | _BPF_W | _BPF_ABS, _SKF_AD_OFF + _SKF_AD_NLATTR, None, None),
        (None, _BPF_JMP | _BPF_JEQ, 0, "drop", None),
        (None, _BPF_MISC | _BPF_TAX, 0, None, None),
        (None, _BPF_LD | _BPF_B | _BPF_IND, 4, None, None),
        (None, _BPF_JMP | _BPF_JEQ, XFRMID_PROTO, "accept", "drop"),
        ("accept", _BPF_RET, _ACCEPT, None, None),
        ("drop", _BPF_RET, _DROP, None, None),
    ]
    where = {label: i for i, (label, *_rest) in enumerate(prog) if label}
    out = bytearray()
    for i, (_label, code, k, jt, jf) in enumerate(prog):
        rel = lambda target: 0 if target is None else where[target] - i - 1  # noqa: E731
        out += _FILTER.pack(code, rel(jt), rel(jf), k & 0xFFFFFFFF)
    return bytes(out)
