"""xfrmid-updown: the updown program a libreswan connection names in ``leftupdown=``.

A connection with ``ipsec-interface=N`` gets an xfrmid-managed ``ipsecN`` in
the network namespace pluto runs in: Attach on route/up (with INTERFACE_IP and
the source address), AddRoute as libreswan's _updown.xfrm would route, Detach
on unroute. What it does is printed on stdout (pluto logs it); an error is one
sentence on stderr and exit status 1, which pluto reports as a failed updown.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING

from ..errors import Conflict, XfrmidError
from .netns_identify import own_netns
from .updown_plan import Plan, Step, plan

if TYPE_CHECKING:
    from ..client import Client


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
        if step.method == "attach":
            await _check_attached(p, client, netns, result.if_id, say)


async def _check_attached(p: Plan, client: Client, netns: str | None, if_id: int, say) -> None:
    """The interface must carry the if_id pluto puts on the SAs; say whose device it is."""
    props = await client.interface_properties(p.interface, netns)
    if p.pluto_if_id is not None and (props.get("External") or if_id != p.pluto_if_id):
        await client.detach(p.interface, p.owner, netns=netns)
        what = "is an external (collect_md) interface" if props.get("External") else f"has if_id {if_id}"
        raise Conflict(
            f"xfrmid's {p.interface} {what}, but pluto puts if_id {p.pluto_if_id} on the SAs of "
            f"connection {p.owner!r} (ipsec-interface={_number(p.interface)}); change that interface "
            "in xfrmid.conf or choose another ipsec-interface=."
        )
    if not props.get("Owned", True):
        say(f"{p.interface} was not created by xfrmid (libreswan 4 creates its ipsec-interface when it "
            "installs the first SA): xfrmid uses it as it is and pluto deletes it with its last "
            "connection; see xfrmid-updown(8) to let xfrmid own it")


def _number(name: str) -> str:
    return name.removeprefix("ipsec")


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


async def apply(args: argparse.Namespace, p: Plan) -> None:
    from ..client import Client  # imported only when there is something to ask: pluto waits for us

    client = await Client.connect(args.bus)
    try:
        netns = own_netns(await client.daemon_pid()) if args.netns is None else (args.netns or None)
        await run(p, client, netns, lambda line: print(line, flush=True))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        p = plan(dict(os.environ))
        for note in p.notes:
            print(note, flush=True)
        if p.steps:
            import asyncio

            asyncio.run(apply(args, p))
        return 0
    except XfrmidError as exc:
        print(f"xfrmid-updown: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"xfrmid-updown: {exc.strerror or exc}.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
