"""The NetworkManager VPN plugin's pure parts: connection settings, NM's dictionaries, ip xfrm commands."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from dbus_fast import Variant

from xfrmid.errors import InvalidArgument
from xfrmid.integrations import nm_vpn_esp as esp
from xfrmid.integrations import nm_vpn_settings as settings

KEY_OUT = "0x" + "11" * 20
KEY_IN = "0x" + "22" * 20


def connection(data: dict[str, str], secrets: dict[str, str] | None = None) -> dict:
    """What NetworkManager passes to Connect (a{sa{sv}}), as dbus-fast delivers it."""
    base = {"interface": "ipsec9", "remote": "198.51.100.1", "address": "10.99.0.2/32",
            "routes": "10.99.1.0/24 10.98.0.0/16", "spi-out": "0x9001", "spi-in": "0x9002"}
    base.update(data)
    base = {k: v for k, v in base.items() if v is not None}
    return {
        "connection": {"id": Variant("s", "site9"), "uuid": Variant("s", "0b4c7e3e-59a2-4f43-9d2e-6a1f3d2c9b10"),
                       "type": Variant("s", "vpn")},
        "vpn": {"service-type": Variant("s", settings.SERVICE), "data": Variant("a{ss}", base),
                "secrets": Variant("a{ss}", {"key-out": KEY_OUT, "key-in": KEY_IN} if secrets is None else secrets)},
    }


def in_addr(value: int) -> str:
    """Back from NetworkManager's uint32 (in_addr_t in host memory) to text."""
    return socket.inet_ntoa(struct.pack("=I", value))


def test_a_full_connection_parses():
    t = settings.parse(connection({"local": "198.51.100.2", "mtu": "1400"}))
    assert (t.interface, t.id, t.uuid) == ("ipsec9", "site9", "0b4c7e3e-59a2-4f43-9d2e-6a1f3d2c9b10")
    assert t.remote == ipaddress.ip_address("198.51.100.1") and t.local == ipaddress.ip_address("198.51.100.2")
    assert t.routes == (ipaddress.ip_network("10.99.1.0/24"), ipaddress.ip_network("10.98.0.0/16"))
    assert (t.spi_out, t.spi_in, t.key_out, t.key_in, t.mtu) == (0x9001, 0x9002, KEY_OUT, KEY_IN, 1400)
    assert t.families() == {4} and not t.default_route


@pytest.mark.parametrize(("data", "secrets", "words"), [
    ({"interface": None}, None, "no interface"),
    ({"remote": None}, None, "no remote"),
    ({"remote": "gateway.example"}, None, "remote='gateway.example' is not an IP address"),
    ({"local": "2001:db8::1"}, None, "different IP versions"),
    ({"address": None}, None, "neither address nor address6"),
    ({"address": "10.99.0.2"}, None, None),  # a bare address is a /32
    ({"address": "2001:db8::2/64"}, None, "is not an IPv4 address"),
    ({"routes": "10.99.1.0/24 2001:db8:1::/48"}, None, "needs an IPv6 address"),
    ({"routes": "10.99.1.0/33"}, None, "is not a prefix"),
    ({"spi-out": None}, None, "no spi-out"),
    ({"spi-out": "0x10"}, None, "not an SPI"),
    ({"spi-in": "0x9001"}, None, "must differ"),
    ({"mtu": "9"}, None, "mtu=9"),
    ({"colour": "blue"}, None, "unknown keys: colour"),
    ({}, {"key-out": KEY_OUT, "key-in": "0x1234"}, "key-in must be 0x and 40 hex digits"),
])
def test_bad_settings_are_named(data, secrets, words):
    if words is None:
        assert settings.parse(connection(data, secrets)).addresses[0].network.prefixlen == 32
        return
    with pytest.raises(InvalidArgument) as err:
        settings.parse(connection(data, secrets))
    assert words in str(err.value)


def test_missing_secrets_are_listed():
    assert settings.missing_secrets(connection({})) == []
    assert settings.missing_secrets(connection({}, {"key-out": KEY_OUT})) == ["key-in"]
    assert settings.missing_secrets(connection({}, {})) == ["key-out", "key-in"]


def test_config_hands_the_interface_and_gateway_to_network_manager():
    values = settings.config(settings.parse(connection({"mtu": "1400"})))
    assert values["tundev"] == Variant("s", "ipsec9")
    assert values["gateway"].signature == "u" and in_addr(values["gateway"].value) == "198.51.100.1"
    assert values["has-ip4"].value is True and values["has-ip6"].value is False
    assert values["mtu"] == Variant("u", 1400)


def test_ip4_config_carries_address_and_routes_without_default():
    values = settings.ip4_config(settings.parse(connection({})))
    assert in_addr(values["address"].value) == "10.99.0.2" and values["prefix"].value == 32
    routes = [(in_addr(dst), plen, hop, metric) for dst, plen, hop, metric in values["routes"].value]
    assert routes == [("10.99.1.0", 24, 0, 0), ("10.98.0.0", 16, 0, 0)]
    assert values["never-default"].value is True
    assert settings.ip6_config(settings.parse(connection({}))) == {}


def test_ipv6_inside_and_outside():
    t = settings.parse(connection({"remote": "2001:db8::1", "address": None, "address6": "fd00:9::2/128",
                                   "routes": "fd00:99::/64", "default-route": "yes"}))
    assert t.families() == {6}
    cfg = settings.config(t)
    assert cfg["gateway"] == Variant("ay", ipaddress.ip_address("2001:db8::1").packed)
    assert cfg["has-ip4"].value is False and cfg["has-ip6"].value is True
    six = settings.ip6_config(t)
    assert six["address"].value == ipaddress.ip_address("fd00:9::2").packed and six["prefix"].value == 128
    assert six["routes"].value == [[ipaddress.ip_address("fd00:99::").packed, 64, bytes(16), 0]]
    assert six["never-default"].value is False
    assert settings.ip4_config(t) == {}


def test_esp_commands_put_both_sas_and_policies_on_the_if_id():
    t = settings.parse(connection({"address6": "fd00:9::2/128"}))
    local = ipaddress.ip_address("198.51.100.2")
    argv = esp.commands(t, local, 9, 9, 0xFFFFFFFF)
    out, into = argv[0], argv[1]
    assert out[:9] == ["xfrm", "state", "add", "src", "198.51.100.2", "dst", "198.51.100.1", "spi", "0x9001"]
    assert out[-4:] == ["output-mark", "0x9", "mask", "0xffffffff"] and KEY_OUT in out
    assert into[3:9] == ["src", "198.51.100.1", "dst", "198.51.100.2", "spi", "0x9002"] and KEY_IN in into
    assert "output-mark" not in into
    policies = [a for a in argv if a[1] == "policy"]
    assert len(policies) == 6  # out, in, fwd for each inner family
    assert all(a[a.index("if_id") + 1] == "9" for a in argv)
    selectors = {(a[a.index("src") + 1], a[a.index("dir") + 1]) for a in policies}
    assert selectors == {(any_, d) for any_ in ("0.0.0.0/0", "::/0") for d in ("out", "in", "fwd")}
    removal = esp.removal(t, local, 9)
    assert [a[:3] for a in removal] == [["xfrm", "state", "delete"]] * 2 + [["xfrm", "policy", "delete"]] * 6
