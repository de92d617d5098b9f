"""The version xfrmid reports: its own and those of the libraries it builds on.

A bug report needs both: xfrmid works on internals of pyroute2 and dbus-fast
(see the guard tests), so ``xfrmid --version`` and the manager's ``Version``
property say which of them are in use, e.g. "0.1.0 (pyroute2 0.9.7,
dbus-fast 5.2.0)". The versions are read from the installed distributions'
metadata, found along sys.path in import order (a bundled copy included).
"""

from __future__ import annotations

import argparse
import functools

from . import __version__

DEPENDENCIES = ("pyroute2", "dbus-fast")


def dependency_version(name: str) -> str:
    import importlib.metadata  # here: its import is slow, and the daemon asks only once ready

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def full_version() -> str:
    """xfrmid's version and, in parentheses, its libraries'."""
    libraries = ", ".join(f"{name} {dependency_version(name)}" for name in DEPENDENCIES)
    return f"{__version__} ({libraries})"


class VersionAction(argparse.Action):
    """``--version``: print ``PROG full_version()`` and exit; read only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {full_version()}")  # on stdout, as argparse's own version action
        parser.exit()
