"""Raw (attribute-light) dumps against pyroute2's full decoding, on the host's own kernel.

The host has no xfrm links, but veth devices, addresses, routes and rules in a
throwaway namespace exercise the same raw parsers (NetnsConnection.raw_dump,
the addresses/routes/rules parsers); xfrm links are compared in the VM.
Also: snapshot's one-dump and per-interface address paths agree (fake kernel).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import uuid

import pytest

from xfrmid.core.apply import snapshot
from xfrmid.kernel import open_kernel
from xfrmid.kernel.objects import AddressSpec, LinkSpec, RouteSpec, RuleSpec

from fake_kernel import FakeKernel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


@pytest.fixture
def netns():
    name = f"xraw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_raw_addresses_routes_rules(netns):
    for i in range(6):
        ip(netns, "link", "add", f"d{i}", "type", "veth", "peer", "name", f"e{i}")
        ip(netns, "link", "set", f"d{i}", "up")
        ip(netns, "route", "add", f"10.8.{i}.0/24", "dev", f"d{i}", "proto", "120")  # ours
        ip(netns, "route", "add", f"10.7.{i}.0/24", "dev", f"d{i}")  # foreign
    ip(netns, "rule", "add", "not", "to", "198.18.0.10/32", "fwmark", "10", "lookup", "50", "priority", "100",
       "proto", "120")
    ip(netns, "-6", "rule", "add", "to", "2001:db8::/32", "fwmark", "0x10/0xff", "lookup", "1000", "priority",
       "102", "proto", "120")
    ip(netns, "rule", "add", "to", "10.0.0.0/8", "lookup", "52", "priority", "103")  # foreign
    async with open_kernel() as kernel:
        await kernel.add_address(netns, AddressSpec("d0", "10.1.1.1/24"))
        await kernel.add_address(netns, AddressSpec("d0", "2001:db8::1/64"))
        await kernel.add_address(netns, AddressSpec("d1", "10.1.2.1/32"))
        await kernel.add_route(netns, RouteSpec(dst="2001:db8:5::/48", dev="d1", table=50, metric=7))
        assert await kernel.addresses(netns, "d0") == {"10.1.1.1/24", "2001:db8::1/64"}
        by_index = await kernel.addresses_by_index(netns)
        shown = json.loads(subprocess.run(["ip", "-n", netns, "-j", "link", "show"], check=True,
                                          capture_output=True, text=True).stdout)
        index = {link["ifname"]: link["ifindex"] for link in shown}
        assert by_index[index["d0"]] == {"10.1.1.1/24", "2001:db8::1/64"}
        assert by_index[index["d1"]] == {"10.1.2.1/32"}
        routes = await kernel.own_routes(netns)
        assert {(r.dst, r.dev, r.table, r.metric) for r in routes} == {
            *((f"10.8.{i}.0/24", f"d{i}", 254, None) for i in range(6)),
            ("2001:db8:5::/48", "d1", 50, 7),
        }
        assert await kernel.own_routes(netns, "d1") == {r for r in routes if r.dev == "d1"}
        assert await kernel.own_routes(netns, "nosuchdev") == set()
        rules = await kernel.own_rules(netns)
        assert rules == {
            RuleSpec(priority=100, table=50, family=socket.AF_INET, dst="198.18.0.10/32", fwmark=10,
                     fwmask=0xFFFFFFFF, invert=True),
            RuleSpec(priority=102, table=1000, family=socket.AF_INET6, dst="2001:db8::/32", fwmark=0x10,
                     fwmask=0xFF),
        }
        # raw dumps share the socket's one-dump-at-a-time queue with decoded ones
        many = await asyncio.gather(*(kernel.addresses_by_index(netns) for _ in range(10)),
                                    *(kernel.own_routes(netns) for _ in range(10)))
        assert all(m == by_index for m in many[:10]) and all(m == routes for m in many[10:])


async def test_snapshot_paths_agree():
    kernel = FakeKernel()
    for n in range(1, 8):
        await kernel.create_link(None, LinkSpec(name=f"ipsec{n}", if_id=n))
        await kernel.add_address(None, AddressSpec(f"ipsec{n}", f"10.0.0.{n}/32"))
        await kernel.add_route(None, RouteSpec(dst=f"10.{n}.0.0/16", dev=f"ipsec{n}"))
    everything = await snapshot(kernel, None)
    assert ("addresses_by_index", None) in kernel.calls and ("addresses", "ipsec1") not in kernel.calls
    few = await snapshot(kernel, None, {"ipsec2", "ipsec3"})
    assert few.addresses == {n: everything.addresses[n] for n in ("ipsec2", "ipsec3")}
    scoped = await snapshot(kernel, None, {"ipsec2", "nosuch"}, whole=False)
    assert set(scoped.links) == {"ipsec2"} and scoped.links["ipsec2"] == everything.links["ipsec2"]
    assert scoped.addresses == {"ipsec2": everything.addresses["ipsec2"]}
    assert scoped.routes == {r for r in everything.routes if r.dev == "ipsec2"}
    assert scoped.rules == everything.rules


def _encoded_link(index: int, name: str, flags: int, attrs: list, info: list | None) -> bytes:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"], msg["flags"] = index, flags
    msg["attrs"] = [("IFLA_IFNAME", name), *attrs]
    if info is not None:
        msg["attrs"].append(("IFLA_LINKINFO", {"attrs": info}))
    msg.encode()
    return bytes(msg.data)


@pytest.mark.parametrize("attrs, info, expected", [
    ([("IFLA_MTU", 1400), ("IFLA_GROUP", 120), ("IFLA_IFALIAS", "xfrmid"), ("IFLA_OPERSTATE", "UNKNOWN")],
     [("IFLA_INFO_KIND", "xfrm"), ("IFLA_INFO_DATA", {"attrs": [("IFLA_XFRM_IF_ID", 7), ("IFLA_XFRM_LINK", 3)]})],
     dict(if_id=7, mtu=1400, owned=True, external=False, operstate="UNKNOWN", link_index=3)),
    ([("IFLA_MTU", 1500), ("IFLA_GROUP", 120), ("IFLA_OPERSTATE", "DOWN")],
     [("IFLA_INFO_KIND", "xfrm"), ("IFLA_INFO_DATA", {"attrs": [("IFLA_XFRM_COLLECT_METADATA", True)]})],
     dict(if_id=0, mtu=1500, owned=False, external=True, operstate="DOWN", link_index=0)),
    ([("IFLA_MTU", 1500)], [("IFLA_INFO_KIND", "veth")], None),
    ([("IFLA_MTU", 1500)], None, None),
])
def test_raw_link_parse(attrs, info, expected):
    from xfrmid.kernel.link_msgs import xfrm_state

    data = _encoded_link(9, "ipsec7", 1, attrs, info)
    parsed = xfrm_state(data, 16, len(data))
    if expected is None:
        assert parsed is None
        return
    state, link_index = parsed
    assert (state.name, state.ifindex, state.up, link_index) == ("ipsec7", 9, True, expected.pop("link_index"))
    assert {k: getattr(state, k) for k in expected} == expected
