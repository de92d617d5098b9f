"""The static ESP SAs and policies of an xfrmid VPN connection, through ``ip xfrm``.

The plugin stands where an IKE daemon would: it puts the connection's two
SAs (tunnel mode, AES-GCM, the keys from ``vpn.secrets``) and its policies
on the if_id that xfrmid's Attach returned, so only what is routed into the
connection's interface is encrypted, and the outbound SA carries the
Attach's output mark (the peer pattern's rule lets marked ESP leave by the
underlying route). ``commands`` and ``removal`` are pure; ``install`` and
``remove`` hand each list to one ``ip -batch``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from ..errors import Failed
from .nm_vpn_settings import IPAddress, Tunnel

log = logging.getLogger("nm-xfrmid-service")

AEAD = "rfc4106(gcm(aes))"
ICV_BITS = "128"
_ANY = {4: "0.0.0.0/0", 6: "::/0"}


def _states(t: Tunnel, local: IPAddress) -> list[tuple[str, str, int]]:
    """(source, destination, SPI) of the outbound and the inbound SA."""
    return [(str(local), str(t.remote), t.spi_out), (str(t.remote), str(local), t.spi_in)]


def commands(t: Tunnel, local: IPAddress, if_id: int, mark: int, mask: int) -> list[list[str]]:
    """``ip`` argument lists that install the connection's SAs and policies."""
    out, into = _states(t, local)
    common = ["proto", "esp", "reqid", str(if_id), "mode", "tunnel", "if_id", str(if_id), "aead", AEAD]
    argv = [
        ["xfrm", "state", "add", "src", out[0], "dst", out[1], "spi", hex(out[2]), *common, t.key_out, ICV_BITS,
         "output-mark", hex(mark), "mask", hex(mask)],
        ["xfrm", "state", "add", "src", into[0], "dst", into[1], "spi", hex(into[2]), *common, t.key_in, ICV_BITS],
    ]
    for version in sorted(t.families()):
        for direction, (src, dst) in (("out", out[:2]), ("in", into[:2]), ("fwd", into[:2])):
            argv.append(["xfrm", "policy", "add", "src", _ANY[version], "dst", _ANY[version], "dir", direction,
                         "if_id", str(if_id), "tmpl", "src", src, "dst", dst, "proto", "esp",
                         "reqid", str(if_id), "mode", "tunnel"])
    return argv


def removal(t: Tunnel, local: IPAddress, if_id: int) -> list[list[str]]:
    """``ip`` argument lists that remove what ``commands`` installs (each may find nothing)."""
    argv = [["xfrm", "state", "delete", "src", src, "dst", dst, "proto", "esp", "spi", hex(spi)]
            for src, dst, spi in _states(t, local)]
    for version in sorted(t.families()):
        for direction in ("out", "in", "fwd"):
            argv.append(["xfrm", "policy", "delete", "src", _ANY[version], "dst", _ANY[version],
                         "dir", direction, "if_id", str(if_id)])
    return argv


async def ip(argv: list[str], batch: list[list[str]] | None = None) -> tuple[int, str, str]:
    """Run ``ip ARGV``, with ``batch`` as its commands on stdin (``-batch -``)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", *argv, stdin=asyncio.subprocess.PIPE if batch is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines = "".join(" ".join(a) + "\n" for a in batch).encode() if batch is not None else None
    out, err = await proc.communicate(lines)
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace").strip()


async def install(t: Tunnel, local: IPAddress, if_id: int, mark: int, mask: int) -> None:
    """Remove what a killed plugin may have left on these SPIs and if_id, then install (one ip each)."""
    await remove(t, local, if_id)
    rc, _, err = await ip(["-batch", "-"], commands(t, local, if_id, mark, mask))
    if rc != 0:
        await remove(t, local, if_id)  # ip stops at the first failure: no half tunnel left behind
        raise Failed(f"Installing the ESP SAs and policies on if_id {if_id} failed: {err or f'exit status {rc}'}.")


async def remove(t: Tunnel, local: IPAddress, if_id: int) -> None:
    """Remove the SAs and policies; those already gone are no error."""
    _, _, err = await ip(["-force", "-batch", "-"], removal(t, local, if_id))
    for line in err.splitlines():
        if line and "No such" not in line and "not found" not in line.lower() and "Command failed" not in line:
            log.warning("removing the ESP SAs and policies of if_id %d: %s", if_id, line)


async def source_for(remote: IPAddress) -> IPAddress:
    """The address the kernel would send from to reach ``remote`` (``ip route get``)."""
    rc, out, err = await ip(["-j", "route", "get", str(remote)])
    try:
        prefsrc = json.loads(out)[0]["prefsrc"] if rc == 0 else None
    except (ValueError, LookupError, TypeError):
        prefsrc = None
    if not prefsrc:
        raise Failed(f"No local address reaches the VPN gateway {remote} ({err or 'no route'}); "
                     "set vpn.data local=ADDRESS.")
    from ipaddress import ip_address

    return ip_address(prefsrc)
