"""Interface names, if_ids and output marks: the policy from the design notes.

Pure functions only. Defaults follow libreswan: interfaces are called
``ipsec<N>`` and carry ``if_id = N``; ``ipsec0`` maps to if_id 16384 because
the kernel rejects if_id 0, and (as in libreswan, which names if_id 16384
``ipsec0``) there is no ``ipsec16384``, so names and if_ids map one to one.
The output mark (XFRMA_SET_MARK) equals the if_id, so "xfrm interface id" and
"xfrm output mark" stay one number; the mask splits the packet mark between
IPsec and the rest of the routing policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Conflict, InvalidArgument, show

IFNAMSIZ = 16  # kernel limit including the trailing NUL
IF_ID_MIN = 1
IF_ID_MAX = 0xFFFFFFFF
IPSEC0_IF_ID = 16384
DEFAULT_PREFIX = "ipsec"
DEFAULT_MARK_MASK = 0xFFFFFFFF

# Bytes the kernel's isspace() (lib/ctype.c, Latin-1 table) counts as white
# space: dev_valid_name() refuses them, and it looks at UTF-8 bytes, so any
# character whose encoding holds 0xa0 ('à', 'Š', U+00A0 ...) is refused too.
KERNEL_SPACE_BYTES = frozenset(b"\t\n\v\f\r \xa0")
# net.ipv4.conf.{all,default} and their IPv6 twins: the kernel refuses these
# device names (sysctl_dev_name_is_allowed()).
KERNEL_RESERVED_NAMES = frozenset({"all", "default"})

_IPSEC_SHAPE = re.compile(DEFAULT_PREFIX + r"([0-9]+)")


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
        raise InvalidArgument(f"{what} {show(value)} is not an integer from 0 to 4294967295.")
    return int(value)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # characters _bad_char_reason never refuses


def _bad_char_reason(char: str) -> str | None:
    """Why the kernel (or xfrmid) refuses this character in a name, or None."""
    if char in "/:":
        return "the kernel refuses '/' and ':' in interface names"
    if char == "%":
        return "the kernel treats '%' as a name template (eth%d)"
    raw = char.encode()
    if len(raw) == 1 and raw[0] in KERNEL_SPACE_BYTES:
        return "the kernel refuses white space in interface names"
    if any(byte in KERNEL_SPACE_BYTES for byte in raw):  # a multibyte character holding 0xa0
        return "its UTF-8 encoding holds byte 0xa0, which the kernel counts as white space"
    if not char.isprintable():
        # The kernel would take control characters, but they break one-line
        # output such as `ip -o link` and log lines.
        return "xfrmid refuses non-printable characters in interface names"
    return None


def check_ifname(name: object) -> str:
    """Validate a Linux interface name as the kernel's dev_valid_name() does.

    Beyond the kernel's rules: '%' (a template to the kernel: "a%d" would
    silently become "a0"), non-printable characters and text that is not
    valid Unicode are refused.
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"Interface name {show(name)} is not a string.")
    if not name:
        raise InvalidArgument("Interface name '' is empty.")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"Interface name {name!r} is not valid Unicode text.") from None
    if size >= IFNAMSIZ:
        raise InvalidArgument(
            f"Interface name {name!r} is {size} bytes long in UTF-8, "
            f"but the kernel allows at most {IFNAMSIZ - 1}."
        )
    if name in (".", ".."):
        raise InvalidArgument(f"Interface name {name!r} is refused by the kernel (it names a directory).")
    if name in KERNEL_RESERVED_NAMES:
        raise InvalidArgument(
            f"Interface name {name!r} is refused by the kernel (net.ipv4.conf.{name} is reserved)."
        )
    if _PLAIN_NAME.fullmatch(name) is None:  # only then can a character be refused (per call: keep it cheap)
        for char in name:
            reason = _bad_char_reason(char)
            if reason is not None:
                raise InvalidArgument(f"Interface name {name!r} contains {char!r}; {reason}.")
    return name


def check_if_id(if_id: object) -> int:
    """Validate an explicit if_id (1..0xffffffff)."""
    value = check_u32("if_id", if_id)
    if value < IF_ID_MIN:
        raise InvalidArgument("if_id 0 is rejected by the kernel; use 1 to 4294967295.")
    return value


def derived_if_id(name: str) -> int | None:
    """The if_id implied by an ``ipsec<N>`` name, or None for other names.

    Only canonical names count: no leading zeros (ipsec01 would alias
    ipsec1), N at most 0xffffffff, and not ipsec16384 (16384 is ipsec0's).
    """
    match = _IPSEC_SHAPE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        return None
    digits = match.group(1)
    if len(digits) > 1 and digits[0] == "0":
        return None
    number = int(digits)
    if number == 0:
        return IPSEC0_IF_ID
    if number == IPSEC0_IF_ID or number > IF_ID_MAX:
        return None
    return number


def default_name(if_id: int) -> str:
    """The ``ipsec<N>`` name for an if_id (16384 is ``ipsec0``'s)."""
    check_if_id(if_id)
    return f"{DEFAULT_PREFIX}0" if if_id == IPSEC0_IF_ID else f"{DEFAULT_PREFIX}{if_id}"


def check_mask(mask: object) -> int:
    """Validate the output mark mask (1..0xffffffff)."""
    value = check_u32("Mark mask", mask)
    if value == 0:
        raise InvalidArgument("Mark mask 0 (0x00000000) leaves no bits for the output mark.")
    return value


def output_mark(if_id: int, mask: int = DEFAULT_MARK_MASK) -> tuple[int, int]:
    """XFRMA_SET_MARK value and mask for an if_id; the if_id must fit inside the mask.

    The kernel sets mark = (mark & ~mask) | (if_id & mask): bits of the if_id
    outside the mask would be lost and the mark would no longer equal it.
    """
    if_id = check_if_id(if_id)
    mask = check_mask(mask)
    if if_id & ~mask & 0xFFFFFFFF:
        raise InvalidArgument(
            f"if_id {if_id} (0x{if_id:x}) does not fit the mark mask 0x{mask:08x}; "
            "choose an if_id inside the mask or a wider mask."
        )
    return if_id, mask


def _refuse_ipsec_shape(name: str) -> None:
    """Explain why an ``ipsec<digits>`` name that is not canonical is refused."""
    match = _IPSEC_SHAPE.fullmatch(name)
    if match is None:
        return
    digits = match.group(1)
    if len(digits) > 1 and digits[0] == "0":
        raise InvalidArgument(
            f"Interface name {name!r} has a leading zero; write it {DEFAULT_PREFIX}{int(digits)}."
        )
    number = int(digits)
    if number == IPSEC0_IF_ID:
        raise InvalidArgument(
            f"Interface name {name!r} is not used because if_id {IPSEC0_IF_ID} belongs to "
            f"{DEFAULT_PREFIX}0 (as in libreswan); use {DEFAULT_PREFIX}0."
        )
    raise InvalidArgument(
        f"Interface name {name!r} has a number above {IF_ID_MAX}, the largest if_id."
    )


def resolve(name: object, if_id: object = 0, policy: NamePolicy = NamePolicy()) -> Identity:
    """Validate a (name, if_id) request under the policy and complete it.

    ``if_id`` 0 means "derive it from the name".
    """
    name = check_ifname(name)
    requested = check_u32("if_id", if_id)
    implied = derived_if_id(name)
    if implied is None:
        _refuse_ipsec_shape(name)
        if not policy.any_name:
            raise InvalidArgument(
                f"Interface name {name!r} is not of the form {DEFAULT_PREFIX}<N>; "
                "set any_name = true in xfrmid.conf to allow other names."
            )
        if requested == 0:
            raise InvalidArgument(
                f"Interface name {name!r} is not of the form {DEFAULT_PREFIX}<N>, "
                "so it needs an explicit if_id."
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
