"""The one error tree of xfrmid.

Every failure a caller can see is one of these classes. Each carries the D-Bus
error name it maps to, so the bus layer translates errors in exactly one place
and clients never parse message text. Messages are one human sentence naming
the offending value.
"""

from __future__ import annotations

DBUS_PREFIX = "org.xfrmid1.Error."


class XfrmidError(Exception):
    """Base of all errors xfrmid reports to callers and users."""

    dbus_name: str = DBUS_PREFIX + "Failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(XfrmidError):
    """A value given by the caller is malformed or out of range."""

    dbus_name = DBUS_PREFIX + "InvalidArgument"


class NotFound(XfrmidError):
    """The named interface, namespace, device or object does not exist."""

    dbus_name = DBUS_PREFIX + "NotFound"


class Conflict(XfrmidError):
    """The request clashes with something that exists (name or if_id in use)."""

    dbus_name = DBUS_PREFIX + "Conflict"


class Busy(XfrmidError):
    """The object is still in use (connections attached)."""

    dbus_name = DBUS_PREFIX + "Busy"


class NotOwned(XfrmidError):
    """xfrmid adopted the object but did not create it, so it will not delete it."""

    dbus_name = DBUS_PREFIX + "NotOwned"


class KernelUnsupported(XfrmidError):
    """The running kernel lacks a feature the request needs."""

    dbus_name = DBUS_PREFIX + "KernelUnsupported"


class Failed(XfrmidError):
    """Anything else: the operation failed for a reason the caller cannot fix by changing arguments."""

    dbus_name = DBUS_PREFIX + "Failed"


class AccessDenied(XfrmidError):
    """The caller may not do this (not root, not in group xfrmid)."""

    dbus_name = "org.freedesktop.DBus.Error.AccessDenied"


ALL_ERRORS: tuple[type[XfrmidError], ...] = (
    InvalidArgument,
    NotFound,
    Conflict,
    Busy,
    NotOwned,
    KernelUnsupported,
    Failed,
    AccessDenied,
)

BY_DBUS_NAME: dict[str, type[XfrmidError]] = {cls.dbus_name: cls for cls in ALL_ERRORS}


def from_dbus_name(name: str, message: str) -> XfrmidError:
    """Rebuild the typed error a client received from the bus (unknown names: Failed)."""
    cls = BY_DBUS_NAME.get(name, Failed) if isinstance(name, str) else Failed
    return cls(message)


def show(value: object) -> str:
    """repr() of an offending value for an error message; never raises.

    Ints too long for repr() (above ~4300 digits) are shown in hex, and an
    object whose repr() fails is shown by its type.
    """
    try:
        return repr(value)
    except Exception:  # a caller's odd object must not turn a refusal into a crash
        if isinstance(value, int):
            return hex(value)
        return f"<{type(value).__name__} object>"


def where(netns: str | None) -> str:
    """How a message names a namespace: " in namespace 'blue'", or nothing for the daemon's own."""
    return f" in namespace {netns!r}" if netns else ""
