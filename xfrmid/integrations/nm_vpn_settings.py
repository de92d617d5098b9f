"""The settings of a NetworkManager VPN connection of type xfrmid, and NM's replies.

Pure functions: ``parse`` turns the connection NetworkManager passes to the
plugin's Connect (``a{sa{sv}}``, Variants unwrapped) into a checked
``Tunnel``; ``config``, ``ip4_config`` and ``ip6_config`` build the
dictionaries the plugin hands back in its Config, Ip4Config and Ip6Config
signals (the keys and encodings of NetworkManager's
org.freedesktop.NetworkManager.VPN.Plugin interface: IPv4 addresses as
uint32 in network byte order, IPv6 ones as 16 bytes).

The connection's ``vpn.data`` (all strings):

=============  ==========================================================
interface      the XFRM interface xfrmid gives the connection (``ipsec5``)
remote         the peer's public address (NetworkManager keeps a host route
               to it outside the tunnel)
local          this host's public address (default: the source address
               the kernel picks for ``remote``)
address        inner IPv4 address with prefix (``10.9.0.1/32``), optional
address6       inner IPv6 address with prefix, optional (one of the two)
routes         prefixes reached through the tunnel, space separated
default-route  ``yes``: also route the default through the tunnel
spi-out        SPI of the outbound ESP SA (``0x1001``)
spi-in         SPI of the inbound ESP SA
mtu            MTU NetworkManager sets on the interface, optional
=============  ==========================================================

and ``vpn.secrets``: ``key-out`` and ``key-in``, the AES-GCM keys (RFC 4106:
16 key bytes and 4 salt bytes, ``0x`` and 40 hex digits).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from typing import Any

from dbus_fast import Variant

from ..errors import InvalidArgument

SERVICE = "org.freedesktop.NetworkManager.xfrmid"
SECRET_KEYS = ("key-out", "key-in")
KEY_BYTES = 20  # rfc4106(gcm(aes)) with a 128-bit key: 16 key bytes + 4 salt bytes
_HEX_KEY = re.compile(r"0x[0-9a-fA-F]{%d}" % (2 * KEY_BYTES))
_KNOWN = {"interface", "remote", "local", "address", "address6", "routes", "default-route",
          "spi-out", "spi-in", "mtu"}

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Tunnel:
    """One connection's tunnel: checked, ready to set up."""

    uuid: str
    id: str
    interface: str
    remote: IPAddress
    local: IPAddress | None
    addresses: tuple[IPInterface, ...]
    routes: tuple[IPNetwork, ...]
    default_route: bool
    spi_out: int
    spi_in: int
    key_out: str
    key_in: str
    mtu: int | None

    def families(self) -> set[int]:
        """IP versions carried inside the tunnel."""
        return {a.version for a in self.addresses}


def unwrap(value: Any) -> Any:
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


def _vpn(connection: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    vpn = unwrap(connection).get("vpn", {})
    return dict(vpn.get("data", {})), dict(vpn.get("secrets", {}))


def missing_secrets(connection: dict[str, Any]) -> list[str]:
    """The secret keys the connection lacks (NeedSecrets: ask NetworkManager for them)."""
    _, secrets = _vpn(connection)
    return [key for key in SECRET_KEYS if not secrets.get(key)]


def _address(what: str, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidArgument(f"vpn.data {what}={text!r} is not an IP address.") from None


def _spi(what: str, text: str | None) -> int:
    if not text:
        raise InvalidArgument(f"vpn.data has no {what} (the SPI of an ESP SA, e.g. 0x1001).")
    try:
        value = int(text, 0)
    except ValueError:
        raise InvalidArgument(f"vpn.data {what}={text!r} is not a number.") from None
    if not 0x100 <= value <= 0xFFFFFFFF:  # SPIs 1-255 are reserved (RFC 4303)
        raise InvalidArgument(f"vpn.data {what}={text!r} is not an SPI from 0x100 to 0xffffffff.")
    return value


def _key(what: str, text: str | None) -> str:
    if not text or not _HEX_KEY.fullmatch(text.strip()):
        raise InvalidArgument(
            f"vpn.secrets {what} must be 0x and {2 * KEY_BYTES} hex digits "
            "(an RFC 4106 AES-GCM key: 16 bytes and a 4-byte salt)."
        )
    return text.strip().lower()


def parse(connection: dict[str, Any]) -> Tunnel:
    """The tunnel a Connect asks for; InvalidArgument names the first bad setting."""
    plain = unwrap(connection)
    con = plain.get("connection", {})
    data, secrets = _vpn(connection)
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise InvalidArgument(f"vpn.data has unknown keys: {', '.join(unknown)}.")
    interface = data.get("interface", "").strip()
    if not interface:
        raise InvalidArgument("vpn.data has no interface (the XFRM interface to use, e.g. ipsec5).")
    if "remote" not in data:
        raise InvalidArgument("vpn.data has no remote (the peer's public address).")
    remote = _address("remote", data["remote"])
    local = _address("local", data["local"]) if data.get("local") else None
    if local is not None and local.version != remote.version:
        raise InvalidArgument(f"vpn.data local={local} and remote={remote} are of different IP versions.")
    addresses = []
    for key, version in (("address", 4), ("address6", 6)):
        if data.get(key):
            try:
                addr = ipaddress.ip_interface(data[key].strip())
            except ValueError:
                raise InvalidArgument(f"vpn.data {key}={data[key]!r} is not an address with a prefix.") from None
            if addr.version != version:
                raise InvalidArgument(f"vpn.data {key}={data[key]!r} is not an IPv{version} address.")
            addresses.append(addr)
    if not addresses:
        raise InvalidArgument("vpn.data has neither address nor address6 (the tunnel's inner address).")
    routes = []
    for text in data.get("routes", "").split():
        try:
            routes.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise InvalidArgument(f"vpn.data routes: {text!r} is not a prefix.") from None
    families = {a.version for a in addresses}
    for route in routes:
        if route.version not in families:
            raise InvalidArgument(f"vpn.data routes: {route} needs an IPv{route.version} address in the tunnel.")
    mtu = None
    if data.get("mtu"):
        try:
            mtu = int(data["mtu"])
        except ValueError:
            raise InvalidArgument(f"vpn.data mtu={data['mtu']!r} is not a number.") from None
        if not 576 <= mtu <= 65535:
            raise InvalidArgument(f"vpn.data mtu={mtu} is not from 576 to 65535.")
    spi_out, spi_in = _spi("spi-out", data.get("spi-out")), _spi("spi-in", data.get("spi-in"))
    if spi_out == spi_in:
        raise InvalidArgument("vpn.data spi-out and spi-in must differ.")
    return Tunnel(
        uuid=str(con.get("uuid", "")), id=str(con.get("id", "")), interface=interface,
        remote=remote, local=local, addresses=tuple(addresses), routes=tuple(routes),
        default_route=data.get("default-route", "no").strip().lower() in ("yes", "true", "1"),
        spi_out=spi_out, spi_in=spi_in,
        key_out=_key("key-out", secrets.get("key-out")), key_in=_key("key-in", secrets.get("key-in")),
        mtu=mtu,
    )


# -- what the plugin tells NetworkManager ---------------------------------------


def _u32(addr: ipaddress.IPv4Address) -> int:
    """An IPv4 address as NetworkManager reads it: in_addr_t, network byte order in memory."""
    return int.from_bytes(addr.packed, sys.byteorder)


def config(tunnel: Tunnel) -> dict[str, Variant]:
    """The Config signal: the interface as tundev, the gateway, which families follow."""
    gateway = Variant("u", _u32(tunnel.remote)) if tunnel.remote.version == 4 else Variant("ay", tunnel.remote.packed)
    values = {
        "tundev": Variant("s", tunnel.interface),
        "gateway": gateway,
        "has-ip4": Variant("b", 4 in tunnel.families()),
        "has-ip6": Variant("b", 6 in tunnel.families()),
    }
    if tunnel.mtu:
        values["mtu"] = Variant("u", tunnel.mtu)
    return values


def _family(tunnel: Tunnel, version: int) -> tuple[IPInterface | None, list[IPNetwork]]:
    address = next((a for a in tunnel.addresses if a.version == version), None)
    return address, [r for r in tunnel.routes if r.version == version]


def ip4_config(tunnel: Tunnel) -> dict[str, Variant]:
    """The Ip4Config signal: address, routes through the tunnel, no default unless asked."""
    address, routes = _family(tunnel, 4)
    if address is None:
        return {}
    return {
        "address": Variant("u", _u32(address.ip)),
        "prefix": Variant("u", address.network.prefixlen),
        # [destination, prefix, next hop (none: the interface), metric (NetworkManager's)]
        "routes": Variant("aau", [[_u32(r.network_address), r.prefixlen, 0, 0] for r in routes]),
        "never-default": Variant("b", not tunnel.default_route),
    }


def ip6_config(tunnel: Tunnel) -> dict[str, Variant]:
    """The Ip6Config signal, as ip4_config for IPv6."""
    address, routes = _family(tunnel, 6)
    if address is None:
        return {}
    unspecified = ipaddress.IPv6Address("::").packed
    return {
        "address": Variant("ay", address.ip.packed),
        "prefix": Variant("u", address.network.prefixlen),
        "routes": Variant("a(ayuayu)", [[r.network_address.packed, r.prefixlen, unspecified, 0] for r in routes]),
        "never-default": Variant("b", not tunnel.default_route),
    }
