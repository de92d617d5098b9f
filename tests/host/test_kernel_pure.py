"""Pure parts of the kernel layer: errno translation, the xfrm plugin, spec normalisation."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from xfrmid.errors import Conflict, Failed, InvalidArgument, KernelUnsupported, NotFound
from xfrmid.kernel import routes, rules, xfrm_kind
from xfrmid.kernel.links import _create_message
from xfrmid.kernel.nlerrors import translate
from xfrmid.kernel.objects import XFRMID_LINK_GROUP, LinkSpec, RouteSpec, RuleSpec


@pytest.mark.parametrize(
    "code, cls, words",
    [
        (errno.EEXIST, Conflict, "already exists"),
        (errno.ENODEV, NotFound, "does not exist"),
        (errno.ENOENT, NotFound, "does not exist"),
        (errno.EOPNOTSUPP, KernelUnsupported, "does not support"),
        (errno.EPERM, Failed, "CAP_NET_ADMIN"),
        (errno.EINVAL, InvalidArgument, "invalid"),
        (errno.EMLINK, Failed, "errno 31"),
    ],
)
def test_errno_translation(code, cls, words):
    err = translate(NetlinkError(code), "Creating interface 'ipsec1'")
    assert type(err) is cls
    assert str(err).startswith("Creating interface 'ipsec1' failed: ") and words in str(err)
    assert str(err).endswith(".") and "\n" not in str(err)


def _pyroute2_create(name, data_attrs, mtu=None):
    msg = ifinfmsg()
    attrs = [("IFLA_IFNAME", name)]
    if mtu is not None:
        attrs.append(("IFLA_MTU", mtu))
    attrs += [
        ("IFLA_GROUP", XFRMID_LINK_GROUP),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "xfrm"), ("IFLA_INFO_DATA", {"attrs": data_attrs})]}),
    ]
    msg["attrs"] = attrs
    msg.encode()
    return msg.data[16:]  # without the nlmsghdr


@pytest.mark.parametrize("spec,link_index,named", [
    (LinkSpec("ipsec9", 9, external=True), 0, [("IFLA_XFRM_COLLECT_METADATA", True)]),
    (LinkSpec("ipsec5", 5), 7, [("IFLA_XFRM_IF_ID", 5), ("IFLA_XFRM_LINK", 7)]),
    (LinkSpec("ipsec5", 5, mtu=1400), 0, [("IFLA_XFRM_IF_ID", 5)]),
])
def test_create_message_is_what_pyroute2_encodes(spec, link_index, named):
    """The raw create request (netlink.py) is pyroute2's but for NLA_F_NESTED (set, as iproute2
    does), and decodes with the plugin."""
    xfrm_kind.register()  # what opening the kernel does
    ours = _create_message(spec, link_index)
    theirs = bytes(_pyroute2_create(spec.name, named, spec.mtu))
    assert len(ours) == len(theirs)
    back = ifinfmsg(struct.pack("=IHHII", 16 + len(ours), 16, 0, 0, 0) + ours)
    back.decode()
    assert back.get_attr("IFLA_IFNAME") == spec.name and back.get_attr("IFLA_GROUP") == XFRMID_LINK_GROUP
    assert back.get_attr("IFLA_MTU") == spec.mtu
    data = back.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert xfrm_kind.parse(data) == xfrm_kind.KindState(
        if_id=0 if spec.external else spec.if_id, link_index=link_index, external=spec.external)


def test_collect_metadata_is_a_zero_length_attribute():
    # attribute 3 inside IFLA_INFO_DATA, zero length: 4-byte header, type 3
    assert xfrm_kind.fill_create(LinkSpec("ipsec9", 9, external=True), 0) == bytes(
        [4, 0, xfrm_kind.IFLA_XFRM_COLLECT_METADATA, 0])


def test_verify_rejects_what_the_kernel_would():
    with pytest.raises(InvalidArgument, match="'eth0'"):
        xfrm_kind.verify(LinkSpec("ipsec1", 1, external=True, link="eth0"))
    with pytest.raises(InvalidArgument, match="if_id 0"):
        xfrm_kind.verify(LinkSpec("ipsec1", 0))
    with pytest.raises(InvalidArgument, match="MTU 67"):
        xfrm_kind.verify(LinkSpec("ipsec1", 1, mtu=67))
    xfrm_kind.verify(LinkSpec("ipsec1", 0, external=True))  # external: if_id is not used


def test_route_normalisation():
    assert routes.normalize(RouteSpec("2001:db8::/32", "ipsec1", metric=1024)).metric is None
    assert routes.normalize(RouteSpec("2001:db8::/32", "ipsec1", metric=0)).metric is None
    assert routes.normalize(RouteSpec("10.0.0.0/8", "ipsec1", metric=0)).metric is None
    assert routes.normalize(RouteSpec("10.0.0.0/8", "ipsec1", metric=1024)).metric == 1024
    assert routes.normalize(RouteSpec("10.0.0.0/8", "ipsec1", src="10.0.0.1")).src == "10.0.0.1"
    with pytest.raises(InvalidArgument, match="same family"):
        routes.normalize(RouteSpec("10.0.0.0/8", "ipsec1", src="2001:db8::1"))
    with pytest.raises(InvalidArgument, match="table 0"):
        routes.normalize(RouteSpec("10.0.0.0/8", "ipsec1", table=0))


def test_rule_normalisation():
    spec = rules.normalize(RuleSpec(priority=100, table=50, family=socket.AF_INET, dst="192.1.2.23/32",
                                    fwmark=1, invert=True))
    assert spec.fwmask == 0xFFFFFFFF
    assert rules.describe(spec) == "rule prio 100 not from all to 192.1.2.23/32 fwmark 0x1/0xffffffff lookup 50"
    assert rules.normalize(RuleSpec(priority=1, table=5, family=socket.AF_INET, dst="0.0.0.0/0")).dst is None
    with pytest.raises(InvalidArgument, match="outside its mask"):
        rules.normalize(RuleSpec(priority=1, table=5, family=socket.AF_INET, fwmark=0x100, fwmask=0xFF))


def _pyroute2_route(spec: RouteSpec, oif: int, adding: bool) -> bytes:
    """The route request as pyroute2 encodes it (the shape the raw one replaced)."""
    import ipaddress
    from pyroute2.netlink.rtnl.rtmsg import rtmsg
    net = ipaddress.ip_network(spec.dst)
    msg = rtmsg()
    msg["family"] = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    msg["dst_len"] = net.prefixlen
    msg["table"] = spec.table if spec.table < 256 else 0
    msg["proto"] = 120
    msg["scope"] = 253 if adding else 255
    msg["type"] = 1
    attrs: list = [("RTA_TABLE", spec.table), ("RTA_OIF", oif)]
    if net.prefixlen:
        attrs.append(("RTA_DST", str(net.network_address)))
    if spec.src is not None:
        attrs.append(("RTA_PREFSRC", spec.src))
    metric = spec.metric if spec.metric is not None else (1024 if net.version == 6 else 0)
    if metric:
        attrs.append(("RTA_PRIORITY", metric))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[16:])


@pytest.mark.parametrize("spec", [
    RouteSpec(dst="10.128.0.7/32", dev="ipsec1"),
    RouteSpec(dst="0.0.0.0/0", dev="ipsec1", table=50, metric=5),
    RouteSpec(dst="2001:db8::/64", dev="ipsec2", table=1000, src="2001:db8::1"),
    RouteSpec(dst="::/0", dev="ipsec2"),
])
@pytest.mark.parametrize("adding", [True, False])
def test_route_message_is_what_pyroute2_encodes(spec, adding):
    """Routes are added and removed with requests built as bytes (routes._message): the same
    bytes pyroute2's rtmsg gives."""
    assert routes._message(spec, 7, adding) == _pyroute2_route(spec, 7, adding)
