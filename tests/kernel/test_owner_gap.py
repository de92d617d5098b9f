"""One owner detaching takes nothing, even briefly, from another owner of the same interface.

Owner "a" holds ipsec7's only IPv4 address; owner "b" holds a route to the
far side's subnet and a peer route to the far side's own address (a host to
host tunnel). The kernel drops every IPv4 route through an interface when its
last IPv4 address goes, so a's Detach must keep that address while b's routes
need it. Two pings run through both of b's routes, every 20 ms, while a
detaches: not one packet may be lost.
"""

from __future__ import annotations

import subprocess
import time

from .bus_fixtures import client, private_bus, xfrmid  # noqa: F401 - fixtures
from .conftest import make_two_netns
from .esp_util import Counters, Tunnel, esp_pair, ip_batch, ip_json, ping_counts, route_get

COUNT = 250  # 5 s at 20 ms


async def test_detach_of_one_owner_loses_no_packet_of_another(client, netns_factory):
    topo = make_two_netns(netns_factory)
    here, there, dev = topo.left, topo.right, "ipsec7"
    a = await client.attach(dev, "a", netns=here)
    await client.attach(dev, "b", netns=here)
    await client.add_address(dev, "a", "10.7.1.1/32", netns=here)
    await client.add_route(dev, "b", "10.7.2.0/24", netns=here)  # its source: a's address
    await client.add_route(dev, "b", "192.0.2.2/32", netns=here, peer="192.0.2.2", src="192.0.2.1")
    ip_batch(there, ["addr add 10.7.2.2/32 dev lo", "route add 10.7.1.0/24 dev vright"])
    esp_pair(here, there, Tunnel("192.0.2.1", "192.0.2.2", "10.7.1.1/32", "10.7.2.0/24", 0x7100),
             a.if_id, a.mark, a.mask)
    esp_pair(here, there, Tunnel("192.0.2.1", "192.0.2.2", "192.0.2.1/32", "192.0.2.2/32", 0x7200),
             a.if_id, a.mark, a.mask)
    assert route_get(here, "10.7.2.2") == route_get(here, "192.0.2.2") == dev
    assert route_get(here, "192.0.2.2", a.mark) == "vleft"

    counters = Counters(here)
    pings = [subprocess.Popen(["ip", "netns", "exec", here, "ping", "-n", "-c", str(COUNT), "-i", "0.02", "-W", "2", dst],
                              stdout=subprocess.PIPE, text=True) for dst in ("10.7.2.2", "192.0.2.2")]
    try:
        time.sleep(1.5)
        assert await client.detach(dev, "a", netns=here) is False  # b still holds ipsec7
    finally:
        results = [ping_counts(p.communicate(timeout=60)[0]) for p in pings]
    devices, sas = counters.delta()
    assert results == [(COUNT, COUNT), (COUNT, COUNT)], results
    assert devices[dev][0] >= 2 * COUNT and sas[0x7100] >= COUNT and sas[0x7200] >= COUNT, (devices[dev], sas)
    # the address a released stays while b's IPv4 routes go through ipsec7, and goes with them
    (link,) = ip_json("addr", "show", "dev", dev, netns=here)
    assert [f"{x['local']}/{x['prefixlen']}" for x in link["addr_info"] if x["family"] == "inet"] == ["10.7.1.1/32"]
    await client.remove_route(dev, "b", "10.7.2.0/24", netns=here)
    await client.remove_route(dev, "b", "192.0.2.2/32", netns=here, peer="192.0.2.2", src="192.0.2.1")
    (link,) = ip_json("addr", "show", "dev", dev, netns=here)
    assert not [x for x in link["addr_info"] if x["family"] == "inet"]
    assert await client.detach(dev, "b", netns=here) is True
