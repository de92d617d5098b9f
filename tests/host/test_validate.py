"""Address, prefix and namespace validators (xfrmid.validate), driven by hypothesis."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from messages import accepted_or_refused, assert_one_sentence, refused
from xfrmid.errors import InvalidArgument
from xfrmid.validate import (
    NETNS_NAME_MAX,
    check_netns,
    family_of,
    parse_address,
    parse_interface_cidr,
    parse_network,
)

FAST = settings(max_examples=200, deadline=None)

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
non_strings = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=8),
    st.lists(st.text(max_size=3), max_size=2), addresses,
)
ADDRESS_CHARS = "0123456789abcdefABCDEF.:/%x -"
address_like = st.one_of(
    st.text(st.sampled_from(ADDRESS_CHARS), max_size=45),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\t", "/", "/24", "::", "::/", "1.2.3.4/", "1.2.3", "1.2.3.4.5",
                     "010.0.0.1", "0x1.2.3.4", "１.2.3.4", "1.2.3.4/１０", "1.2.3.4/ 24", "::1/+64",
                     "fe80::1%eth0", "fe80::%eth0/64", "1.2.3.4/255.0.255.0", "1.2.3.4 /24"]),
)


@st.composite
def with_prefix(draw, min_extra=0):
    """(address, prefix length) with the length valid for the family, plus min_extra."""
    address = draw(addresses)
    bits = address.max_prefixlen
    if min_extra:
        return address, draw(st.integers(bits + 1, bits + 300))
    return address, draw(st.integers(0, bits))


def family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def pad(text: str, spaces: tuple[str, str]) -> str:
    return spaces[0] + text + spaces[1]


padding = st.tuples(st.sampled_from(["", " ", "\t", "\n "]), st.sampled_from(["", " ", "\n"]))


# --- interface addresses -------------------------------------------------------------

@FAST
@given(with_prefix(), padding)
def test_interface_cidr_valid(pair, spaces):
    address, length = pair
    text = pad(f"{address}/{length}", spaces)
    result = parse_interface_cidr(text)
    assert result == f"{address}/{length}"
    assert family_of(result) == family(address.version)
    assert parse_interface_cidr(result) == result


@FAST
@given(addresses)
def test_bare_address_gets_the_host_prefix(address):
    assert parse_interface_cidr(str(address)) == f"{address}/{address.max_prefixlen}"


@FAST
@given(with_prefix(min_extra=1))
@example((ipaddress.ip_address("10.0.0.1"), 33))
@example((ipaddress.ip_address("2001:db8::1"), 129))
def test_interface_cidr_bad_prefix(pair):
    address, length = pair
    text = f"{address}/{length}"
    for parse in (parse_interface_cidr, parse_network, family_of):
        refused(parse, text, match="prefix length")


@FAST
@given(st.one_of(address_like, non_strings))
def test_interface_cidr_anything(value):
    try:
        result = parse_interface_cidr(value)
    except InvalidArgument as error:
        assert_one_sentence(error, value)
        return
    assert isinstance(value, str)
    iface = ipaddress.ip_interface(value.strip())
    assert result == iface.with_prefixlen and "%" not in result
    assert parse_interface_cidr(result) == result


# --- destinations --------------------------------------------------------------------

@FAST
@given(with_prefix(), padding)
def test_network_valid_or_host_bits(pair, spaces):
    address, length = pair
    text = pad(f"{address}/{length}", spaces)
    network = ipaddress.ip_network(f"{address}/{length}", strict=False)
    if network.network_address == address:
        assert parse_network(text) == network.with_prefixlen
        assert family_of(parse_network(text)) == family(address.version)
    else:
        error = refused(parse_network, text, match="host bits")
        assert network.with_prefixlen in str(error)  # names the prefix that was meant


@FAST
@given(st.one_of(address_like, non_strings))
@example("0.0.0.0/0")
@example("::/0")
# forms the C parser takes but ipaddress writes otherwise, or refuses
@example("010.0.0.0/8")
@example("10.0.0.0/08")
@example("10.0.0.0/33")
@example("10.0.0.1/32")
@example("10.0.0.1/31")
@example("1.2.3/24")
@example("10.0.0.0/\u0668")
def test_network_anything(value):
    try:
        result = parse_network(value)
    except InvalidArgument as error:
        assert_one_sentence(error, value)
        return
    assert result == ipaddress.ip_network(value.strip()).with_prefixlen
    assert parse_network(result) == result and "%" not in result


# --- single addresses ----------------------------------------------------------------

@FAST
@given(addresses, padding)
def test_address_valid(address, spaces):
    assert parse_address("Source", pad(str(address), spaces)) == str(address)
    assert family_of(str(address)) == family(address.version)


@FAST
@given(st.one_of(address_like, non_strings))
def test_address_anything(value):
    try:
        result = parse_address("Peer", value)
    except InvalidArgument as error:
        assert_one_sentence(error, value)
        assert str(error).startswith("Peer ")
        return
    assert result == str(ipaddress.ip_address(value.strip())) and "%" not in result


@pytest.mark.parametrize("text", ["192.0.2.1/32", "2001:db8::1/128", "fe80::1%eth0", "", "  ", "eth0"])
def test_address_refuses_prefixes_zones_and_blanks(text):
    refused(parse_address, "Source", text, values=(text,))


@pytest.mark.parametrize("parse", [parse_interface_cidr, parse_network, family_of])
@pytest.mark.parametrize("text", ["fe80::1%eth0", "fe80::%eth0/64", "fe80::1%eth0/64"])
def test_zone_index_is_refused(parse, text):
    refused(parse, text, match="zone")


@FAST
@given(st.one_of(address_like, non_strings))
def test_family_of_anything(value):
    try:
        result = family_of(value)
    except InvalidArgument as error:
        assert_one_sentence(error, value)
        return
    assert result == family(ipaddress.ip_interface(value.strip()).version)


# --- network namespaces ---------------------------------------------------------------

def iproute2_accepts(name: str) -> bool:
    """ip/ipnetns.c invalid_name(), plus NUL and text that is not encodable."""
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        return False
    return bool(raw) and len(raw) <= 255 and b"/" not in raw and b"\0" not in raw and name not in (".", "..")


netns_names = st.one_of(
    st.text(max_size=20),
    st.text(st.sampled_from("ab/.\0 é😀"), max_size=10),
    st.text(st.sampled_from("aé€😀"), min_size=60, max_size=260),  # around 255 bytes
    st.sampled_from([".", "..", "...", "a/b", "/", "blue", " ", "é" * 127, "é" * 128, "x" * 255, "x" * 256]),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
)


@FAST
@given(netns_names)
def test_check_netns(name):
    if name == "":
        assert check_netns(name) is None
    else:
        accepted_or_refused(iproute2_accepts(name), name, check_netns, name)


def test_check_netns_default_and_limits():
    assert check_netns(None) is None
    assert check_netns("") is None
    assert check_netns("x" * NETNS_NAME_MAX) == "x" * NETNS_NAME_MAX
    assert check_netns("é" * 127) == "é" * 127  # 254 bytes
    refused(check_netns, "é" * 128, match="256 bytes")


@FAST
@given(non_strings)
def test_check_netns_refuses_non_strings(value):
    assume(value is not None)
    refused(check_netns, value)
