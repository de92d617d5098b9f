"""Routes through XFRM interfaces (both families, main and custom tables) on a real kernel."""

from __future__ import annotations

import pytest

from xfrmid.errors import Conflict, InvalidArgument, NotFound
from xfrmid.kernel.objects import AddressSpec, LinkSpec, RouteSpec

from .conftest import ip, ip_run


@pytest.fixture
async def ipsec1(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec1", if_id=1))
    await kernel.add_address(netns, AddressSpec("ipsec1", "10.1.1.1/32"))
    await kernel.add_address(netns, AddressSpec("ipsec1", "2001:db8:1::1/128"))
    return "ipsec1"


def routes(netns: str, *selector: str, family: str = "-4") -> list[dict]:
    return ip(family, "route", "show", *selector, netns=netns)


async def test_ipv4_route_in_main(kernel, netns, ipsec1):
    spec = RouteSpec(dst="10.2.0.0/16", dev=ipsec1)
    await kernel.add_route(netns, spec)
    assert await kernel.own_routes(netns) == {spec}
    (shown,) = routes(netns, "10.2.0.0/16")
    assert shown["dev"] == ipsec1 and shown["protocol"] == "xfrmid"


async def test_a_known_ifindex_saves_the_lookup_and_a_stale_one_falls_back_to_the_name(kernel, netns, ipsec1):
    (link,) = ip("link", "show", "dev", ipsec1, netns=netns)
    right, wrong = link["ifindex"], link["ifindex"] + 1000  # no device has the wrong one
    spec = RouteSpec(dst="10.3.0.0/16", dev=ipsec1)
    await kernel.add_route(netns, spec, ifindex=right)
    stale = RouteSpec(dst="10.4.0.0/16", dev=ipsec1)
    await kernel.add_route(netns, stale, ifindex=wrong)  # by name after ENODEV
    six = RouteSpec(dst="2001:db8:4::/48", dev=ipsec1)
    await kernel.add_route(netns, six, ifindex=wrong)
    assert await kernel.own_routes(netns) == {spec, stale, six}
    assert {r["dev"] for r in routes(netns, "proto", "xfrmid")} == {ipsec1}
    await kernel.remove_route(netns, spec, ifindex=wrong)  # IPv4, default metric: read by name anyway
    await kernel.remove_route(netns, stale, sole=True, ifindex=wrong)  # nothing through it: by name
    await kernel.remove_route(netns, six, ifindex=wrong)
    assert await kernel.own_routes(netns) == set()


async def test_ipv6_route_in_main_with_metric(kernel, netns, ipsec1):
    spec = RouteSpec(dst="2001:db8:2::/48", dev=ipsec1, metric=50)
    await kernel.add_route(netns, spec)
    assert await kernel.own_routes(netns) == {spec}
    (shown,) = routes(netns, "2001:db8:2::/48", family="-6")
    assert shown["metric"] == 50 and shown["protocol"] == "xfrmid"


async def test_ipv4_route_in_custom_table_with_src(kernel, netns, ipsec1):
    spec = RouteSpec(dst="10.3.0.0/24", dev=ipsec1, table=1000, src="10.1.1.1", metric=7)
    await kernel.add_route(netns, spec)
    assert await kernel.own_routes(netns) == {spec}
    (shown,) = routes(netns, "table", "1000")
    assert (shown["dst"], shown["prefsrc"], shown["metric"], shown["protocol"]) == (
        "10.3.0.0/24", "10.1.1.1", 7, "xfrmid")
    assert routes(netns, "10.3.0.0/24") == []  # not in main


async def test_ipv6_route_in_custom_table(kernel, netns, ipsec1):
    spec = RouteSpec(dst="2001:db8:3::/64", dev=ipsec1, table=77, src="2001:db8:1::1")
    await kernel.add_route(netns, spec)
    assert await kernel.own_routes(netns) == {spec}
    (shown,) = routes(netns, "table", "77", family="-6")
    assert shown["dst"] == "2001:db8:3::/64" and shown["prefsrc"] == "2001:db8:1::1"


async def test_default_metric_normalised(kernel, netns, ipsec1):
    await kernel.add_route(netns, RouteSpec(dst="2001:db8:4::/64", dev=ipsec1, metric=1024))
    assert await kernel.own_routes(netns) == {RouteSpec(dst="2001:db8:4::/64", dev=ipsec1)}


async def test_add_and_remove_are_idempotent(kernel, netns, ipsec1):
    spec = RouteSpec(dst="10.4.0.0/16", dev=ipsec1, table=50)
    await kernel.add_route(netns, spec)
    await kernel.add_route(netns, spec)
    assert await kernel.own_routes(netns) == {spec}
    await kernel.remove_route(netns, spec)
    await kernel.remove_route(netns, spec)
    assert await kernel.own_routes(netns) == set()


@pytest.mark.parametrize("dst", ["10.9.0.0/16", "2001:db8:9::/64"])
async def test_removing_default_metric_spares_other_metric(kernel, netns, ipsec1, dst):
    # the kernel reads a removal without a metric as "the lowest metric of that
    # prefix": found by the crash test, where another owner's metric 100 went
    default = RouteSpec(dst=dst, dev=ipsec1, table=50)
    other = RouteSpec(dst=dst, dev=ipsec1, table=50, metric=100)
    await kernel.add_route(netns, other)
    await kernel.add_route(netns, default)
    assert await kernel.own_routes(netns) == {default, other}
    await kernel.remove_route(netns, default)
    assert await kernel.own_routes(netns) == {other}
    await kernel.remove_route(netns, default)  # already gone: still spares the other
    assert await kernel.own_routes(netns) == {other}


async def test_foreign_routes_left_untouched(kernel, netns, ipsec1):
    ip_run("route", "add", "10.5.0.0/16", "dev", ipsec1, "table", "50", "metric", "5", netns=netns)
    ip_run("-6", "route", "add", "2001:db8:5::/64", "dev", ipsec1, netns=netns)
    ours = RouteSpec(dst="10.5.0.0/16", dev=ipsec1, table=50)
    await kernel.add_route(netns, ours)
    assert await kernel.own_routes(netns) == {ours}
    await kernel.remove_route(netns, ours)
    await kernel.remove_route(netns, RouteSpec(dst="2001:db8:5::/64", dev=ipsec1))
    (left,) = routes(netns, "table", "50")
    assert left["dst"] == "10.5.0.0/16" and left["metric"] == 5 and "protocol" not in left
    assert routes(netns, "2001:db8:5::/64", family="-6") != []


async def test_clash_with_foreign_route_is_conflict(kernel, netns, ipsec1):
    ip_run("route", "add", "10.6.0.0/16", "dev", ipsec1, netns=netns)
    with pytest.raises(Conflict, match="10.6.0.0/16"):
        await kernel.add_route(netns, RouteSpec(dst="10.6.0.0/16", dev=ipsec1))


async def test_src_not_local_is_invalid(kernel, netns, ipsec1):
    with pytest.raises(InvalidArgument, match="10.99.99.99"):
        await kernel.add_route(netns, RouteSpec(dst="10.7.0.0/16", dev=ipsec1, src="10.99.99.99"))


async def test_route_on_missing_interface(kernel, netns):
    with pytest.raises(NotFound, match="'ipsec404'"):
        await kernel.add_route(netns, RouteSpec(dst="10.8.0.0/16", dev="ipsec404"))


async def test_bad_destination_is_invalid(kernel, netns, ipsec1):
    with pytest.raises(InvalidArgument, match="'10.9.0.1/16'"):
        await kernel.add_route(netns, RouteSpec(dst="10.9.0.1/16", dev=ipsec1))


async def test_routes_go_with_their_interface(kernel, netns, ipsec1):
    await kernel.add_route(netns, RouteSpec(dst="10.10.0.0/16", dev=ipsec1, table=60))
    await kernel.delete_link(netns, ipsec1)
    assert await kernel.own_routes(netns) == set()
