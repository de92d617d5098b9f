"""Attributes of raw rtnetlink messages, decoded only where a caller asks.

Dumps of thousands of objects are parsed from the kernel's bytes (see
``NetnsConnection.raw_dump``) with the layout of netlink.py: ``pick`` returns just the
attributes named in a table of decoders, so each parser states what it reads
and nothing else is decoded.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from .netlink import NLA, NLA_TYPE_MASK, U32, cstr

Decoder = Callable[[bytes, int, int], object]


def u8(data: bytes, start: int, stop: int) -> int:
    return data[start]


def u32(data: bytes, start: int, stop: int) -> int:
    return U32.unpack_from(data, start)[0]


def text(data: bytes, start: int, stop: int) -> str:
    return cstr(data, start, stop)


def flag(data: bytes, start: int, stop: int) -> bool:
    return True


def span(data: bytes, start: int, stop: int) -> tuple[int, int]:
    """Where a nested attribute's payload is, to pick from it in turn."""
    return start, stop


def address(family: int) -> Decoder:
    def decode(data: bytes, start: int, stop: int) -> str:
        return socket.inet_ntop(family, data[start:stop])

    return decode


ADDRESS = {socket.AF_INET: address(socket.AF_INET), socket.AF_INET6: address(socket.AF_INET6)}


def pick(data: bytes, pos: int, end: int, decoders: dict[int, Decoder]) -> dict[int, object]:
    """{attribute type: decoded value} of the attributes in data[pos:end] that ``decoders`` names."""
    # netlink.walk's loop, inlined: this runs for every attribute of every message of
    # a 10,000-link dump, and the generator's yields cost a third of the time.
    # It stops once every named attribute is found: the kernel puts the large ones
    # (IFLA_AF_SPEC, IFLA_PROP_LIST...) after what xfrmid reads. An attribute
    # repeated in a message keeps its first value then (the kernel repeats none
    # of those xfrmid reads).
    found: dict[int, object] = {}
    unpack = NLA.unpack_from
    get = decoders.get
    wanted = len(decoders)
    while pos + 4 <= end:
        alen, atype = unpack(data, pos)
        if alen < 4:
            break
        decode = get(atype & NLA_TYPE_MASK)
        if decode is not None and (atype & NLA_TYPE_MASK) not in found:
            found[atype & NLA_TYPE_MASK] = decode(data, pos + 4, pos + alen)
            if len(found) == wanted:
                break
        pos += (alen + 3) & ~3
    return found
