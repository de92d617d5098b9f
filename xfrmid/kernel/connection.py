"""One namespace's rtnetlink connection and everything the kernel layer keeps per namespace.

``NetnsConnection`` owns, for one namespace: the pyroute2 ``AsyncIPRoute``
socket and the identity of the namespace it was opened in; the lock that
queues dumps (the kernel runs one dump per socket at a time, and concurrent
D-Bus calls share the socket); the bound on link gets awaiting answers; the
sequence numbers of its requests sent as bytes; its link reaper
(link_reaper.py); and, once asked for, its blocking socket for batches of
requests (batch.py). ``Connections`` keeps one per namespace and replaces
one whose name has come to mean another namespace.

Requests go out as pyroute2 messages (``request``, ``dump``) or as bytes
(``transact``, ``raw_dump``, whose replies stay undecoded for the parsers of
links.py, addresses.py, routes.py and rules.py: pyroute2's full decoding of
thousands of links costs many times the kernel's own work). Both kinds share
the socket and its reader. This module uses pyroute2 internals (NetlinkRequest's
send/response/cleanup, the socket's ``msg_queue`` tags, ``setup_endpoint``,
the range of its sequence number pool); tests/host/test_dependency_guards.py
names this file when pyroute2 changes any of them.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest

from ..validate import check_netns
from .batch import BatchSocket
from .link_reaper import LinkReaper
from .namespace import identity, open_fd
from .netlink import F_DUMP, F_REQ, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, RawMessage, error_code, message, split

# Gets awaiting answers on one socket: a reply the kernel cannot queue (the receive
# buffer full of a thousand concurrent callers' answers) is lost, and its caller
# would wait forever.
GETS_IN_FLIGHT = 64
# Sequence numbers of the requests sent as bytes: pyroute2's pool hands out
# 0xFF..0xFFFF, ours count from above it and wrap below 2**31.
FIRST_SEQ, SEQ_SPAN = 0x10000, 0x7FFF0000
DUMP_ATTEMPTS = 3


def raise_status(data: bytes, start: int, end: int) -> None:
    """Raise the error an NLMSG_ERROR (or NLMSG_DONE) carries; zero is success."""
    code = error_code(data, start, end)
    if code:
        raise NetlinkError(code, os.strerror(code))


class NetnsConnection:
    """The rtnetlink connection of one namespace (None: the daemon's own)."""

    def __init__(self, fd: int, netns: str | None, ns_identity: tuple[int, int] | None = None) -> None:
        self.netns = netns
        self.identity = ns_identity  # of the namespace the socket lives in (None: own or unknown)
        # strict_check: the kernel filters dumps (link kind, route protocol/table)
        # so we do not parse what we would throw away.
        self.ipr = AsyncIPRoute(fileno=fd, strict_check=True)
        self.gets_in_flight = asyncio.Semaphore(GETS_IN_FLIGHT)
        self._dumps = asyncio.Lock()
        self._seq = itertools.count()
        self._reaper: LinkReaper | None = None
        self._batch: BatchSocket | None = None

    @classmethod
    def open(cls, netns: str | None) -> "NetnsConnection":
        """A connection inside the namespace; NotFound when a named one does not exist."""
        ns_identity = None if netns is None else identity(netns)  # before the socket: never newer
        return cls(open_fd(netns), netns, ns_identity)

    @property
    def reaper(self) -> LinkReaper:
        """The namespace's link reaper (one per socket: a replaced namespace gets a new one)."""
        if self._reaper is None:
            self._reaper = LinkReaper(self)
        return self._reaper

    def batch_socket(self) -> BatchSocket:
        """The namespace's socket for batches of requests (batch.py), opened on first use."""
        if self._batch is None:
            self._batch = BatchSocket(open_fd(self.netns))
        return self._batch

    def close(self) -> None:
        try:
            self.ipr.close()
        finally:
            batch, self._batch = self._batch, None
            if batch is not None:
                batch.close()

    # -- requests ---------------------------------------------------------------

    async def request(self, msg, msg_type: int, flags: int = F_REQ) -> list:
        """Send one pyroute2 message; return the decoded replies (raises NetlinkError)."""
        req = NetlinkRequest(self.ipr, msg, msg_type=msg_type, msg_flags=flags)
        await req.send()
        return [reply async for reply in req.response()]

    async def dump(self, msg, msg_type: int) -> list:
        """A dump, decoded; the kernel filters by whatever the message carries. Dumps queue."""
        async with self._dumps:
            return await self.request(msg, msg_type, F_DUMP)

    async def raw_dump(self, msg, msg_type: int, *, attempts: int = DUMP_ATTEMPTS) -> list[RawMessage]:
        """A dump whose replies stay undecoded; callers read only the attributes they need
        (nlattrs.pick). A dump the kernel marks inconsistent (NLM_F_DUMP_INTR) is taken again."""
        async with self._dumps:
            for attempt in range(attempts):
                req = NetlinkRequest(self.ipr, msg, msg_type=msg_type, msg_flags=F_DUMP)
                await req.send()
                try:
                    out, interrupted = await self._answers(req.msg_seq, "a dump")
                finally:
                    req.cleanup()
                if not interrupted or attempt == attempts - 1:
                    return out
            return out  # pragma: no cover - the loop always returns

    async def transact(self, msg_type: int, body: bytes, flags: int = F_REQ) -> list[RawMessage]:
        """Send one request given as bytes (the body after nlmsghdr); the reply messages
        before the kernel's ack (raises NetlinkError).

        Every request asks for an ack (NLM_F_ACK), so the answer always ends with an
        NLMSG_ERROR: zero for success, else the negative errno. The kernel does the
        work inside this send (rtnetlink is synchronous). Sending each request from
        a helper thread, so the loop could go on meanwhile, was measured slower: the
        hand-offs cost more than the overlap gained (bench/README.md). Many requests
        at once go through batch.py instead: one hand-off per batch.
        """
        seq = FIRST_SEQ + next(self._seq) % SEQ_SPAN
        ipr = self.ipr
        await ipr.setup_endpoint()  # the socket's reader and queue exist from here on
        queue = ipr.msg_queue
        queue.ensure_tag(seq)
        try:
            ipr.send(message(msg_type, flags, seq, body))
            return (await self._answers(seq, "a request"))[0]
        finally:
            queue.free_tag(seq)

    async def _answers(self, seq: int, what: str) -> tuple[list[RawMessage], bool]:
        """The datagrams the socket's reader queued under ``seq``, split into messages up to
        the final NLMSG_DONE or NLMSG_ERROR; and whether any was marked NLM_F_DUMP_INTR."""
        queue = self.ipr.msg_queue
        out: list[RawMessage] = []
        interrupted = False
        while True:
            data = await queue.get(seq)
            if not data:
                raise NetlinkError(errno.ECONNRESET, f"netlink socket closed during {what}")
            for mtype, flags, start, end in split(data):
                if mtype == NLMSG_DONE or mtype == NLMSG_ERROR:
                    raise_status(data, start, end)
                    return out, interrupted
                interrupted |= bool(flags & NLM_F_DUMP_INTR)
                out.append((mtype, data, start, end))


class Connections:
    """One NetnsConnection per namespace, opened on first use.

    A cached socket pins the namespace it was opened in, so before reuse the
    namespace's identity is compared: one deleted and re-created under the
    same name gets a fresh connection.
    """

    def __init__(self) -> None:
        self._open: dict[str | None, NetnsConnection] = {}
        self._lock = asyncio.Lock()

    def _cached(self, netns: str | None) -> NetnsConnection | None:
        conn = self._open.get(netns)
        if conn is None:
            return None
        if netns is None or identity(netns) == conn.identity:
            return conn
        self.forget(netns)  # deleted, or replaced by another namespace of that name
        return None

    async def get(self, netns: str | None) -> NetnsConnection:
        netns = check_netns(netns)
        conn = self._cached(netns)
        if conn is not None:
            return conn
        async with self._lock:
            conn = self._cached(netns)
            if conn is None:
                conn = self._open[netns] = NetnsConnection.open(netns)
            return conn

    def forget(self, netns: str | None) -> None:
        """Close and drop the connection of a namespace (e.g. after it was deleted)."""
        conn = self._open.pop(netns, None)
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        for netns in list(self._open):
            self.forget(netns)
