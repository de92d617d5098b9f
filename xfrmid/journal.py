"""Logging: journald with structured fields under systemd, plain stderr otherwise.

Call sites log through ``logging.getLogger("xfrmid...")`` and attach the
object they talk about with ``extra=fields(...)``::

    log.info("Created %s", name, extra=fields(interface=name, if_id=if_id, owner=owner))

In the journal these become the fields INTERFACE=, IF_ID=, OWNER= and NETNS=
(``journalctl INTERFACE=ipsec1`` works, as it does for systemd-networkd);
on stderr they are appended to the line as ``key=value``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from .errors import InvalidArgument

LOGGER_NAME = "xfrmid"
SYSLOG_IDENTIFIER = "xfrmid"
JOURNAL_SOCKET = "/run/systemd/journal/socket"

# The names a user may give (--log-level, log_level in xfrmid.conf); "notice"
# is syslog's level between info and warning, accepted because admins type it.
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO + 5,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
logging.addLevelName(LEVELS["notice"], "NOTICE")

# Structured fields, in the order stderr shows them: extra= key -> short name.
FIELDS: dict[str, str] = {
    "INTERFACE": "interface",
    "IF_ID": "if_id",
    "OWNER": "owner",
    "NETNS": "netns",
}

_installed: logging.Handler | None = None  # the handler setup() put on the xfrmid logger


def parse_level(value: object) -> int:
    """The logging level for a level name (case-insensitive) or raise InvalidArgument."""
    if isinstance(value, str) and value.strip().lower() in LEVELS:
        return LEVELS[value.strip().lower()]
    raise InvalidArgument(
        f"Log level {value!r} is not one of {', '.join(LEVELS)}."
    )


def fields(
    interface: str | None = None,
    if_id: int | None = None,
    owner: str | None = None,
    netns: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` mapping for a log call about an interface; None values are left out."""
    values = {"INTERFACE": interface, "IF_ID": if_id, "OWNER": owner, "NETNS": netns}
    return {key: value for key, value in values.items() if value is not None}


class StderrFormatter(logging.Formatter):
    """``LEVEL message [interface=ipsec1 if_id=1]``: one line, greppable."""

    def __init__(self, timestamps: bool = False) -> None:
        fmt = "%(asctime)s %(levelname)s %(message)s" if timestamps else "%(levelname)s %(message)s"
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [
            f"{short}={getattr(record, key)}"
            for key, short in FIELDS.items()
            if getattr(record, key, None) is not None
        ]
        if pairs:
            first, newline, rest = text.partition("\n")
            text = f"{first} [{' '.join(pairs)}]{newline}{rest}"
        return text


def journal_wanted(environ: dict[str, str] | None = None, stderr: TextIO | None = None) -> bool:
    """Whether "auto" logging should go to journald.

    Yes when systemd connected stderr to the journal (JOURNAL_STREAM), or when
    journald listens and stderr is not a terminal; an administrator who starts
    xfrmid by hand in a terminal wants to read the log there.
    """
    environ = os.environ if environ is None else environ
    stderr = sys.stderr if stderr is None else stderr
    if environ.get("JOURNAL_STREAM"):
        return True
    try:
        interactive = stderr.isatty()
    except (AttributeError, ValueError):
        interactive = False
    return not interactive and os.path.exists(JOURNAL_SOCKET)


def _journal_handler(sender: Callable[..., Any] | None) -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler, send
    except ImportError:  # systemd-python missing: stderr still works
        return None
    return JournalHandler(sender_function=sender or send, SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)


def setup(
    level: str = "info",
    target: str = "auto",
    *,
    stream: TextIO | None = None,
    journal_sender: Callable[..., Any] | None = None,
) -> logging.Logger:
    """Configure the ``xfrmid`` logger; safe to call again (e.g. on reload).

    ``target``: "auto", "journal" or "stderr". ``journal_sender`` replaces
    systemd.journal.send (tests capture the fields with it).
    Returns the ``xfrmid`` logger. Raises InvalidArgument for a bad level or target.
    """
    numeric = parse_level(level)
    if target not in ("auto", "journal", "stderr"):
        raise InvalidArgument(f"Log target {target!r} is not one of auto, journal, stderr.")
    use_journal = target == "journal" or (target == "auto" and journal_wanted(stderr=stream))
    handler = _journal_handler(journal_sender) if use_journal else None
    if handler is None:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        # journald stamps lines itself; a terminal wants the time.
        handler.setFormatter(StderrFormatter(timestamps=not os.environ.get("JOURNAL_STREAM")))
    global _installed
    logger = logging.getLogger(LOGGER_NAME)
    if _installed is not None and _installed in logger.handlers:
        logger.removeHandler(_installed)
        _installed.close()
    logger.addHandler(handler)
    _installed = handler
    logger.setLevel(numeric)
    logger.propagate = False
    return logger


def set_level(level: str) -> None:
    """Change the level of the running daemon's logger (reload, --log-level)."""
    logging.getLogger(LOGGER_NAME).setLevel(parse_level(level))


def uses_journal() -> bool:
    """Whether setup() chose journald (for the start-up log line)."""
    logger = logging.getLogger(LOGGER_NAME)
    return _installed in logger.handlers and type(_installed).__name__ == "JournalHandler"
