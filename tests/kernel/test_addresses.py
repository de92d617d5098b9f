"""Addresses on XFRM interfaces, IPv4 and IPv6, on a real kernel."""

from __future__ import annotations

import pytest

from xfrmid.errors import InvalidArgument, NotFound
from xfrmid.kernel.objects import AddressSpec, LinkSpec

from .conftest import ip


def shown_addresses(name: str, netns: str) -> set[str]:
    (link,) = ip("addr", "show", "dev", name, netns=netns)
    return {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])}


@pytest.fixture
async def ipsec1(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec1", if_id=1))
    return "ipsec1"


async def test_add_ipv4_address(kernel, netns, ipsec1):
    await kernel.add_address(netns, AddressSpec(ipsec1, "10.1.1.1/24"))
    assert await kernel.addresses(netns, ipsec1) == {"10.1.1.1/24"}
    assert "10.1.1.1/24" in shown_addresses(ipsec1, netns)


async def test_add_ipv6_address_hides_kernel_link_local(kernel, netns, ipsec1):
    await kernel.add_address(netns, AddressSpec(ipsec1, "2001:db8:1::1/64"))
    assert await kernel.addresses(netns, ipsec1) == {"2001:db8:1::1/64"}
    assert "2001:db8:1::1/64" in shown_addresses(ipsec1, netns)


async def test_bare_address_gets_host_prefix(kernel, netns, ipsec1):
    await kernel.add_address(netns, AddressSpec(ipsec1, "10.1.1.2"))
    await kernel.add_address(netns, AddressSpec(ipsec1, "2001:db8::2"))
    assert await kernel.addresses(netns, ipsec1) == {"10.1.1.2/32", "2001:db8::2/128"}


async def test_add_is_idempotent(kernel, netns, ipsec1):
    for _ in range(2):
        await kernel.add_address(netns, AddressSpec(ipsec1, "10.1.1.3/32"))
        await kernel.add_address(netns, AddressSpec(ipsec1, "2001:db8::3/128"))
    assert await kernel.addresses(netns, ipsec1) == {"10.1.1.3/32", "2001:db8::3/128"}


async def test_remove_is_idempotent(kernel, netns, ipsec1):
    await kernel.add_address(netns, AddressSpec(ipsec1, "10.1.1.4/32"))
    await kernel.add_address(netns, AddressSpec(ipsec1, "2001:db8::4/128"))
    for _ in range(2):
        await kernel.remove_address(netns, AddressSpec(ipsec1, "10.1.1.4/32"))
        await kernel.remove_address(netns, AddressSpec(ipsec1, "2001:db8::4/128"))
    assert await kernel.addresses(netns, ipsec1) == set()
    assert shown_addresses(ipsec1, netns) <= {a for a in shown_addresses(ipsec1, netns) if a.startswith("fe80")}


async def test_address_on_missing_interface(kernel, netns):
    with pytest.raises(NotFound, match="'ipsec404'"):
        await kernel.add_address(netns, AddressSpec("ipsec404", "10.1.1.5/32"))


async def test_bad_cidr_is_invalid(kernel, netns, ipsec1):
    with pytest.raises(InvalidArgument, match="'10.1.1.300/24'"):
        await kernel.add_address(netns, AddressSpec(ipsec1, "10.1.1.300/24"))


async def test_addresses_of_the_namespace_in_one_dump(kernel, netns, ipsec1):
    other = await kernel.create_link(netns, LinkSpec(name="ipsec2", if_id=2))
    await kernel.add_address(netns, AddressSpec(ipsec1, "10.1.1.6/24"))
    await kernel.add_address(netns, AddressSpec(ipsec1, "2001:db8::6/128"))
    await kernel.add_address(netns, AddressSpec("ipsec2", "10.1.2.6/32"))
    first = (await kernel.link(netns, ipsec1)).ifindex
    by_index = await kernel.addresses_by_index(netns)
    assert by_index[first] == {"10.1.1.6/24", "2001:db8::6/128"}  # no link-local
    assert by_index[other.ifindex] == {"10.1.2.6/32"}
    assert await kernel.addresses(netns, "ipsec2", other.ifindex) == {"10.1.2.6/32"}
    await kernel.delete_link(netns, "ipsec2")
    with pytest.raises(NotFound):
        await kernel.addresses(netns, "ipsec2", other.ifindex)
