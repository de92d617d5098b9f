"""events.Parser on rtnetlink messages encoded by pyroute2: filter and typed events."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from xfrmid.kernel.events import (
    AddressEvent,
    Interest,
    LinkEvent,
    Parser,
    RouteEvent,
    RuleEvent,
    kernel_filter,
)


def encode(msg, mtype: int, pid: int = 0) -> bytes:
    msg["header"]["type"] = mtype
    msg["header"]["pid"] = pid
    msg.encode()
    return bytes(msg.data)


def link_msg(name: str, index: int, *, kind: str | None = "xfrm", up=True, mtu=1400, group=0, deleted=False,
             alias: str | None = None) -> bytes:
    m = ifinfmsg()
    m["index"], m["flags"] = index, 1 if up else 0
    attrs = [("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_OPERSTATE", "UP" if up else "DOWN"), ("IFLA_GROUP", group)]
    if alias is not None:
        attrs.append(("IFLA_IFALIAS", alias))
    if kind is not None:
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    m["attrs"] = attrs
    return encode(m, 17 if deleted else 16)


def addr_msg(index: int, family: int, address: str, plen: int, deleted=False, pid=0) -> bytes:
    a = ifaddrmsg()
    a["family"], a["prefixlen"], a["index"] = family, plen, index
    a["attrs"] = [("IFA_ADDRESS", address)] + ([("IFA_LOCAL", address)] if family == socket.AF_INET else [])
    return encode(a, 21 if deleted else 20, pid)


def route_msg(dst: str | None, plen: int, *, proto=120, oif=5, table=254, deleted=False, family=socket.AF_INET) -> bytes:
    r = rtmsg()
    r["family"], r["dst_len"], r["proto"], r["table"] = family, plen, proto, min(table, 255)
    attrs = [("RTA_OIF", oif), ("RTA_TABLE", table), ("RTA_PRIORITY", 7)]
    if dst is not None:
        attrs.insert(0, ("RTA_DST", dst))
    r["attrs"] = attrs
    return encode(r, 25 if deleted else 24, 4242)


def rule_msg(proto: int, *, deleted=True) -> bytes:
    f = fibmsg()
    f["family"], f["dst_len"], f["table"] = socket.AF_INET, 32, 50
    f["attrs"] = [("FRA_DST", "192.0.2.1"), ("FRA_PRIORITY", 100), ("FRA_PROTOCOL", proto), ("FRA_TABLE", 50)]
    return encode(f, 33 if deleted else 32, 77)


def test_unmanaged_xfrm_link_is_reported_not_learnt():
    interest = Interest()
    [ev] = Parser(None, interest).feed(link_msg("ipsec7", 7, group=120))
    assert ev == LinkEvent(None, False, 7, "ipsec7", "xfrm", True, "up", 1400, 120, False)
    assert ev.marked and interest.indexes == set()


def test_foreign_links_are_dropped_cheaply():
    parser = Parser("blue", Interest(names={"ipsec1"}))
    data = b"".join(link_msg(f"veth{i}", 100 + i, kind="veth") for i in range(50))
    assert parser.feed(data) == []
    assert parser.messages == 50 and parser.events == 0


def test_kind_needle_inside_another_attribute_is_not_fooled():
    needle = "\x09\x00\x01\x00xfrm"
    assert Parser(None, Interest()).feed(link_msg("veth1", 3, kind="veth", alias=needle)) == []


def test_managed_name_teaches_its_index_and_forgets_it_when_deleted():
    interest = Interest(names={"ipsec1"})
    parser = Parser(None, interest)
    [ev] = parser.feed(link_msg("ipsec1", 5, up=False))
    assert ev.managed and not ev.up and ev.operstate == "down"
    assert interest.indexes == {5}
    [ev] = parser.feed(addr_msg(5, socket.AF_INET6, "2001:db8::1", 64, deleted=True, pid=9))
    assert ev == AddressEvent(None, True, 5, "2001:db8::1/64", 9)
    [ev] = parser.feed(link_msg("ipsec1", 5, deleted=True))
    assert ev.deleted and interest.indexes == set()
    assert parser.feed(addr_msg(5, socket.AF_INET, "10.0.0.1", 24)) == []


def test_renamed_away_is_reported_by_index():
    interest = Interest(names={"ipsec1"}, indexes={5})
    [ev] = Parser(None, interest).feed(link_msg("other", 5, kind="veth"))
    assert ev.managed and ev.ifname == "other" and ev.kind == "veth"
    assert interest.indexes == set()


def test_routes_of_ours_or_via_managed_links():
    parser = Parser(None, Interest(indexes={5}))
    [ours, via, default] = parser.feed(
        route_msg("10.2.0.0", 16, proto=120, oif=9, table=1000, deleted=True)
        + route_msg("10.3.0.0", 16, proto=2, oif=5)
        + route_msg(None, 0, proto=120, oif=9)
        + route_msg("10.4.0.0", 16, proto=2, oif=9)  # foreign: dropped
    )
    assert ours == RouteEvent(None, True, socket.AF_INET, "10.2.0.0/16", 1000, 120, 9, 7, 4242)
    assert via.protocol == 2 and via.oif == 5 and via.dst == "10.3.0.0/16"
    assert default.dst == "0.0.0.0/0"


def test_foreign_routes_need_no_walk_when_nothing_is_managed():
    assert Parser(None, Interest()).feed(route_msg("10.4.0.0", 16, proto=2, oif=9)) == []


def test_rules_only_with_our_protocol():
    parser = Parser(None, Interest())
    [ev] = parser.feed(rule_msg(120) + rule_msg(3))
    assert ev == RuleEvent(None, True, socket.AF_INET, 100, 50, 120, "192.0.2.1/32", None, 77)


@pytest.mark.parametrize("code", [-errno.ENOBUFS, errno.ENOBUFS])  # kernel's, pyroute2's synthetic
def test_socket_error_raises_oserror(code):
    data = struct.pack("=IHHIIi", 20, 2, 0, 0, 0, code)
    with pytest.raises(OSError) as err:
        Parser(None, Interest()).feed(data)
    assert err.value.errno == errno.ENOBUFS


def test_truncated_or_unknown_messages_are_skipped():
    parser = Parser(None, Interest(names={"ipsec1"}))
    full = link_msg("ipsec1", 5)
    assert parser.feed(full[:40]) == []
    assert parser.feed(struct.pack("=IHHII", 16, 3, 0, 0, 0)) == []  # NLMSG_DONE
    assert len(parser.feed(full)) == 1


# -- the kernel-side filter, run by a classic BPF interpreter of the kernel's semantics --

def _nla_find(data: bytes, pos: int, end: int, atype: int) -> int:
    while pos + 4 <= end:
        alen, t = struct.unpack_from("=HH", data, pos)
        if alen < 4 or pos + alen > end:
            return 0
        if t & 0x3FFF == atype:
            return pos
        pos += (alen + 3) & ~3
    return 0


def run_filter(program: bytes, data: bytes) -> int:
    """What the kernel's sk_filter returns for ``data`` (one netlink message): 0 drops it.

    Only the instructions the program uses; ancillary loads as net/core/filter.c's
    bpf_skb_get_nlattr(_nest): A = offset of the attribute of type X from
    offset A on (nla), or inside the attribute at offset A (nlan), else 0.
    """
    ins = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    a = x = pc = 0
    while True:
        code, jt, jf, k = ins[pc]
        pc += 1
        if code == 0x06:  # ret k
            return k
        if code == 0x00:  # ld #k
            a = k
        elif code == 0x01:  # ldx #k
            x = k
        elif code == 0x07:  # tax
            x = a
        elif code == 0x15:  # jeq #k
            pc += jt if a == k else jf
        elif code in (0x20, 0x28, 0x30):  # ld[w|h|b] [k], ancillary when k < 0
            off = k - (1 << 32) if k & 0x80000000 else k
            if off == -0x1000 + 12:  # nla
                a = _nla_find(data, a, len(data), x) if a + 4 <= len(data) else 0
            elif off == -0x1000 + 16:  # nlan
                alen = struct.unpack_from("=H", data, a)[0] if a + 4 <= len(data) else 0
                a = _nla_find(data, a + 4, a + alen, x) if alen else 0
            else:
                size = {0x20: 4, 0x28: 2, 0x30: 1}[code]
                if off + size > len(data):
                    return 0
                a = int.from_bytes(data[off:off + size], "big")
        elif code in (0x40, 0x50):  # ld[w|b] [x + k]
            size = 4 if code == 0x40 else 1
            if x + k + size > len(data):
                return 0
            a = int.from_bytes(data[x + k:x + k + size], "big")
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")


@pytest.mark.parametrize("data, passes", [
    (link_msg("ipsec1", 5), True),
    (link_msg("ipsec1", 5, deleted=True), True),
    (link_msg("xfrm1", 6, kind="xfrmx"), False),
    (link_msg("veth1", 7, kind="veth"), False),
    (link_msg("eth0", 2, kind=None), False),
    (link_msg("veth1", 3, kind="veth", alias="\x09\x00\x01\x00xfrm"), False),
    (route_msg("10.2.0.0", 16, proto=120, deleted=True), True),
    (route_msg("10.3.0.0", 16, proto=2, oif=5), False),  # never drift: not worth a wakeup
    (rule_msg(120), True),
    (rule_msg(3), False),
    (addr_msg(5, socket.AF_INET, "10.0.0.1", 24), True),  # the parser matches the index
    (struct.pack("=IHHIIi", 20, 2, 0, 0, 0, -errno.ENOBUFS), True),
], ids=["xfrm", "xfrm-deleted", "xfrmx", "veth", "no-kind", "needle-in-alias", "route-120", "route-2",
        "rule-120", "rule-3", "address", "error"])
def test_kernel_filter_passes_only_what_the_parser_could_use(data, passes):
    assert (run_filter(kernel_filter(), data) != 0) is passes
    if not passes:  # nothing dropped that the parser would have turned into drift
        assert all(not isinstance(ev, (LinkEvent, RuleEvent)) and getattr(ev, "protocol", 120) != 120
                   for ev in Parser(None, Interest(names={"ipsec1"}, indexes={5})).feed(data))


def test_kernel_filter_fits_the_kernel():
    program = kernel_filter()
    assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096  # BPF_MAXINSNS
    for i in range(0, len(program), 8):
        code, jt, jf, _k = struct.unpack_from("=HBBI", program, i)
        assert i // 8 + 1 + max(jt, jf) < len(program) // 8 or code == 0x06  # jumps stay inside
    assert struct.unpack_from("=H", program, len(program) - 8)[0] == 0x06  # ends with a ret
