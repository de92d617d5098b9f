"""Network namespaces by name: rtnetlink sockets opened inside them, and their identity.

A namespace is a name under /run/netns; None is the daemon's own. A socket
for a named namespace is opened by a short-lived thread that enters the
namespace with setns(2) (a network namespace is per thread) and hands the
socket back: no fork, and a missing namespace is never created (pyroute2's
own ``netns=`` path forks and, by default, creates it with O_CREAT). A
socket keeps its namespace alive, so holders compare ``identity`` before
trusting that the name still means the namespace they opened.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable

from ..errors import Failed, NotFound, where
from ..validate import NETNS_DIR

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(netns: str) -> str:
    return os.path.join(NETNS_DIR, netns)


def identity(netns: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the namespace behind /run/netns/NAME, None if it is gone."""
    try:
        st = os.stat(netns_path(netns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _in_thread(target: Callable[[], int]) -> int:
    """Run target() in a fresh OS thread (whose netns it may change); return its result."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["fd"] = target()
        except BaseException as exc:  # handed to the caller below
            box["exc"] = exc

    thread = threading.Thread(target=run, name="xfrmid-netns", daemon=True)
    thread.start()
    thread.join()
    if "exc" in box:
        raise box["exc"]  # type: ignore[misc]
    return box["fd"]  # type: ignore[return-value]


def netlink_fd() -> int:
    """A NETLINK_ROUTE socket fd in the calling thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return sock.detach()


def open_netns_fd(netns: str) -> int:
    """A NETLINK_ROUTE socket fd living in /run/netns/NAME; NotFound if it does not exist."""
    path = netns_path(netns)
    try:
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"Network namespace {netns!r} does not exist (no {path}).") from None
    except OSError as exc:
        raise Failed(f"Opening network namespace {netns!r} failed: {exc.strerror}.") from None

    def enter() -> int:
        if _libc.setns(nsfd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return netlink_fd()

    try:
        return _in_thread(enter)
    except OSError as exc:
        raise Failed(
            f"Entering network namespace {netns!r} failed: {exc.strerror} (needs CAP_SYS_ADMIN)."
        ) from None
    finally:
        os.close(nsfd)


def open_fd(netns: str | None) -> int:
    """A NETLINK_ROUTE socket fd in the namespace (None: the daemon's own)."""
    return netlink_fd() if netns is None else open_netns_fd(netns)


def open_private_fd() -> int:
    """A NETLINK_ROUTE socket fd in a new, empty namespace that dies with the socket.

    Used by the feature probe to try things for real without side effects.
    """

    def enter() -> int:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return netlink_fd()

    return _in_thread(enter)
