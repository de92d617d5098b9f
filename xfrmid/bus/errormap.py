"""The one place where exceptions become D-Bus error replies.

Typed xfrmid errors keep their contract name and sentence. Anything else is a
bug: its traceback goes to the daemon's log and the caller gets
org.xfrmid1.Error.Failed with a generic sentence, never the traceback.
"""

from __future__ import annotations

import logging

from dbus_fast import Message

from ..errors import Failed, XfrmidError

log = logging.getLogger("xfrmid.bus")


def error_for(exc: BaseException, method: str) -> tuple[str, str]:
    """(D-Bus error name, one-sentence message) for an exception raised by ``method``."""
    if isinstance(exc, XfrmidError):
        return exc.dbus_name, exc.message
    log.error("%s failed unexpectedly", method, exc_info=(type(exc), exc, exc.__traceback__))
    return Failed.dbus_name, f"xfrmid failed unexpectedly while handling {method}; the daemon's log has the details."


def error_reply(msg: Message, exc: BaseException) -> Message:
    name, text = error_for(exc, msg.member or "a call")
    return Message.new_error(msg, name, text)
