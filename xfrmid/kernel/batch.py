"""Many rtnetlink requests of one namespace in one send, made by a thread.

rtnetlink does a request's work inside the sender's ``send``, so a thousand
link creations cost the event loop a thousand waits for the kernel, and the
loop can do nothing else meanwhile (not even read the monitor's events of
the links it is creating). Here a batch goes to the kernel as few datagrams:
the kernel handles every message of a datagram in turn, each on its own,
and acknowledges only the ones that fail (no NLM_F_ACK on the requests); a
final NLMSG_NOOP that asks for an ack marks the end of the datagram's
answers. A thread makes the sends, so the kernel's work runs beside the loop
(the interpreter's lock is released for the whole send), and the thread
takes the lock only a few times per datagram, not twice per request.

Each namespace's connection (connection.py) opens its own blocking socket
for this, used only by the thread: its answers never mix with the asyncio
socket's.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence

from ..errors import Failed
from ..job_thread import JobThread
from .netlink import ERRNO, HDR, HDR_LEN, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, NLMSG_NOOP

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error answers without a copy of the request
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
BUFFER = 4 * 1024 * 1024
PER_SEND = 256  # requests per datagram: at most this many error answers queue at once
ANSWER_TIMEOUT = 60.0  # the kernel answers within its send; this only bounds a lost answer

THREAD = JobThread("xfrmid-netlink-batch")

Request = tuple[int, int, bytes]  # message type, flags (NLM_F_ACK is dropped), body after nlmsghdr


class BatchSocket:
    """A blocking NETLINK_ROUTE socket for ``exchange`` (call it on THREAD only)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(True)
        self.sock.settimeout(ANSWER_TIMEOUT)
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:  # beyond net.core.[rw]mem_max needs CAP_NET_ADMIN, which the daemon has
                self.sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:
            pass  # older kernels: error answers carry the request, which only costs buffer
        self._seq = 0
        self._lock = threading.Lock()  # one exchange at a time, whoever calls

    def close(self) -> None:
        self.sock.close()

    def exchange(self, requests: Sequence[Request]) -> list[int]:
        """Send the requests in order; each one's errno (0: done). Blocking: run it on THREAD."""
        codes = [0] * len(requests)
        with self._lock:
            for first in range(0, len(requests), PER_SEND):
                self._send_part(requests, first, min(first + PER_SEND, len(requests)), codes)
        return codes

    def _send_part(self, requests: Sequence[Request], first: int, stop: int, codes: list[int]) -> None:
        if self._seq + PER_SEND + 1 >= 1 << 32:  # nlmsg_seq is 32 bits
            self._seq = 0
        base = self._seq + 1
        self._seq += stop - first + 1
        pack = HDR.pack
        parts = []
        for i in range(first, stop):
            mtype, flags, body = requests[i]
            parts.append(pack(HDR_LEN + len(body), mtype, (flags | NLM_F_REQUEST) & ~NLM_F_ACK, base + i - first, 0))
            parts.append(body)
            parts.append(b"\0" * (-len(body) % 4))
        end = base + stop - first
        parts.append(pack(HDR_LEN, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, end, 0))
        try:
            self.sock.send(b"".join(parts))
            while True:
                data = self.sock.recv(65536)
                pos = 0
                while pos + HDR_LEN <= len(data):
                    length, mtype, _flags, seq, _pid = HDR.unpack_from(data, pos)
                    if length < HDR_LEN:
                        break
                    if mtype == NLMSG_ERROR and length >= HDR_LEN + ERRNO.size:
                        if seq == end:
                            return
                        if base <= seq < end:
                            codes[first + seq - base] = abs(ERRNO.unpack_from(data, pos + HDR_LEN)[0])
                    pos += (length + 3) & ~3
        except OSError as exc:  # timeout, or the socket failed: nothing can be told per request
            raise Failed(f"Sending a batch of {stop - first} rtnetlink requests to the kernel failed: "
                         f"{exc.strerror or 'no answer'}.") from None


async def exchange(bsock: BatchSocket, requests: Sequence[Request]) -> list[int]:
    """``BatchSocket.exchange`` on the batch thread; the loop goes on meanwhile."""
    return await THREAD.run(lambda: bsock.exchange(requests))

