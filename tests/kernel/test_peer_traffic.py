"""The peer pattern at concentrator scale, proven by ESP traffic among four peer namespaces.

A hub namespace reaches four peers through a router, each over real ESP
(static SAs), through XFRM interfaces it gets from xfrmid over D-Bus. Every
tunnel's destination holds its IKE peer, so every route is added with
``peer``:

- ipsec1, shared by two peers: P1 host to host (``198.51.100.1/32``) and P2,
  a subnet holding its peer (``10.2.0.0/16``, peer ``10.2.0.2``);
- ipsec2: P3, a full tunnel in both families (``0.0.0.0/0``, ``::/0``);
- ipsec3: P4, an IPv6 subnet holding its peer (``2001:db8:4::/48``).

For every destination and every mark (none, 1, 2, 3), ``ip route get`` must
pick what the pattern promises: unmarked traffic to a peer's destinations
enters its interface; a packet carrying an interface's output mark to a
destination that interface routes with ``peer`` (its ESP and IKE) leaves by
the route it had before xfrmid; anything else is routed as unmarked traffic.
Pings to every peer must be counted on the right XFRM interface only, and
their ESP on the SAs and the uplink. Removing one peer must leave every other
peer's paths exactly as they were.

A second test puts a full tunnel's peer behind a router and changes the
underlying default route twice (a new gateway, then a second uplink taking
over): ESP follows with no call to xfrmid and no change to the SAs.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import time

from .bus_fixtures import client, private_bus, xfrmid  # noqa: F401 - fixtures
from .esp_util import Counters, Net, Tunnel, esp_pair, ip_text, own_rules, ping, route_get, route_hop, sysctl

U32 = 0xFFFFFFFF


def peer_net(netns_factory) -> Net:
    """Router R with legs to the hub H and to P1..P4, each peer with an "inner" address on lo."""
    roles = ("r", "h", "p1", "p2", "p3", "p4")
    net = Net({role: netns_factory(f"x{role}") for role in roles})
    for peer in ("h", "p1", "p2", "p3", "p4"):
        net.wire(peer, "eth0", "r", f"to{peer}")
    r = [
        "addr add 192.0.2.254/24 dev toh", "addr add 2001:db8:f::fe/64 dev toh nodad",
        "addr add 198.51.100.254/24 dev top1", "addr add 10.2.0.254/24 dev top2",
        "addr add 203.0.113.254/24 dev top3", "addr add 2001:db8:3::fe/64 dev top3 nodad",
        "addr add 2001:db8:4::fe/64 dev top4 nodad",
    ]
    for line in r:
        net.run("r", line)
    hosts = {
        "h": ["192.0.2.1/24", "2001:db8:f::1/64"],
        "p1": ["198.51.100.1/24"],
        "p2": ["10.2.0.2/24"],
        "p3": ["203.0.113.3/24", "2001:db8:3::3/64"],
        "p4": ["2001:db8:4::4/64"],
    }
    gateways = {"h": ("192.0.2.254", "2001:db8:f::fe"), "p1": ("198.51.100.254", None),
                "p2": ("10.2.0.254", None), "p3": ("203.0.113.254", "2001:db8:3::fe"), "p4": (None, "2001:db8:4::fe")}
    for role, cidrs in hosts.items():
        for cidr in cidrs:
            net.run(role, f"addr add {cidr} dev eth0" + (" nodad" if ":" in cidr else ""))
        v4, v6 = gateways[role]
        if v4:
            net.run(role, f"route add default via {v4}")
        if v6:
            net.run(role, f"route add default via {v6}")
    net.run("p2", "addr add 10.2.5.5/32 dev lo")
    net.run("p3", "addr add 8.8.8.8/32 dev lo")
    net.run("p3", "addr add 2001:db8:ff::8/128 dev lo")
    net.run("p4", "addr add 2001:db8:4:5::5/128 dev lo")
    net.commit()
    sysctl(net.ns["r"], "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    return net


# (interface, owner, destination, peer) of every peer route, and the hub's inner addresses
PEERS = [
    ("ipsec1", "p1", "198.51.100.1/32", "198.51.100.1"),
    ("ipsec1", "p2", "10.2.0.0/16", "10.2.0.2"),
    ("ipsec2", "p3", "0.0.0.0/0", "203.0.113.3"),
    ("ipsec2", "p3", "::/0", "2001:db8:3::3"),
    ("ipsec3", "p4", "2001:db8:4::/48", "2001:db8:4::4"),
]
INNER = {("ipsec1", "p2"): "10.100.1.1/32", ("ipsec2", "p3"): ("10.100.2.1/32", "fd00:2::1/128"),
         ("ipsec3", "p4"): "fd00:3::1/128"}
# every destination the matrix checks: each peer (its ESP's destination) and what lies behind it
DESTINATIONS = ["198.51.100.1", "10.2.0.2", "10.2.5.5", "203.0.113.3", "8.8.8.8", "192.0.2.254",
                "2001:db8:3::3", "2001:db8:ff::8", "2001:db8:4::4", "2001:db8:4:5::5", "2001:db8:f::fe"]
MARKS = [None, 1, 2, 3]


def expected(dst: str, mark: int | None, peers: list[tuple], before: dict[str, str]) -> str:
    """What the pattern promises for ``dst`` with ``mark``, from the peer routes alone."""
    addr = ipaddress.ip_address(dst)
    nets = [(ipaddress.ip_network(d), dev) for dev, _, d, _ in peers if ipaddress.ip_network(d).version == addr.version]
    if mark is not None and any(addr in net and int(dev[len("ipsec"):]) == mark for net, dev in nets):
        return before[dst]  # its own ESP/IKE: the route it would take without xfrmid
    best = max((n for n in nets if addr in n[0]), key=lambda n: n[0].prefixlen, default=None)
    return best[1] if best else before[dst]


def matrix(netns: str) -> dict[tuple[str, int | None], str]:
    return {(dst, mark): route_get(netns, dst, mark) for dst in DESTINATIONS for mark in MARKS}


def tunnels(net: Net) -> list[tuple[str, str, Tunnel]]:
    """(interface, far namespace, tunnel) of the hub's SAs."""
    return [
        ("ipsec1", net.ns["p1"], Tunnel("192.0.2.1", "198.51.100.1", "192.0.2.1/32", "198.51.100.1/32", 0x1100)),
        ("ipsec1", net.ns["p2"], Tunnel("192.0.2.1", "10.2.0.2", "10.100.1.1/32", "10.2.0.0/16", 0x1200)),
        ("ipsec2", net.ns["p3"], Tunnel("192.0.2.1", "203.0.113.3", "10.100.2.1/32", "0.0.0.0/0", 0x2300)),
        ("ipsec2", net.ns["p3"], Tunnel("2001:db8:f::1", "2001:db8:3::3", "fd00:2::1/128", "::/0", 0x2310)),
        ("ipsec3", net.ns["p4"], Tunnel("2001:db8:f::1", "2001:db8:4::4", "fd00:3::1/128", "2001:db8:4::/48", 0x3400)),
    ]


# ping target -> (interface it must be counted on, SPI of its outbound SA)
PINGS = {"198.51.100.1": ("ipsec1", 0x1100), "10.2.5.5": ("ipsec1", 0x1200), "8.8.8.8": ("ipsec2", 0x2300),
         "2001:db8:ff::8": ("ipsec2", 0x2310), "2001:db8:4:5::5": ("ipsec3", 0x3400)}
XFRM = ("ipsec1", "ipsec2", "ipsec3")


def ping_each(hub: str, targets: list[str]) -> dict[str, tuple]:
    """Ping every target in turn; for each, (sent, received, per-device tx delta, its SA's delta)."""
    seen = {}
    for dst in targets:
        dev, spi = PINGS[dst]
        counters = Counters(hub)
        sent, got = ping(hub, dst, 3)
        devices, sas = counters.delta()
        seen[dst] = (sent, got, {d: devices[d][0] for d in XFRM if d in devices}, sas.get(spi, 0),
                     devices["eth0"][0])
    return seen


async def test_peers_on_shared_and_separate_interfaces_with_esp(client, netns_factory):
    net = peer_net(netns_factory)
    hub = net.ns["h"]
    before = {dst: route_get(hub, dst) for dst in DESTINATIONS}  # the routes without xfrmid
    assert set(before.values()) == {"eth0"}
    attached = {}
    for dev, owner, dst, peer in PEERS:
        if (dev, owner) not in attached:
            attached[(dev, owner)] = await client.attach(dev, owner, netns=hub)
            for cidr in (lambda v: v if isinstance(v, tuple) else (v,))(INNER.get((dev, owner), ())):
                await client.add_address(dev, owner, cidr, netns=hub)
        src = "192.0.2.1" if owner == "p1" else None  # host to host: the hub's own address inside
        await client.add_route(dev, owner, dst, netns=hub, peer=peer, src=src)
    for (dev, _), reply in attached.items():
        assert (reply.if_id, reply.mark, reply.mask) == (int(dev[len("ipsec"):]),) * 2 + (U32,)
    for dev, far, t in tunnels(net):
        reply = next(r for (d, _), r in attached.items() if d == dev)
        esp_pair(hub, far, t, reply.if_id, reply.mark, reply.mask)

    # the rules: one gate, lookup and landing per family, one skip rule per peer route
    shared = {"100:\tfrom all fwmark 0 goto 102 proto xfrmid", "102:\tfrom all lookup 50 proto xfrmid",
              "103:\tfrom all nop proto xfrmid"}
    skips = {"-4": {"to 198.51.100.1 fwmark 0x1", "to 10.2.0.0/16 fwmark 0x1", "fwmark 0x2"},
             "-6": {"fwmark 0x2", "to 2001:db8:4::/48 fwmark 0x3"}}
    for family, selectors in skips.items():
        rules = set(own_rules(hub, family))
        assert rules == shared | {f"101:\tfrom all {x} goto 103 proto xfrmid" for x in selectors}, rules

    # every destination with every mark
    got = matrix(hub)
    want = {(dst, mark): expected(dst, mark, PEERS, before) for dst in DESTINATIONS for mark in MARKS}
    assert got == want, {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    # spelled out for the peers themselves: unmarked into the tunnel, own mark by the uplink
    for dev, _, dst, peer in PEERS:
        assert got[(peer, None)] == dev and got[(peer, int(dev[len("ipsec"):]))] == "eth0"

    # real ESP to every peer, counted on its interface only, its SA, and the uplink
    for dst, (sent, received, tx, sa, uplink) in ping_each(hub, list(PINGS)).items():
        dev, _ = PINGS[dst]
        assert (sent, received) == (3, 3), dst
        assert tx[dev] >= 3 and all(n == 0 for d, n in tx.items() if d != dev), (dst, tx)
        assert sa >= 3 and uplink >= 3, (dst, sa, uplink)

    # one peer goes: every other peer's paths stay exactly as they were
    await client.remove_route("ipsec1", "p2", "10.2.0.0/16", netns=hub, peer="10.2.0.2")
    rest = [p for p in PEERS if p[1] != "p2"]
    after = matrix(hub)
    want = {(dst, mark): expected(dst, mark, rest, before) for dst in DESTINATIONS for mark in MARKS}
    assert after == want, {k: (after[k], want[k]) for k in after if after[k] != want[k]}
    p2 = ipaddress.ip_network("10.2.0.0/16")
    unchanged = {k: v for k, v in got.items() if ipaddress.ip_address(k[0]) not in p2}
    assert {k: after[k] for k in unchanged} == unchanged
    assert "10.2.0.0/16" not in ip_text("-4", "rule", "show", netns=hub)
    for dst, (sent, received, tx, _, _) in ping_each(hub, [d for d in PINGS if d != "10.2.5.5"]).items():
        assert received == 3 and tx[PINGS[dst][0]] >= 3, dst

    for (dev, owner) in attached:
        await client.detach(dev, owner, netns=hub)
    assert own_rules(hub) == []
    assert own_rules(hub, "-6") == []


def uplinks_net(netns_factory) -> Net:
    """Hub H with two uplinks to router R (eth0: gateways .254 and .253; eth1) and its public
    address on lo, which R reaches over either; P3 behind R holds 8.8.8.8."""
    net = Net({role: netns_factory(f"x{role}") for role in ("r", "h", "p3")})
    net.wire("h", "eth0", "r", "toh0")
    net.wire("h", "eth1", "r", "toh1")
    net.wire("p3", "eth0", "r", "top3")
    for line in ("addr add 192.0.2.254/24 dev toh0", "addr add 192.0.2.253/24 dev toh0",
                 "addr add 198.18.1.254/24 dev toh1", "addr add 203.0.113.254/24 dev top3",
                 "route add 100.64.0.1/32 via 192.0.2.1 metric 100",
                 "route add 100.64.0.1/32 via 198.18.1.1 metric 200"):
        net.run("r", line)
    for line in ("addr add 192.0.2.1/24 dev eth0", "addr add 198.18.1.1/24 dev eth1", "addr add 100.64.0.1/32 dev lo",
                 "route add default via 192.0.2.254 metric 100", "route add default via 198.18.1.254 metric 200"):
        net.run("h", line)
    for line in ("addr add 203.0.113.3/24 dev eth0", "route add default via 203.0.113.254",
                 "addr add 8.8.8.8/32 dev lo"):
        net.run("p3", line)
    net.commit()
    # R forgets a route through a leg whose carrier is gone (the hub's uplink went down)
    sysctl(net.ns["r"], "net.ipv4.ip_forward=1", "net.ipv4.conf.all.ignore_routes_with_linkdown=1")
    return net


def sa_ids(netns: str) -> list[str]:
    """The SAs' addresses and SPIs (not their counters)."""
    return re.findall(r"^src \S+ dst \S+|spi 0x[0-9a-f]+", ip_text("xfrm", "state", netns=netns), re.M)


async def test_full_tunnel_follows_underlying_default_route_changes(client, netns_factory):
    net = uplinks_net(netns_factory)
    hub = net.ns["h"]
    reply = await client.attach("ipsec2", "full", netns=hub)
    try:
        await client.add_address("ipsec2", "full", "10.100.2.1/32", netns=hub)
        await client.add_route("ipsec2", "full", "0.0.0.0/0", netns=hub, peer="203.0.113.3")
        t = Tunnel("100.64.0.1", "203.0.113.3", "10.100.2.1/32", "0.0.0.0/0", 0x2500)
        esp_pair(hub, net.ns["p3"], t, reply.if_id, reply.mark, reply.mask)
        states = sa_ids(hub)
        phases = []
        # (a route through a gateway names its device, as DHCP clients and NetworkManager do:
        # without one, the kernel finds the gateway's device by a lookup the full tunnel answers)
        for change in ([], ["route", "replace", "default", "via", "192.0.2.253", "dev", "eth0", "metric", "100"],
                       ["link", "set", "eth0", "down"]):
            if change:
                subprocess.run(["ip", "-n", hub, *change], check=True)
            time.sleep(0.5)  # the change settles
            counters = Counters(hub)
            sent, got = ping(hub, "8.8.8.8", 5)
            devices, sas = counters.delta()
            phases.append((route_hop(hub, "203.0.113.3", reply.mark), sent, got, devices["ipsec2"][0],
                           devices["eth0"][0], devices["eth1"][0], sas.get(0x2500, 0)))
        # ESP always by the current default route; xfrmid and the SAs untouched
        (first, gateway, uplink2) = phases
        assert first[:3] == (("eth0", "192.0.2.254"), 5, 5) and min(first[3], first[4], first[6]) >= 5, first
        # none of the 5 ESP packets on the second uplink; a link just up sends a few IPv6
        # router and neighbour solicitations and MLD reports of its own meanwhile
        assert first[5] < 5, first
        assert gateway[:3] == (("eth0", "192.0.2.253"), 5, 5) and min(gateway[3], gateway[4], gateway[6]) >= 5, gateway
        assert uplink2[:3] == (("eth1", "198.18.1.254"), 5, 5) and min(uplink2[3], uplink2[5], uplink2[6]) >= 5, uplink2
        assert uplink2[4] == 0, uplink2
        assert sa_ids(hub) == states
        assert route_get(hub, "203.0.113.3") == route_get(hub, "8.8.8.8") == "ipsec2"
    finally:
        await client.detach("ipsec2", "full", netns=hub)
