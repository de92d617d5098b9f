"""Interface names, if_ids and output marks: the policy from the design notes.

Pure functions only. Defaults follow libreswan: interfaces are called
``ipsec<N>`` and carry ``if_id = N``; ``ipsec0`` maps to if_id 16384 because
the kernel rejects if_id 0. The output mark (XFRMA_SET_MARK) equals the if_id,
so "xfrm interface id" and "xfrm output mark" stay one number; the mask splits
the packet mark between IPsec and the rest of the routing policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Conflict, InvalidArgument

IFNAMSIZ = 16  # kernel limit including the trailing NUL
IF_ID_MIN = 1
IF_ID_MAX = 0xFFFFFFFF
IPSEC0_IF_ID = 16384
DEFAULT_PREFIX = "ipsec"
DEFAULT_MARK_MASK = 0xFFFFFFFF

# ipsec<N> with N written without leading zeros (ipsec01 would alias ipsec1).
_IPSEC_NAME = re.compile(r"ipsec(0|[1-9][0-9]*)")


@dataclass(frozen=True)
class NamePolicy:
    """What the configuration allows.

    ``any_name``: accept names other than ``ipsec<N>``, but only with an
    explicit if_id (there is nothing to derive it from).
    ``mark_mask``: the part of the packet mark that belongs to IPsec.
    """

    any_name: bool = False
    mark_mask: int = DEFAULT_MARK_MASK


@dataclass(frozen=True)
class Identity:
    """A validated interface name with its if_id and output mark/mask."""

    name: str
    if_id: int
    mark: int
    mask: int


def check_u32(what: str, value: object) -> int:
    """Return value as an int in 0..0xffffffff or raise InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise InvalidArgument(f"{what} {value!r} is not a number from 0 to 4294967295.")
    return value


def check_ifname(name: object) -> str:
    """Validate a Linux interface name the way the kernel's dev_valid_name() does."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"Interface name {name!r} is empty or not a string.")
    if len(name.encode()) >= IFNAMSIZ:
        raise InvalidArgument(
            f"Interface name {name!r} is longer than {IFNAMSIZ - 1} bytes, the kernel's limit."
        )
    if name in (".", ".."):
        raise InvalidArgument(f"Interface name {name!r} is not allowed by the kernel.")
    bad = sorted({c for c in name if c in "/:" or c.isspace() or not c.isprintable()})
    if bad:
        raise InvalidArgument(
            f"Interface name {name!r} contains {''.join(bad)!r}; "
            "names may not contain '/', ':', white space or control characters."
        )
    return name


def check_if_id(if_id: object) -> int:
    """Validate an explicit if_id (1..0xffffffff)."""
    value = check_u32("if_id", if_id)
    if value < IF_ID_MIN:
        raise InvalidArgument("if_id 0 is rejected by the kernel; use 1 to 4294967295.")
    return value


def derived_if_id(name: str) -> int | None:
    """The if_id implied by an ``ipsec<N>`` name, or None for other names."""
    match = _IPSEC_NAME.fullmatch(name)
    if match is None:
        return None
    number = int(match.group(1))
    if number == 0:
        return IPSEC0_IF_ID
    return number if number <= IF_ID_MAX else None


def default_name(if_id: int) -> str:
    """The ``ipsec<N>`` name for an if_id (16384 is ``ipsec0``'s)."""
    check_if_id(if_id)
    return f"{DEFAULT_PREFIX}0" if if_id == IPSEC0_IF_ID else f"{DEFAULT_PREFIX}{if_id}"


def check_mask(mask: object) -> int:
    value = check_u32("Mark mask", mask)
    if value == 0:
        raise InvalidArgument("Mark mask 0x0 leaves no bits for the output mark.")
    return value


def output_mark(if_id: int, mask: int = DEFAULT_MARK_MASK) -> tuple[int, int]:
    """XFRMA_SET_MARK value and mask for an if_id; the if_id must fit inside the mask."""
    check_mask(mask)
    if if_id & ~mask & 0xFFFFFFFF:
        raise InvalidArgument(
            f"if_id {if_id} (0x{if_id:x}) does not fit the mark mask 0x{mask:08x}; "
            "choose a smaller if_id or a wider mask."
        )
    return if_id, mask


def resolve(name: object, if_id: object = 0, policy: NamePolicy = NamePolicy()) -> Identity:
    """Validate a (name, if_id) request under the policy and complete it.

    ``if_id`` 0 means "derive it from the name".
    """
    name = check_ifname(name)
    requested = check_u32("if_id", if_id)
    implied = derived_if_id(name)
    if implied is None:
        if re.fullmatch(DEFAULT_PREFIX + r"[0-9]+", name):
            raise InvalidArgument(
                f"Interface name {name!r} has a leading zero or a number above {IF_ID_MAX}; "
                "use ipsec<N> with N from 0 to 4294967295 written without leading zeros."
            )
        if not policy.any_name:
            raise InvalidArgument(
                f"Interface name {name!r} is not of the form ipsec<N>; "
                "set any_name = true in xfrmid.conf to allow other names."
            )
        if requested == 0:
            raise InvalidArgument(
                f"Interface name {name!r} is not of the form ipsec<N>, so it needs an explicit if_id."
            )
        final = requested
    else:
        if requested not in (0, implied):
            raise InvalidArgument(
                f"Interface name {name!r} implies if_id {implied}, but if_id {requested} was given."
            )
        final = implied
    mark, mask = output_mark(final, policy.mark_mask)
    return Identity(name=name, if_id=final, mark=mark, mask=mask)


def check_unique(identity: Identity, existing: dict[str, int]) -> None:
    """Raise Conflict if the name exists with another if_id, or the if_id under another name.

    ``existing`` maps interface names to if_ids within one network namespace.
    """
    current = existing.get(identity.name)
    if current is not None and current != identity.if_id:
        raise Conflict(
            f"Interface {identity.name!r} already exists with if_id {current}, not {identity.if_id}."
        )
    for other, other_id in existing.items():
        if other != identity.name and other_id == identity.if_id:
            raise Conflict(f"if_id {identity.if_id} is already used by interface {other!r}.")
