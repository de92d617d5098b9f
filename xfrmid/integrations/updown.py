"""xfrmid-updown: the updown program a libreswan connection names in ``leftupdown=``.

Stock libreswan (4.x) with ``ipsec-interface=N`` gets an xfrmid-managed
``ipsecN``: Attach on route/up (with INTERFACE_IP and the source address),
AddRoute as libreswan's _updown.xfrm would route, Detach on down/unroute.
What it does is printed on stdout (pluto logs it); an error is one sentence
on stderr and exit status 1, which pluto reports as a failed updown.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..client import Client
from ..errors import Conflict, InvalidArgument, XfrmidError
from .updown_plan import Plan, Step, plan

NETNS_DIR = Path("/run/netns")


def own_netns() -> str | None:
    """The /run/netns name of the namespace this process runs in (None: the init namespace)."""
    mine = os.stat("/proc/self/ns/net")
    try:
        init = os.stat("/proc/1/ns/net")
        if (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino):
            return None
    except OSError:
        return None  # no view of pid 1's namespace: assume we share it
    for entry in sorted(NETNS_DIR.glob("*")) if NETNS_DIR.is_dir() else ():
        try:
            st = entry.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return entry.name
    raise InvalidArgument("This network namespace has no name under /run/netns; give it with --netns.")


def is_local(cidr: str) -> bool:
    """True when the address is already one of this host's (what `ip route get` calls local)."""
    addr = ipaddress.ip_interface(cidr).ip
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((str(addr), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


async def run(p: Plan, client: Client, netns: str | None, say) -> None:
    for step in p.steps:
        if step.unless_local:
            name, _owner, cidr = step.args
            held = await client.interface_properties(name, netns)
            if cidr not in held.get("Addresses", []) and is_local(cidr):
                say(f"{cidr} is already local; not adding it to {name} (as libreswan)")
                continue
        result = await getattr(client, step.method)(*step.args, netns=netns, **step.options)
        say(f"xfrmid: {step}" + _result(step, result))
        if step.method == "attach" and p.pluto_if_id is not None and result.if_id != p.pluto_if_id:
            await client.detach(p.interface, p.owner, netns=netns)
            raise Conflict(
                f"Interface {p.interface!r} has if_id {result.if_id} in xfrmid but pluto uses "
                f"{p.pluto_if_id} for connection {p.owner!r}."
            )


def _result(step: Step, result) -> str:
    if step.method == "attach":
        return f" -> if_id {result.if_id}, mark 0x{result.mark:x}/0x{result.mask:x}"
    if step.method == "detach":
        return " -> interface deleted" if result else ""
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfrmid-updown",
        description="libreswan updown program: lets xfrmid own the connection's ipsec-interface. "
        "Set leftupdown=xfrmid-updown on a connection with ipsec-interface=; pluto passes the "
        "connection in PLUTO_* environment variables.",
    )
    parser.add_argument("--bus", default="system", help="system (default), session or a D-Bus address")
    parser.add_argument("--netns", default=None,
                        help="network namespace name for xfrmid (default: the one this program runs in; '' for xfrmid's own)")
    parser.add_argument("--route", default=None, help=argparse.SUPPRESS)  # _updown's own options, accepted
    parser.add_argument("--iproute", default=None, help=argparse.SUPPRESS)
    parser.add_argument("custom", nargs="?", help=argparse.SUPPRESS)
    return parser


async def amain(args: argparse.Namespace, env: dict[str, str]) -> int:
    p = plan(env)
    for note in p.notes:
        print(note, flush=True)
    if not p.steps:
        return 0
    netns = own_netns() if args.netns is None else (args.netns or None)
    client = await Client.connect(args.bus)
    try:
        await run(p, client, netns, lambda line: print(line, flush=True))
    finally:
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(amain(args, dict(os.environ)))
    except XfrmidError as exc:
        print(f"xfrmid-updown: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"xfrmid-updown: {exc.strerror or exc}.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
