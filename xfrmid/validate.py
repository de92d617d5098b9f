"""Validators for values callers send: addresses, prefixes, namespace names.

Pure functions; each raises InvalidArgument with a sentence naming the value.
"""

from __future__ import annotations

import ipaddress
import socket

from .errors import InvalidArgument

NETNS_DIR = "/run/netns"


def _text(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{what} {value!r} is empty or not a string.")
    return value.strip()


def parse_interface_cidr(value: object) -> str:
    """An interface address with prefix length, e.g. '192.0.2.1/24' or '2001:db8::1/64'.

    A bare address gets the host prefix (/32 or /128). Returns the normalised text.
    """
    text = _text("Address", value)
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidArgument(f"Address {text!r} is not an IPv4 or IPv6 address with an optional /prefix.") from None
    return iface.with_prefixlen


def parse_network(value: object) -> str:
    """A destination prefix, e.g. '10.0.0.0/8'; host bits must be zero."""
    text = _text("Destination", value)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        hint = " (host bits are set)" if "host bits" in str(exc) else ""
        raise InvalidArgument(f"Destination {text!r} is not an IPv4 or IPv6 prefix{hint}.") from None
    return net.with_prefixlen


def parse_address(what: str, value: object) -> str:
    """A single IPv4 or IPv6 address, without prefix."""
    text = _text(what, value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not an IPv4 or IPv6 address.") from None


def family_of(text: str) -> int:
    """socket.AF_INET or AF_INET6 for an address, interface address or prefix."""
    return socket.AF_INET6 if ":" in text else socket.AF_INET


def check_netns(value: object) -> str | None:
    """A network namespace name as under /run/netns; '' or None means the daemon's own."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"Network namespace {value!r} is not a string.")
    if value in (".", "..") or "/" in value or "\0" in value or len(value.encode()) > 255:
        raise InvalidArgument(f"Network namespace name {value!r} is not a valid name under {NETNS_DIR}.")
    return value
