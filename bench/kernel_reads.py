"""The kernel's share of the start-up: what the reconcile must read, read as leanly as user space can.

The start-up reconcile must learn the namespace's xfrm links, their addresses,
xfrmid's routes (protocol 120, all tables, both families) and the rules. Here
those four dumps are asked for exactly as xfrmid asks (kind-filtered link dump
without statistics, address dump, strict route dump by protocol, rule dump),
on a plain netlink socket, and the replies are received and thrown away
unparsed: the user-space work is a recv loop, so the thread's system CPU time
(getrusage RUSAGE_THREAD: a netlink dump is built in the recvmsg of the thread
that reads it) is the kernel's work no program reading the same objects avoids.

iproute2 (``ip`` listing the same objects, as a child: wait4's rusage) is
measured too, for comparison: it reads more (every link, every route) and
prints text. ``python_floor`` is what any Python daemon pays before its first
netlink request: the interpreter's start, and the import of xfrmid's modules.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time

from xfrmid.kernel.namespace import open_netns_fd
from xfrmid.kernel.netlink import (
    ERRNO,
    HDR,
    IFADDR,
    IFLA_EXT_MASK,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTEXT_FILTER_SKIP_STATS,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTMSG,
    ifinfo,
    message,
    nest,
    text,
    u32,
)
from xfrmid.kernel.objects import XFRMID_PROTO

SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12


def _requests() -> list[tuple[str, int, bytes]]:
    """(what, message type, payload) of the four dumps the start-up reconcile makes
    (built with the daemon's own message helpers, kernel/netlink.py)."""
    link = ifinfo() + u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS) + nest(IFLA_LINKINFO, text(IFLA_INFO_KIND, "xfrm"))
    addr = IFADDR.pack(0, 0, 0, 0, 0)
    # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    route = RTMSG.pack(0, 0, 0, 0, 0, XFRMID_PROTO, 0, 0, 0)
    rule = RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)
    return [("xfrm links", RTM_GETLINK, link), ("addresses", RTM_GETADDR, addr),
            ("xfrmid's routes", RTM_GETROUTE, route), ("rules", RTM_GETRULE, rule)]


def _dump(sock: socket.socket, seq: int, mtype: int, payload: bytes) -> tuple[int, int]:
    """One dump, replies received and dropped; (messages, bytes)."""
    sock.send(message(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, payload))
    messages = size = 0
    while True:
        data = sock.recv(1 << 20)
        size += len(data)
        pos = 0
        while pos + HDR.size <= len(data):
            length, rtype, _flags, _seq, _pid = HDR.unpack_from(data, pos)
            if rtype == NLMSG_DONE:
                return messages, size
            if rtype == NLMSG_ERROR:
                code = -ERRNO.unpack_from(data, pos + HDR.size)[0]
                if code:
                    raise OSError(code, f"netlink dump {mtype}: {os.strerror(code)}")
                return messages, size
            messages += 1
            pos += (length + 3) & ~3


def raw_reads(netns: str, rounds: int = 3) -> dict:
    """Wall, user and system seconds of the four dumps in ``netns`` (the fastest of ``rounds``),
    with how many messages each returned."""
    return min((_raw_reads_once(netns) for _ in range(rounds)), key=lambda r: r["wall_s"])


def _raw_reads_once(netns: str) -> dict:
    sock = socket.socket(fileno=open_netns_fd(netns))
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        counts = {}
        before, t0 = resource.getrusage(resource.RUSAGE_THREAD), time.perf_counter()
        for seq, (what, mtype, payload) in enumerate(_requests(), start=1):
            counts[what] = _dump(sock, seq, mtype, payload)[0]
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_THREAD)
    finally:
        sock.close()
    return {"wall_s": round(wall, 4), "user_s": round(after.ru_utime - before.ru_utime, 4),
            "sys_s": round(after.ru_stime - before.ru_stime, 4), "messages": counts}


IPROUTE2_READS = (["-d", "link", "show"], ["addr", "show"], ["route", "show", "table", "all"],
                  ["-6", "route", "show", "table", "all"], ["rule", "show"])


def child_times(cmd: list[str], **popen) -> tuple[float, float, float]:
    """(wall, user, system) seconds of one command, output discarded (wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.perf_counter() - start, usage.ru_utime, usage.ru_stime


DAEMON_MODULES = "xfrmid.daemon, xfrmid.kernel.rtnetlink, xfrmid.bus.service, xfrmid.core.manager"
# the daemon readies pyroute2's import (open_kernel) before the kernel layer loads it
DAEMON_IMPORTS = f"import xfrmid.kernel; xfrmid.kernel.prepare(); import {DAEMON_MODULES}"


def python_floor(top: str) -> dict:
    """(wall, user, sys) of the interpreter starting and exiting, and of it importing the daemon's
    modules (no daemon work), with the daemon's module path: what the start-up pays before any work."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (top, os.environ.get("PYTHONPATH")) if p))
    out = {}
    for what, code in (("python_start", "pass"), ("python_imports", DAEMON_IMPORTS)):
        wall, user, system = child_times([sys.executable, "-c", code], cwd=top, env=env)
        out[what] = {"wall_s": round(wall, 4), "user_s": round(user, 4), "sys_s": round(system, 4)}
    return out


def iproute2_reads(netns: str) -> dict:
    """iproute2 listing links, addresses, routes (v4, v6, all tables) and rules: summed times."""
    wall = user = system = 0.0
    for args in IPROUTE2_READS:
        w, u, s = child_times(["ip", "-n", netns] + args)
        wall, user, system = wall + w, user + u, system + s
    return {"wall_s": round(wall, 4), "user_s": round(user, 4), "sys_s": round(system, 4)}
