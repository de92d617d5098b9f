"""Netlink errors -> xfrmid's typed errors, each a sentence naming the value.

Callers describe what they were doing ("creating interface 'ipsec1' in
namespace 'blue'"); this module adds why the kernel said no. One table, so
every object kind reports the same errno the same way.
"""

from __future__ import annotations

import errno
import os

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import (
    Busy,
    Conflict,
    Failed,
    InvalidArgument,
    KernelUnsupported,
    NotFound,
    XfrmidError,
)

# errno -> (error class, reason the user can act on)
_TABLE: dict[int, tuple[type[XfrmidError], str]] = {
    errno.EEXIST: (Conflict, "it already exists"),
    errno.ENODEV: (NotFound, "the device does not exist"),
    errno.ENOENT: (NotFound, "it does not exist"),
    errno.ESRCH: (NotFound, "it does not exist"),
    errno.EADDRNOTAVAIL: (NotFound, "the address is not configured"),
    errno.EOPNOTSUPP: (KernelUnsupported, "the running kernel does not support it"),
    errno.EAFNOSUPPORT: (KernelUnsupported, "the running kernel lacks that address family"),
    errno.EPROTONOSUPPORT: (KernelUnsupported, "the running kernel lacks that protocol"),
    errno.EPERM: (Failed, "the operation needs CAP_NET_ADMIN (run as root)"),
    errno.EACCES: (Failed, "the operation needs CAP_NET_ADMIN (run as root)"),
    errno.EINVAL: (InvalidArgument, "the kernel rejected a value as invalid"),
    errno.ERANGE: (InvalidArgument, "a value is out of the range the kernel accepts"),
    errno.EBUSY: (Busy, "the kernel reports the object busy"),
    errno.ENETUNREACH: (InvalidArgument, "the network is unreachable from there"),
    errno.ENOBUFS: (Failed, "the kernel ran out of buffer space"),
    errno.ENOMEM: (Failed, "the kernel ran out of memory"),
}

# What EOPNOTSUPP means when creating a link: the kernel knows no link kind
# "xfrm" (it says "Unknown device type" after its own request_module failed),
# typically because xfrm_interface was unloaded or blocked after start-up.
NO_XFRM_KIND = (
    "the running kernel has no XFRM interfaces (no link kind 'xfrm'); load the xfrm_interface "
    "module or boot a kernel built with CONFIG_XFRM_INTERFACE"
)


def translate(err: BaseException, doing: str, unsupported: str | None = None) -> XfrmidError:
    """The typed error for a failed netlink request.

    ``doing`` is the start of the sentence, e.g. "Creating interface 'ipsec1'";
    ``unsupported`` replaces the generic reason for EOPNOTSUPP where the caller
    knows what is missing (e.g. NO_XFRM_KIND when creating a link).
    """
    if isinstance(err, XfrmidError):
        return err
    code = code_of(err)
    cls, reason = _TABLE.get(code, (Failed, None)) if code is not None else (Failed, None)
    if code == errno.EOPNOTSUPP and unsupported:
        reason = unsupported
    if reason is None:
        reason = os.strerror(code) if code else str(err) or type(err).__name__
        reason = f"{reason[:1].lower()}{reason[1:]}"
        if code:
            reason += f" (errno {code})"
    return cls(f"{doing} failed: {reason}.")


def code_of(err: BaseException) -> int | None:
    """The positive errno of a NetlinkError/OSError, or None."""
    code = getattr(err, "code", None) if isinstance(err, NetlinkError) else getattr(err, "errno", None)
    return abs(code) if isinstance(code, int) else None
