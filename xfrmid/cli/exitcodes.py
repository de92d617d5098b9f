"""Exit codes of xfrmctl: one per error class, so scripts can branch on them."""

from __future__ import annotations

from .. import errors
from ..client import NotRunning

OK = 0
FAILED = 1
USAGE = 2  # bad command line, or InvalidArgument from the daemon
NOT_FOUND = 3
CONFLICT = 4  # Conflict or Busy: something else is in the way
ACCESS_DENIED = 5
NOT_OWNED = 6
KERNEL_UNSUPPORTED = 7
NOT_RUNNING = 8

# Most specific first (NotRunning is a Failed).
BY_ERROR: tuple[tuple[type[errors.XfrmidError], int], ...] = (
    (NotRunning, NOT_RUNNING),
    (errors.InvalidArgument, USAGE),
    (errors.NotFound, NOT_FOUND),
    (errors.Conflict, CONFLICT),
    (errors.Busy, CONFLICT),
    (errors.AccessDenied, ACCESS_DENIED),
    (errors.NotOwned, NOT_OWNED),
    (errors.KernelUnsupported, KERNEL_UNSUPPORTED),
    (errors.Failed, FAILED),
)

EPILOG = """\
exit status:
  0  success
  1  the operation failed (org.xfrmid1.Error.Failed or an unexpected error)
  2  usage error or invalid argument (org.xfrmid1.Error.InvalidArgument)
  3  no such interface, namespace or device (org.xfrmid1.Error.NotFound)
  4  conflict or busy: name/if_id in use, or connections still attached
     (org.xfrmid1.Error.Conflict, org.xfrmid1.Error.Busy)
  5  access denied: only root and group 'xfrmid' may change state
     (org.freedesktop.DBus.Error.AccessDenied)
  6  xfrmid adopted the interface but did not create it (org.xfrmid1.Error.NotOwned)
  7  the kernel lacks a needed feature (org.xfrmid1.Error.KernelUnsupported)
  8  xfrmid is not running, or the bus cannot be reached
"""


def exit_code(exc: BaseException) -> int:
    for cls, code in BY_ERROR:
        if isinstance(exc, cls):
            return code
    return FAILED
