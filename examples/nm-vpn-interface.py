"""How a NetworkManager VPN plugin gets its XFRM interface from xfrmid.

A VPN service plugin (the process NM starts for a VPN connection, e.g.
nm-libreswan-service) does, on Connect:

1. Attach(name, <NM connection UUID>, {bind_to_caller: true}): xfrmid creates
   ``ipsecN`` (or shares it) and returns the if_id and output mark/mask the
   plugin gives its IKE daemon for the SAs and policies. bind_to_caller ties
   the reference to the plugin's own bus connection: if the plugin exits or
   crashes, xfrmid drops the reference and deletes the interface it made.
2. hands the interface name to NetworkManager as TUNDEV: the ``tundev`` key
   of the config dict in org.freedesktop.NetworkManager.VPN.Plugin.SetConfig.
   NM then puts the addresses, routes and DNS of SetIp4Config/SetIp6Config on
   that device itself; the plugin asks xfrmid for the interface only.
3. on Disconnect, Detach (or just exit).

This example does steps 1-3 against a running xfrmid: it prints the config
dict it would send to NM as one JSON line, then keeps the interface until it
gets SIGTERM/SIGINT or stdin closes, then detaches.

    python3 nm-vpn-interface.py [--bus system|ADDRESS] [--name ipsec7] UUID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from xfrmid.client import Client
from xfrmid.errors import XfrmidError


def nm_config(name: str, gateway: str | None) -> dict:
    """The SetConfig dict (a{sv}) NM wants; values shown unwrapped."""
    config = {"tundev": name, "has-ip4": True, "has-ip6": False}
    if gateway:
        config["gateway"] = gateway  # the IKE peer: NM keeps a host route to it outside the VPN
    return config


async def connect(args: argparse.Namespace) -> int:
    client = await Client.connect(args.bus)
    try:
        attached = await client.attach(args.name, args.uuid, bind_to_caller=True)
        print(json.dumps({
            "SetConfig": nm_config(args.name, args.gateway),
            "ike": {"if_id": attached.if_id, "mark": attached.mark, "mask": attached.mask},
        }), flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1(4096) or stop.set())
        await stop.wait()
        await client.detach(args.name, args.uuid)  # Disconnect: let go explicitly
        return 0
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Get an XFRM interface for a NetworkManager VPN connection.")
    parser.add_argument("uuid", help="the NM connection UUID (xfrmid's owner)")
    parser.add_argument("--bus", default="system", help="system (default), session or a D-Bus address")
    parser.add_argument("--name", default="ipsec7", help="interface name (default ipsec7)")
    parser.add_argument("--gateway", help="the VPN gateway's address, passed on to NM")
    args = parser.parse_args()
    try:
        return asyncio.run(connect(args))
    except XfrmidError as exc:
        print(f"nm-vpn-interface: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
