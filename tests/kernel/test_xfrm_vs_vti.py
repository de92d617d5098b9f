"""The design notes' reasons to prefer XFRM interfaces over VTI, each proven with ESP traffic.

One interface from xfrmid (ipsec6) carries, at once, tunnels whose inner and
outer families are IPv4-in-IPv4, IPv6-in-IPv6, IPv6-in-IPv4 and IPv4-in-IPv6
(VTI needs an interface per family and cannot mix them); every ping is
counted on ipsec6 and on its own SA.

Transport mode through the same interface, on Linux 6.1: transport-mode ESP
from the peer is decrypted and arrives on ipsec6 (counted there), but sending
in transport mode through an XFRM interface is refused by the kernel as a
local routing loop: xfrm_bundle_create looks up no new route for a transport
SA, so the ESP would take the route into the interface again
(xfrmi_xmit2 counts a collision and drops it). The test pins both, so a kernel
that lifts the limit makes it fail and the README's statement is revisited.
"""

from __future__ import annotations

import subprocess

from .bus_fixtures import client, private_bus, xfrmid  # noqa: F401 - fixtures
from .conftest import make_two_netns
from .esp_util import Counters, Tunnel, esp_pair, ip_batch, ip_json, ping

DEV = "ipsec6"


async def test_both_families_and_mixed_families_through_one_interface(client, netns_factory):
    topo = make_two_netns(netns_factory)
    here, there = topo.left, topo.right
    ip_batch(here, ["addr add 2001:db8:6::1/64 dev vleft nodad"])
    ip_batch(there, ["addr add 2001:db8:6::2/64 dev vright nodad", "addr add 10.6.2.2/32 dev lo",
                     "addr add fd06:2::2/128 dev lo", "addr add 10.6.3.3/32 dev lo", "addr add fd06:3::3/128 dev lo"])
    reply = await client.attach(DEV, "vti-reasons", netns=here)
    try:
        for cidr in ("10.6.1.1/32", "fd06:1::1/128"):
            await client.add_address(DEV, "vti-reasons", cidr, netns=here)
        for dst in ("10.6.2.0/24", "fd06:2::/64", "10.6.3.0/24", "fd06:3::/64"):
            await client.add_route(DEV, "vti-reasons", dst, netns=here)
        v4, v6 = ("192.0.2.1", "192.0.2.2"), ("2001:db8:6::1", "2001:db8:6::2")
        tunnels = {  # ping target -> (outer, inner, SPI)
            "10.6.2.2": Tunnel(*v4, "10.6.1.1/32", "10.6.2.0/24", 0x6100),  # IPv4 in IPv4
            "fd06:2::2": Tunnel(*v6, "fd06:1::1/128", "fd06:2::/64", 0x6200),  # IPv6 in IPv6
            "fd06:3::3": Tunnel(*v4, "fd06:1::1/128", "fd06:3::/64", 0x6300, inner_family_differs=True),  # 6 in 4
            "10.6.3.3": Tunnel(*v6, "10.6.1.1/32", "10.6.3.0/24", 0x6400, inner_family_differs=True),  # 4 in 6
        }
        for t in tunnels.values():
            esp_pair(here, there, t, reply.if_id, reply.mark, reply.mask)
        # the far end answers inner IPv6 over outer IPv4 and the other way round: routes to the inner addresses
        ip_batch(there, ["route add 10.6.1.1/32 dev vright", "route add fd06:1::1/128 dev vright"])
        seen = {}
        for dst, t in tunnels.items():
            counters = Counters(here)
            result = ping(here, dst, 3)
            devices, sas = counters.delta()
            seen[dst] = (result, devices[DEV], sas.get(t.spi, 0), sas.get(t.spi + 1, 0))
        for dst, (result, (tx, rx), out, back) in seen.items():
            assert result == (3, 3) and tx >= 3 and rx >= 3 and out >= 3 and back >= 3, (dst, seen[dst])
        # and the SAs are what they claim: an IPv4 pair carrying IPv6, an IPv6 pair carrying IPv4
        states = subprocess.run(["ip", "-n", here, "xfrm", "state"], capture_output=True, text=True).stdout
        assert "sel src fd06:1::1/128 dst fd06:3::/64" in states and "sel src 10.6.1.1/32 dst 10.6.3.0/24" in states
    finally:
        await client.detach(DEV, "vti-reasons", netns=here)


async def test_transport_mode_through_the_interface(client, netns_factory):
    topo = make_two_netns(netns_factory)
    here, there = topo.left, topo.right
    reply = await client.attach(DEV, "transport", netns=here)
    try:
        t = Tunnel("192.0.2.1", "192.0.2.2", "192.0.2.1/32", "192.0.2.2/32", 0x6500, mode="transport")
        esp_pair(here, there, t, reply.if_id, reply.mark, reply.mask)
        # in: the far side pings in transport-mode ESP; the answers go back in the clear
        ip_batch(there, ["xfrm policy delete src 192.0.2.1/32 dst 192.0.2.2/32 dir in"])
        counters = Counters(here)
        assert ping(there, "192.0.2.1", 3) == (3, 3)
        devices, sas = counters.delta()
        assert devices[DEV][1] >= 3 and sas.get(0x6501, 0) >= 3, (devices[DEV], sas)  # decrypted, on ipsec6

        # out: the far side's own address through ipsec6 (its ESP by the uplink, the peer pattern)
        await client.add_route(DEV, "transport", "192.0.2.2/32", netns=here, peer="192.0.2.2", src="192.0.2.1")
        before = ip_json("-s", "link", "show", "dev", DEV, netns=here)[0]["stats64"]["tx"]
        sent, got = ping(here, "192.0.2.2", 3)
        after = ip_json("-s", "link", "show", "dev", DEV, netns=here)[0]["stats64"]["tx"]
        # Linux 6.1 sends a transport SA's ESP by the route into ipsec6 again: a loop, dropped
        assert (sent, got) == (3, 0)
        assert after["collisions"] - before["collisions"] == 3 and after["packets"] == before["packets"], after
    finally:
        await client.detach(DEV, "transport", netns=here)
