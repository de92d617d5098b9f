"""A scripted run of xfrmid's kernel layer, printing what it does.

Runs as root on a kernel with XFRM interfaces (make demo's VM, or
``tests/vm/run examples/kernel_demo.sh``). Everything happens in a private
network namespace ``xfrmid-demo`` that is removed at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from xfrmid.errors import XfrmidError
from xfrmid.core.routes_policy import expand, route_request
from xfrmid.kernel import open_kernel
from xfrmid.kernel.objects import AddressSpec, LinkSpec, RouteSpec
from xfrmid.naming import resolve

NETNS = "xfrmid-demo"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(*args: str) -> None:
    cmd = ["ip", "-n", NETNS, *args]
    print("$ " + " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    print((out.stdout + out.stderr).rstrip() or "(nothing)", flush=True)


async def demo() -> int:
    kernel = open_kernel()
    try:
        step("Probe the kernel")
        features = await kernel.features()
        print(f"kernel {features.kernel}: {features.as_dict()}")
        if not features.xfrm_interface:
            print(features.explanation())
            return 1

        step(f"Create ipsec1 (if_id 1) in namespace {NETNS!r}, marked as xfrmid's")
        ident = resolve("ipsec1")
        state = await kernel.create_link(NETNS, LinkSpec(name=ident.name, if_id=ident.if_id))
        print(f"created {state}")
        print(f"output mark for its SAs: 0x{ident.mark:x}/0x{ident.mask:08x}")
        again = await kernel.create_link(NETNS, LinkSpec(name="ipsec1", if_id=1))
        print(f"asking again is idempotent: same ifindex {again.ifindex}")
        show("-d", "link", "show", "ipsec1")

        step("Addresses (IPv4 and IPv6)")
        for cidr in ("192.1.3.209/32", "2001:db8:3::209/128"):
            await kernel.add_address(NETNS, AddressSpec("ipsec1", cidr))
            print(f"added {cidr}")
        print(f"addresses of ipsec1: {sorted(await kernel.addresses(NETNS, 'ipsec1'))}")

        step("Routes in main, and a peer route: table 50 plus the peer pattern's rules")
        routes = [
            RouteSpec(dst="10.0.2.0/24", dev="ipsec1", src="192.1.3.209"),
            RouteSpec(dst="2001:db8:2::/48", dev="ipsec1"),
            RouteSpec(dst="192.1.2.23/32", dev="ipsec1", table=50, src="192.1.3.209"),
        ]
        for route in routes:
            await kernel.add_route(NETNS, route)
            print(f"added {route}")
        # what the daemon makes of AddRoute 192.1.2.23/32 with peer 192.1.2.23 (core/routes_policy.py)
        _, rules = expand(route_request("192.1.2.23/32", peer="192.1.2.23"), "ipsec1", ident.mark, ident.mask)
        order = sorted(rules, key=lambda q: (q.action != "nop", q.action == "lookup"))  # landing, jumps, lookup
        for rule in order:
            await kernel.add_rule(NETNS, rule)
            print(f"added {rule}")
        show("rule")
        show("route", "show", "dev", "ipsec1")
        show("-6", "route", "show", "dev", "ipsec1")
        show("route", "show", "table", "50")
        print(f"xfrmid's own routes: {len(await kernel.own_routes(NETNS))}, rules: {len(await kernel.own_rules(NETNS))}")

        step("A foreign xfrm interface is adopted, not owned; a clash is a typed error")
        subprocess.run(["ip", "-n", NETNS, "link", "add", "ipsec7", "type", "xfrm", "if_id", "7"], check=True)
        for link in await kernel.xfrm_links(NETNS):
            print(f"{link.name}: if_id {link.if_id}, owned={link.owned}")
        try:
            await kernel.create_link(NETNS, LinkSpec(name="ipsec8", if_id=7))
        except XfrmidError as exc:
            print(f"{type(exc).__name__} ({exc.dbus_name}): {exc}")

        step("Change the MTU and take the interface down and up")
        state = await kernel.change_link(NETNS, "ipsec1", mtu=1400)
        print(f"mtu now {state.mtu}")
        state = await kernel.change_link(NETNS, "ipsec1", up=False)
        print(f"up={state.up} operstate={state.operstate}")
        state = await kernel.change_link(NETNS, "ipsec1", up=True)
        print(f"up={state.up} operstate={state.operstate}")
        show("link", "show", "ipsec1")

        step("Remove the rule and routes, delete ipsec1; the foreign ipsec7 stays")
        for rule in reversed(order):
            await kernel.remove_rule(NETNS, rule)
        for route in routes:
            await kernel.remove_route(NETNS, route)
        await kernel.delete_link(NETNS, "ipsec1")
        print(f"xfrm links left: {[(l.name, l.owned) for l in await kernel.xfrm_links(NETNS)]}")
        show("rule")
        return 0
    except XfrmidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await kernel.close()


def main() -> int:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        return asyncio.run(demo())
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
