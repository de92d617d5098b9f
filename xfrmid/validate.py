"""Validators for values callers send: addresses, prefixes, namespace names.

Pure functions; each raises InvalidArgument with a sentence naming the value.
Addresses are parsed by Python's ipaddress module and returned in its
normalised text form, which is what the kernel layer hands to netlink (an
IPv4 prefix already in that form is only checked, by the C parser).
"""

from __future__ import annotations

import ipaddress
import socket

from .errors import InvalidArgument, show

NETNS_DIR = "/run/netns"
NETNS_NAME_MAX = 255  # NAME_MAX: iproute2's `ip netns` limit, in bytes

_ANY_PREFIX = "an IPv4 or IPv6 address with an optional /prefix"


def _text(what: str, value: object) -> str:
    """The stripped text of an address argument; refuses non-strings, blanks and zones."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} {show(value)} is not a string.")
    text = value.strip()
    if not text:
        raise InvalidArgument(f"{what} {value!r} is empty.")
    if "%" in text:
        # ipaddress accepts IPv6 zones ("fe80::1%eth0"), netlink does not.
        raise InvalidArgument(f"{what} {value!r} carries a zone index ('%'), which netlink cannot take.")
    return text


def _refuse(what: str, value: str, text: str, expected: str) -> InvalidArgument:
    """The error for text ipaddress could not parse: say so about the prefix when it is the culprit."""
    address, slash, length = text.partition("/")
    if slash:
        try:
            bits = ipaddress.ip_address(address).max_prefixlen
        except ValueError:
            bits = None
        if bits is not None:
            return InvalidArgument(
                f"{what} {value!r} has a bad prefix length {length!r}; "
                f"IPv{4 if bits == 32 else 6} takes /0 to /{bits}."
            )
    return InvalidArgument(f"{what} {value!r} is not {expected}.")


def parse_interface_cidr(value: object) -> str:
    """An interface address with prefix length, e.g. '192.0.2.1/24' or '2001:db8::1/64'.

    A bare address gets the host prefix (/32 or /128). Returns the normalised text.
    """
    text = _text("Address", value)
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise _refuse("Address", value, text, _ANY_PREFIX) from None
    return iface.with_prefixlen


def _canonical_ipv4_prefix(text: str) -> bool:
    """Whether ``text`` is an IPv4 prefix exactly as ipaddress writes one ('a.b.c.d/n', no
    host bits): checked by the C parser, as ipaddress's took a tenth of an AddRoute."""
    address, slash, length = text.partition("/")
    if not slash or not (length.isascii() and length.isdigit()) or (len(length) > 1 and length[0] == "0"):
        return False
    bits = int(length)
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except OSError:
        return False
    # the text ipaddress would give back (inet_pton alone takes what ipaddress refuses)
    if bits > 32 or socket.inet_ntop(socket.AF_INET, packed) != address:
        return False
    return bits == 32 or not int.from_bytes(packed, "big") & ((1 << (32 - bits)) - 1)


def parse_network(value: object) -> str:
    """A destination prefix, e.g. '10.0.0.0/8'; host bits must be zero."""
    text = _text("Destination", value)
    if _canonical_ipv4_prefix(text):
        return text
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _refuse("Destination", value, text, "an IPv4 or IPv6 prefix") from None
        raise InvalidArgument(
            f"Destination {value!r} has host bits set; the prefix is {loose.with_prefixlen}."
        ) from None
    return net.with_prefixlen


def parse_address(what: str, value: object) -> str:
    """A single IPv4 or IPv6 address, without prefix; ``what`` names it in errors."""
    text = _text(what, value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidArgument(f"{what} {value!r} is not an IPv4 or IPv6 address.") from None


def packed_prefix(prefix: str) -> tuple[int, bytes, int]:
    """(family, packed address, prefix length) of a prefix parse_network returned."""
    address, _, length = prefix.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return family, socket.inet_pton(family, address), int(length)


def family_of(text: str) -> int:
    """socket.AF_INET or AF_INET6 for an address, interface address or prefix."""
    parsed = _text("Address", text)
    try:
        version = ipaddress.ip_interface(parsed).version
    except ValueError:
        raise _refuse("Address", text, parsed, _ANY_PREFIX) from None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def check_netns(value: object) -> str | None:
    """A network namespace name as under /run/netns; '' or None means the daemon's own.

    The rules are iproute2's (`ip netns`): not '.' or '..', no '/', at most
    255 bytes; NUL is refused too since the name becomes a path.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"Network namespace {show(value)} is not a string.")
    if value in (".", ".."):
        raise InvalidArgument(f"Network namespace {value!r} names a directory, not a namespace under {NETNS_DIR}.")
    if "/" in value or "\0" in value:
        raise InvalidArgument(
            f"Network namespace {value!r} contains '/' or NUL; give a bare name under {NETNS_DIR}."
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"Network namespace {value!r} is not valid Unicode text.") from None
    if size > NETNS_NAME_MAX:
        raise InvalidArgument(
            f"Network namespace {value!r} is {size} bytes long, above the limit of {NETNS_NAME_MAX}."
        )
    return value
