"""Kernel feature probe: what this kernel can do for xfrmid.

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
import re
import subprocess
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import xfrm_kind
from .namespace import F_CREATE, open_private_fd, request, rtnl_on_fd
from .nlerrors import code_of

MIN_XFRM_INTERFACE = (4, 19)
MIN_SET_MARK_MASK = (4, 20)
MIN_COLLECT_MD = (6, 1)


@dataclass(frozen=True)
class Features:
    """What the running kernel supports."""

    xfrm_interface: bool
    collect_md: bool
    set_mark_mask: bool
    kernel: str  # uname release
    modprobe: str = ""  # what `modprobe xfrm_interface` said, "" if it worked
    method: str = "probe"  # "probe": tried for real; "guess": from /sys and versions

    def as_dict(self) -> dict[str, bool]:
        """The D-Bus KernelFeatures property (a{sb})."""
        return {
            "xfrm_interface": self.xfrm_interface,
            "collect_md": self.collect_md,
            "set_mark_mask": self.set_mark_mask,
        }

    def explanation(self) -> str | None:
        """One sentence saying what is missing and what to do, or None if nothing is."""
        return missing_explanation(self)


def missing_explanation(features: Features) -> str | None:
    if features.xfrm_interface:
        return None
    said = f" (modprobe xfrm_interface: {features.modprobe})" if features.modprobe else ""
    return (
        f"Kernel {features.kernel} has no XFRM interfaces{said}: load the xfrm_interface module, "
        "or boot a kernel built with CONFIG_XFRM_INTERFACE (Linux 4.19 or later)."
    )


def kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


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


async def _try_create(ipr, name: str, data: list) -> int:
    """Create an xfrm link in the private namespace; 0 or the errno."""
    msg = ifinfmsg()
    msg["attrs"] = [
        ("IFLA_IFNAME", name),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", xfrm_kind.KIND), ("IFLA_INFO_DATA", {"attrs": data})]}),
    ]
    try:
        await request(ipr, msg, RTM_NEWLINK, F_CREATE)
    except NetlinkError as exc:
        return code_of(exc) or -1
    return 0


async def _reports_external(ipr, name: str) -> bool:
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    try:
        replies = await request(ipr, msg, RTM_GETLINK)
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
    ipr = rtnl_on_fd(fd)
    try:
        present = await _try_create(ipr, "xfrmidprobe0", [("IFLA_XFRM_IF_ID", 1)]) == 0
        external = False
        if present:
            # an old kernel ignores the unknown flag and makes a normal link: check the result
            if await _try_create(ipr, "xfrmidprobe1", [("IFLA_XFRM_COLLECT_METADATA", True)]) == 0:
                external = await _reports_external(ipr, "xfrmidprobe1")
    finally:
        ipr.close()  # the private namespace and its links go with the socket
    return Features(
        xfrm_interface=present,
        collect_md=external,
        set_mark_mask=present and set_mark_mask,
        kernel=release,
        modprobe="" if present else modprobe,
    )


def probe_features_sync() -> Features:
    """probe_features() for synchronous callers outside a running event loop."""
    return asyncio.run(probe_features())
