"""rtnetlink event subscription for one network namespace.

One ``NetnsMonitor`` per namespace xfrmid manages: an AsyncIPRoute bound to
the link, address, route and rule multicast groups, whose datagrams go
straight from pyroute2's asyncio transport into ``events.Parser`` (no
per-message pyroute2 decoding, no queue). A socket filter
(``events.kernel_filter``) drops foreign links' events and other protocols'
routes and rules in the kernel: a storm of them never reaches the daemon.

When the kernel drops notifications because the receive buffer overflowed
(ENOBUFS), the stream can no longer be trusted: the monitor opens a fresh
socket (pyroute2 documents a socket that saw ENOBUFS as unusable), and once
it is subscribed emits a ``ResyncEvent`` so the consumer reconciles from a
dump taken after the new subscription, losing nothing.

Named namespaces are entered through ``namespace.open_netns_fd`` (never
pyroute2's ``netns=``, which forks and creates a missing namespace). A
monitor socket keeps its namespace alive after ``ip netns del``, so the
monitor checks /run/netns/NAME every few seconds and reports (with a
ResyncEvent) a namespace that was deleted or replaced by a new one.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_IPV6_RULE,
    RTMGRP_LINK,
)

from ..errors import XfrmidError
from .events import Event, Interest, Parser, ResyncEvent, kernel_filter
from .namespace import identity, open_netns_fd

log = logging.getLogger("xfrmid.monitor")

GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_RULE
)
# Room for ~48,000 link notifications (~2.7 KB each) while the loop is busy
# elsewhere: a bulk delete of 5,000 links sends two each inside one request,
# before the daemon can read any. systemd-networkd's rtnetlink socket asks for
# the same 128 MB. The memory is the kernel's and only used during a burst.
DEFAULT_RCVBUF = 128 * 1024 * 1024
NS_POLL_INTERVAL = 2.0
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
DRAIN_BATCH = 256  # datagrams per wakeup: cheap per event, and the loop stays responsive
RECV_SIZE = 65536  # larger than any single rtnetlink notification

EventSink = Callable[[Event], None]


def label(netns: str | None) -> str:
    """How logs name a namespace: 'blue' or <own>."""
    return repr(netns) if netns else "<own>"


class _EventSocket(AsyncIPRoute):
    """AsyncIPRoute whose received datagrams go to ``sink`` instead of its queue.

    pyroute2's datagram protocol hands every datagram (and, on a socket
    error such as ENOBUFS, a synthetic NLMSG_ERROR) to ``enqueue``; taking
    them there skips the queue and the full message decoding of ``get()``.
    That override and ``local.transport`` (``NetnsMonitor._read_in_batches``)
    are pyroute2 internals: tests/host/test_dependency_guards.py names this
    file when pyroute2 changes them.
    """

    sink: Callable[[bytes], None] | None = None
    reader: socket.socket | None = None  # see NetnsMonitor._read_in_batches

    def enqueue(self, data, addr):
        sink = self.sink
        if sink is not None:
            sink(data)


def attach_filter(sock, program: bytes) -> None:
    """SO_ATTACH_FILTER with a classic BPF program (struct sock_filter[]); the kernel copies it."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _stop_reading(ipr: _EventSocket) -> None:
    dup, ipr.reader = ipr.reader, None
    if dup is not None:
        try:
            asyncio.get_running_loop().remove_reader(dup.fileno())
        finally:
            dup.close()


def _close(ipr: _EventSocket) -> None:
    ipr.sink = None
    try:
        _stop_reading(ipr)
    finally:
        ipr.close()


class NetnsMonitor:
    """Events of one namespace (None: the daemon's own) delivered to ``on_event``.

    ``on_event`` runs synchronously in the event loop for every event and must
    be cheap; exceptions it raises are logged and swallowed.
    """

    def __init__(
        self,
        netns: str | None,
        on_event: EventSink,
        interest: Interest | None = None,
        *,
        rcvbuf: int = DEFAULT_RCVBUF,
        ns_poll: float = NS_POLL_INTERVAL,
        kernel_filter: bool = True,
    ) -> None:
        self.netns = netns
        self.interest = interest if interest is not None else Interest()
        self.parser = Parser(netns, self.interest)
        self.on_event = on_event
        self.rcvbuf = rcvbuf
        self.ns_poll = ns_poll
        self.kernel_filter = kernel_filter  # False: every notification reaches the parser (tests)
        self.filtered = False  # the kernel filter is attached to the current socket
        self.overruns = 0
        self.reopens = 0
        self._ipr: _EventSocket | None = None
        self._ns_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the namespace we are in
        self._reopening: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Subscribed right now (False while the namespace is missing)."""
        return self._ipr is not None

    async def start(self) -> None:
        """Subscribe; raises NotFound when a named namespace does not exist.

        Even then the monitor keeps looking: once the namespace appears it
        subscribes and emits a ResyncEvent (until ``close``).
        """
        self._closed = False
        if self.netns is not None and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_namespace(), name=f"xfrmid-netns-poll-{self.netns}"
            )
        await self._open()

    async def close(self) -> None:
        self._closed = True
        for task in (self._poller, self._reopening):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._poller = self._reopening = None
        self._drop()

    # -- socket ---------------------------------------------------------

    def _namespace_id(self) -> tuple[int, int] | None:
        return None if self.netns is None else identity(self.netns)

    async def _open(self) -> None:
        ns_id = self._namespace_id()
        fd = None if self.netns is None else open_netns_fd(self.netns)
        ipr = _EventSocket(fileno=fd, rcvbuf=self.rcvbuf, groups=GROUPS)
        try:
            # beyond net.core.rmem_max needs CAP_NET_ADMIN, which the daemon has
            try:
                ipr.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except PermissionError:
                pass
            filtered = False
            if self.kernel_filter:
                try:
                    attach_filter(ipr, kernel_filter())
                    filtered = True
                except OSError as exc:  # the parser filters the same, only more slowly
                    log.warning("netns %s: no kernel event filter (%s); filtering in the daemon",
                                label(self.netns), exc)
            ipr.sink = self._receiver(ipr)
            await ipr.bind(groups=GROUPS)
            self._read_in_batches(ipr)
        except BaseException:
            _close(ipr)
            raise
        old, self._ipr, self._ns_id = self._ipr, ipr, ns_id
        self.filtered = filtered
        if old is not None:
            _close(old)
        log.debug("monitoring rtnetlink events in netns %s", label(self.netns))

    def _drop(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            try:
                _close(ipr)
            except Exception:  # a socket that failed is closed as far as it goes
                log.debug("closing the monitor socket failed", exc_info=True)

    def _read_in_batches(self, ipr: _EventSocket) -> None:
        """Read up to DRAIN_BATCH datagrams per wakeup instead of asyncio's one.

        The datagram transport pyroute2 sets up costs a loop iteration per
        datagram, most of the time per event in a storm; pausing it and reading
        the socket ourselves until it is empty is several times cheaper.
        asyncio refuses a second reader on a transport's descriptor, so ours
        watches a duplicate of it (same socket), closed with the monitor socket.
        Uses the event loop's private ``_remove_reader`` where the transport cannot
        pause (tests/host/test_dependency_guards.py names this file).
        """
        transport = getattr(ipr.local, "transport", None)
        if transport is None or not hasattr(transport, "pause_reading"):
            return  # keep pyroute2's own reading: slower, equally correct
        try:
            transport.pause_reading()
        except NotImplementedError:
            # A datagram transport of Python 3.11.2 (Debian 12's) cannot pause: stop its
            # reader as later versions' pause_reading does (the loop's private
            # _remove_reader: its public one refuses a transport's descriptor).
            remove = getattr(asyncio.get_running_loop(), "_remove_reader", None)
            if remove is None:
                return  # keep pyroute2's own reading: slower, equally correct
            remove(ipr.socket.fileno())
        dup = socket.socket(fileno=os.dup(ipr.socket.fileno()))
        dup.setblocking(False)
        asyncio.get_running_loop().add_reader(dup.fileno(), self._drain, ipr, dup)
        ipr.reader = dup

    def _drain(self, ipr: _EventSocket, sock: socket.socket) -> None:
        sink = ipr.sink
        for _ in range(DRAIN_BATCH):
            if sink is None or ipr.sink is not sink:
                _stop_reading(ipr)  # replaced or closing: epoll would spin on it
                return
            try:
                data = sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                ipr.sink = None
                _stop_reading(ipr)
                self._socket_failed(exc)
                return
            sink(data)

    def _receiver(self, ipr: _EventSocket) -> Callable[[bytes], None]:
        def receive(data: bytes) -> None:
            try:
                events = self.parser.feed(data)
            except OSError as exc:
                ipr.sink = None  # ignore whatever this socket still delivers
                self._socket_failed(exc)
                return
            except Exception:
                log.exception("could not parse an rtnetlink message in netns %s", label(self.netns))
                return
            for ev in events:
                self._emit(ev)

        return receive

    def _emit(self, ev: Event) -> None:
        try:
            self.on_event(ev)
        except Exception:
            log.exception("the event consumer failed on %r", ev)

    def _socket_failed(self, exc: OSError) -> None:
        if self._closed:
            return
        overrun = exc.errno == errno.ENOBUFS
        if overrun:
            self.overruns += 1
            reason = "netlink socket overrun (ENOBUFS)"
            log.debug("netlink overrun in netns %s", label(self.netns))
        else:
            reason = f"netlink socket error: {os.strerror(exc.errno or 0)}"
            log.warning("monitor socket in netns %s failed: %s; reopening", label(self.netns), reason)
        if self._reopening is None or self._reopening.done():
            self._reopening = asyncio.get_running_loop().create_task(
                self._reopen(reason, overrun), name=f"xfrmid-monitor-reopen-{self.netns}"
            )

    async def _reopen(self, reason: str, overrun: bool) -> None:
        try:
            await self._open()
        except (XfrmidError, OSError) as exc:
            # the namespace is gone: the poller reopens when it comes back
            self._drop()
            self._emit(ResyncEvent(self.netns, f"{reason}; could not resubscribe: {exc}", overrun))
            return
        self.reopens += 1
        # only now: the reconcile this triggers must see everything after the gap
        self._emit(ResyncEvent(self.netns, reason, overrun))

    # -- namespace lifetime ------------------------------------------------

    async def _poll_namespace(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.ns_poll)
            try:
                await self.check_namespace()
            except Exception:
                log.exception("checking netns %s failed", label(self.netns))

    async def check_namespace(self) -> None:
        """Notice a named namespace deleted, replaced or back again."""
        now = self._namespace_id()
        if now == self._ns_id and (now is None) == (self._ipr is None):
            return
        if now is None:
            self._drop()
            self._ns_id = None
            log.info("netns %s was deleted; monitoring stops until it is back", label(self.netns))
            self._emit(ResyncEvent(self.netns, "namespace deleted"))
            return
        try:
            await self._open()
        except (XfrmidError, OSError) as exc:
            log.debug("netns %s not monitorable yet: %s", label(self.netns), exc)
            return
        self.reopens += 1
        log.info("netns %s appeared or was replaced; resynchronising", label(self.netns))
        self._emit(ResyncEvent(self.netns, "namespace created or replaced"))
