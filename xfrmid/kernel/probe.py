"""The kernel feature probe: fills in ``Features`` by trying for real.

The probe first asks for the module (``modprobe xfrm_interface``, failure
ignored), then tries for real in a private, empty network namespace that
disappears with its socket: create an xfrm link, then an external
(collect_md) one. No side effects on the host's namespaces. Without the
privilege to create a namespace it falls back to what /sys and
modules.builtin say. The set-mark mask (XFRMA_SET_MARK_MASK) arrived in
Linux 4.20; that one is decided by version.
"""

from __future__ import annotations

import asyncio
import os
import subprocess

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import xfrm_kind
from .connection import NetnsConnection
from .features import MIN_COLLECT_MD, MIN_SET_MARK_MASK, Features, kernel_version
from .namespace import open_private_fd
from .netlink import F_CREATE, RTM_GETLINK, RTM_NEWLINK
from .nlerrors import code_of


async def _modprobe() -> str:
    """Try to load xfrm_interface; return "" or a short note of why not.

    The process starts before the first await, so a caller that starts the probe
    as a task and yields once has modprobe running while it goes on (the daemon
    imports its bus and core modules meanwhile).
    """
    try:
        proc = subprocess.Popen(
            ["modprobe", "xfrm_interface"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        return "modprobe is not installed"
    except OSError as exc:
        return f"could not run ({exc})"
    try:
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.communicate)
        return "could not run (no answer within 20 s)"
    if proc.returncode == 0:
        return ""
    text = err.decode(errors="replace").strip()
    if "not found" in text:
        return "module not found"
    last = text.splitlines()[-1] if text else f"exit code {proc.returncode}"
    return last.replace("modprobe: ", "").rstrip(".")


def _guess_xfrm_interface(release: str) -> bool:
    if os.path.isdir("/sys/module/xfrm_interface"):
        return True
    try:
        with open(f"/lib/modules/{release}/modules.builtin", encoding="utf-8") as builtin:
            return any("/xfrm_interface.ko" in line for line in builtin)
    except OSError:
        return False


async def _try_create(conn: NetnsConnection, name: str, data: list) -> int:
    """Create an xfrm link in the private namespace; 0 or the errno."""
    msg = ifinfmsg()
    msg["attrs"] = [
        ("IFLA_IFNAME", name),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", xfrm_kind.KIND), ("IFLA_INFO_DATA", {"attrs": data})]}),
    ]
    try:
        await conn.request(msg, RTM_NEWLINK, F_CREATE)
    except NetlinkError as exc:
        return code_of(exc) or -1
    return 0


async def _reports_external(conn: NetnsConnection, name: str) -> bool:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    try:
        replies = await conn.request(msg, RTM_GETLINK)
    except NetlinkError:
        return False
    for reply in replies:
        if reply.get("ifname") == name:
            info = reply.get_attr("IFLA_LINKINFO")
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            return xfrm_kind.parse(data).external
    return False


async def probe_features() -> Features:
    """Probe the running kernel (coroutine; see probe_features_sync for scripts)."""
    xfrm_kind.register()  # the probe's requests carry IFLA_XFRM_COLLECT_METADATA
    release = os.uname().release
    version = kernel_version(release)
    modprobe = await _modprobe()
    set_mark_mask = version >= MIN_SET_MARK_MASK
    try:
        fd = open_private_fd()
    except OSError:
        # no CAP_SYS_ADMIN for a throwaway namespace: judge from /sys and the version
        present = _guess_xfrm_interface(release)
        return Features(
            xfrm_interface=present,
            collect_md=present and version >= MIN_COLLECT_MD,
            set_mark_mask=present and set_mark_mask,
            kernel=release,
            modprobe="" if present else modprobe,
            method="guess",
        )
    conn = NetnsConnection(fd, None)
    try:
        present = await _try_create(conn, "xfrmidprobe0", [("IFLA_XFRM_IF_ID", 1)]) == 0
        external = False
        if present:
            # an old kernel ignores the unknown flag and makes a normal link: check the result
            if await _try_create(conn, "xfrmidprobe1", [("IFLA_XFRM_COLLECT_METADATA", True)]) == 0:
                external = await _reports_external(conn, "xfrmidprobe1")
    finally:
        conn.close()  # the private namespace and its links go with the socket
    return Features(
        xfrm_interface=present,
        collect_md=external,
        set_mark_mask=present and set_mark_mask,
        kernel=release,
        modprobe="" if present else modprobe,
    )
