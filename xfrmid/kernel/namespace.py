"""One rtnetlink socket per network namespace, plus the request helpers.

A namespace is a name under /run/netns; None is the daemon's own. The socket
for a named namespace is opened by a short-lived thread that enters the
namespace with setns(2) (a network namespace is per thread) and hands the
socket back: no fork, and a missing namespace is never created (pyroute2's
own ``netns=`` path forks and, by default, creates it with O_CREAT).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest

from ..errors import Failed, NotFound
from ..validate import NETNS_DIR, check_netns

if TYPE_CHECKING:
    from .batch import BatchSocket

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0

F_REQ = NLM_F_REQUEST | NLM_F_ACK
F_CREATE = F_REQ | NLM_F_CREATE | NLM_F_EXCL
F_DUMP = NLM_F_REQUEST | NLM_F_DUMP
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP_INTR = 0x10  # the dumped table changed during the dump: not a consistent view
_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ERRNO = struct.Struct("=i")

_libc = ctypes.CDLL(None, use_errno=True)


def where(netns: str | None) -> str:
    """' in namespace 'blue'' or '' for the daemon's own, for messages."""
    return f" in namespace {netns!r}" if netns else ""


def netns_path(netns: str) -> str:
    return os.path.join(NETNS_DIR, netns)


def _in_thread(target) -> int:
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


def _netlink_fd() -> int:
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
        return _netlink_fd()

    try:
        return _in_thread(enter)
    except OSError as exc:
        raise Failed(
            f"Entering network namespace {netns!r} failed: {exc.strerror} (needs CAP_SYS_ADMIN)."
        ) from None
    finally:
        os.close(nsfd)


def open_private_fd() -> int:
    """A NETLINK_ROUTE socket fd in a new, empty namespace that dies with the socket.

    Used by the feature probe to try things for real without side effects.
    """

    def enter() -> int:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return _netlink_fd()

    return _in_thread(enter)


def rtnl_on_fd(fd: int) -> AsyncIPRoute:
    # strict_check: the kernel filters dumps (link kind, route protocol/table)
    # so we do not parse what we would throw away.
    return AsyncIPRoute(fileno=fd, strict_check=True)


def _identity(netns: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the namespace behind /run/netns/NAME, None if it is gone."""
    try:
        st = os.stat(netns_path(netns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Namespaces:
    """Cache of one AsyncIPRoute per namespace (and, once asked for, one BatchSocket).

    A cached socket pins the namespace it was opened in, so before reuse we
    check that /run/netns/NAME still names that namespace: one deleted and
    re-created under the same name gets a fresh socket.
    """

    def __init__(self) -> None:
        self._rtnl: dict[str | None, tuple[AsyncIPRoute, tuple[int, int] | None]] = {}
        self._batch: dict[str | None, BatchSocket] = {}  # dropped with the namespace's AsyncIPRoute
        self._lock = asyncio.Lock()

    def _cached(self, netns: str | None) -> AsyncIPRoute | None:
        entry = self._rtnl.get(netns)
        if entry is None:
            return None
        ipr, identity = entry
        if netns is None or _identity(netns) == identity:
            return ipr
        self._forget(netns)  # deleted, or replaced by another namespace of that name
        return None

    async def rtnl(self, netns: str | None) -> AsyncIPRoute:
        netns = check_netns(netns)
        ipr = self._cached(netns)
        if ipr is not None:
            return ipr
        async with self._lock:
            ipr = self._cached(netns)
            if ipr is None:
                identity = None if netns is None else _identity(netns)
                fd = _netlink_fd() if netns is None else open_netns_fd(netns)
                ipr = rtnl_on_fd(fd)
                self._rtnl[netns] = (ipr, identity)
            return ipr

    async def batch_socket(self, netns: str | None) -> BatchSocket:
        """The namespace's socket for batches of requests (batch.py), opened on first use."""
        from .batch import BatchSocket  # batch.py uses this module's netlink constants

        netns = check_netns(netns)
        await self.rtnl(netns)  # checks the namespace: one replaced meanwhile loses both sockets
        bsock = self._batch.get(netns)
        if bsock is None:
            bsock = self._batch[netns] = BatchSocket(_netlink_fd() if netns is None else open_netns_fd(netns))
        return bsock

    def _forget(self, netns: str | None) -> None:
        entry = self._rtnl.pop(netns, None)
        if entry is not None:
            entry[0].close()
        bsock = self._batch.pop(netns, None)
        if bsock is not None:
            bsock.close()

    def forget(self, netns: str | None) -> None:
        """Drop the socket of a namespace (e.g. after it was deleted)."""
        self._forget(netns)

    async def close(self) -> None:
        for netns in set(self._rtnl) | set(self._batch):
            self._forget(netns)


async def request(ipr: AsyncIPRoute, msg, msg_type: int, flags: int = F_REQ) -> list:
    """Send one rtnetlink request; return the replies (raises NetlinkError)."""
    req = NetlinkRequest(ipr, msg, msg_type=msg_type, msg_flags=flags)
    await req.send()
    return [reply async for reply in req.response()]


def _dump_lock(ipr: AsyncIPRoute) -> asyncio.Lock:
    lock = getattr(ipr, "_xfrmid_dump_lock", None)
    if lock is None:
        lock = asyncio.Lock()
        ipr._xfrmid_dump_lock = lock
    return lock


async def dump(ipr: AsyncIPRoute, msg, msg_type: int) -> list:
    """A dump request; the kernel filters by whatever the message carries.

    A netlink socket runs one dump at a time (a second one gets EBUSY), and
    concurrent D-Bus calls share the namespace's socket: dumps queue here.
    """
    async with _dump_lock(ipr):
        return await request(ipr, msg, msg_type, F_DUMP)


RawMessage = tuple[int, bytes, int, int]  # type, datagram, payload start, message end


async def raw_dump(ipr: AsyncIPRoute, msg, msg_type: int, *, attempts: int = 3) -> list[RawMessage]:
    """A dump whose replies stay undecoded: (type, datagram, payload start, end) per message.

    pyroute2 decodes every attribute of every message, which dominates a dump of
    thousands of links; callers walk only the attributes they need (with the
    helpers of events.py). The request goes through pyroute2's socket and
    sequence numbers, the replies are taken raw from its per-request queue.
    A dump the kernel marks inconsistent (NLM_F_DUMP_INTR) is taken again.
    """
    async with _dump_lock(ipr):
        for attempt in range(attempts):
            out, interrupted = await _raw_dump_once(ipr, msg, msg_type)
            if not interrupted or attempt == attempts - 1:
                return out
        return out  # pragma: no cover - the loop always returns


async def _raw_dump_once(ipr: AsyncIPRoute, msg, msg_type: int) -> tuple[list[RawMessage], bool]:
    req = NetlinkRequest(ipr, msg, msg_type=msg_type, msg_flags=F_DUMP)
    await req.send()
    out: list[RawMessage] = []
    interrupted = False
    try:
        while True:
            data = await ipr.msg_queue.get(req.msg_seq)
            if not data:
                raise NetlinkError(errno.ECONNRESET, "netlink socket closed during a dump")
            for mtype, flags, start, end in split(data):
                if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                    check_status(data, start, end)
                    return out, interrupted
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                out.append((mtype, data, start, end))
    finally:
        req.cleanup()


def split(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, payload start, message end) of each netlink message of one datagram."""
    unpack = _HDR.unpack_from
    pos, size = 0, len(data)
    while pos + 16 <= size:
        length, mtype, flags, _seq, _pid = unpack(data, pos)
        if length < 16 or pos + length > size:
            return
        yield mtype, flags, pos + 16, pos + length
        pos += (length + 3) & ~3


def check_status(data: bytes, start: int, end: int) -> None:
    """Raise the error an NLMSG_ERROR (or NLMSG_DONE) carries; zero is success."""
    code = _ERRNO.unpack_from(data, start)[0] if end - start >= 4 else 0
    if code:
        raise NetlinkError(abs(code), os.strerror(abs(code)))
