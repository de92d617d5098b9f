"""Real pluto pairs (libreswan 4.10 and 5.4) negotiate IKEv2 through xfrmid's interfaces.

Each test runs once per libreswan version on that version's west/east pair
(pluto_fixtures; 5.4 with ``ipsec-interface-managed=no``), with
``xfrmid-updown`` as each side's updown program. A scenario is proven by
traffic (pluto_traffic.traffic: pings answered, packets counted on both
interfaces and on the ESP SAs), not by configuration.

``tunnels`` brings up four connections at once: IPv4 and IPv6 subnet to
subnet (the IPv6 one on ``ipsec-interface=0``, i.e. ipsec0 with if_id 16384),
a second IPv4 connection sharing the first one's interface, and a third on an
interface of its own. The full tunnels (0.0.0.0/0, ::/0) run apart: their
peer routes take every unmarked packet to 0.0.0.0/1 and 128.0.0.0/1 into the
peer table, past the subnet routes in the main table.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from .bus_fixtures import wait_for
from .conftest import ip
from .pluto_fixtures import Pair, interfaces, pair, pluto_pair, pluto_xfrmid, running  # noqa: F401  (fixtures)
from .pluto_traffic import link_present, links, record, routes, traffic

pytestmark = pytest.mark.kernel

# name: (ipsec-interface, west subnet, east subnet, west source, east source, IKE family)
SUBNET_CONNS = {
    "net4": (10, "192.0.1.0/24", "192.0.2.0/24", "192.0.1.254", "192.0.2.254", 4),
    "net6": (0, "2001:db8:0:1::/64", "2001:db8:0:2::/64", "2001:db8:0:1::254", "2001:db8:0:2::254", 6),
    "net4b": (10, "192.0.11.0/24", "192.0.12.0/24", "192.0.11.254", "192.0.12.254", 4),
    "net4c": (11, "192.0.21.0/24", "192.0.22.0/24", "192.0.21.254", "192.0.22.254", 4),
}


def ifname(number: int) -> str:
    return f"ipsec{number}"


def owned_by_xfrmid(pair: Pair) -> bool:
    """5.x unmanaged leaves the device to xfrmid; 4.x creates it itself when it installs the SA."""
    return pair.libreswan.major >= 5


def bring_up(pair: Pair, conns: dict) -> None:
    for name, (number, west_net, east_net, west_src, east_src, family) in conns.items():
        pair.up(name, pair.conn(name, ipsec_interface=number, left_subnet=west_net, right_subnet=east_net,
                                family=family, left_source=west_src, right_source=east_src))


def foreign_objects(pair: Pair) -> None:
    """Someone else's route, rule, address and xfrm interface in both namespaces."""
    for side in (pair.sites.west, pair.sites.east):
        n = ["ip", "-n", side.netns]
        for cmd in (["route", "add", "198.51.100.0/24", "via", side.gw4],
                    ["rule", "add", "priority", "4711", "to", "198.51.100.0/24", "lookup", "main"],
                    ["addr", "add", "203.0.113.9/32", "dev", "lan0"],
                    ["link", "add", "ipsec99", "type", "xfrm", "if_id", "99"]):
            subprocess.run(n + cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tunnels(pluto_pair, pluto_xfrmid):
    """The four subnet connections up at once, over someone else's objects in both
    namespaces; what the namespaces held before the connections is in ``foreign``."""
    pair = running(pluto_pair)
    foreign_objects(pair)
    with_foreign = {side.netns: (routes(side.netns), links(side.netns)) for side in (pair.sites.west, pair.sites.east)}
    marks = [pluto.log_mark() for pluto in pair.plutos()]
    bring_up(pair, SUBNET_CONNS)
    yield {"foreign": with_foreign, "log marks": marks}
    for name in SUBNET_CONNS:
        if name in pair.west.conns:
            pair.delete(name)


def test_subnet_tunnels_share_and_split_interfaces(pair, pluto_xfrmid, tunnels):
    w, e = pair.sites.west, pair.sites.east
    for name, (number, _wn, _en, west_src, east_src, family) in SUBNET_CONNS.items():
        traffic(pair, f"subnet {name} on {ifname(number)}", west_src, east_src, ifname(number), ifname(number),
                outer=family)
    for side in (w, e):
        have = interfaces(pluto_xfrmid.address, side.netns)
        assert sorted(have) == ["ipsec0", "ipsec10", "ipsec11"], have
        assert sorted(have["ipsec10"]["Owners"]) == ["net4", "net4b"]  # two connections, one interface
        assert have["ipsec11"]["Owners"] == ["net4c"]
        assert have["ipsec0"]["IfId"] == 16384 and have["ipsec10"]["IfId"] == 10
        for iface in have.values():
            assert iface["Owned"] is owned_by_xfrmid(pair), (side.name, iface)
    # pluto's SAs and policies carry the if_id of the interface the helper attached
    text = subprocess.run(["ip", "-n", w.netns, "xfrm", "policy"], capture_output=True, text=True).stdout
    assert "if_id 0x4000" in text and "if_id 0xa" in text and "if_id 0xb" in text, text


def test_xfrmid_killed_and_restarted_while_tunnels_carry_traffic(pair, pluto_xfrmid, tunnels):
    """SIGKILL while pings run through two interfaces: no echo is lost, and the daemon that
    starts again holds the same owners, addresses and routes as before (the kernel's too)."""
    w, e = pair.sites.west, pair.sites.east
    state = {n: interfaces(pluto_xfrmid.address, n) for n in (w.netns, e.netns)}
    kernel = {n: (routes(n), links(n)) for n in (w.netns, e.netns)}
    pings = {name: subprocess.Popen(["ip", "netns", "exec", w.netns, "ping", "-n", "-D", "-i", "0.2", "-W", "5",
                                     "-I", SUBNET_CONNS[name][3], SUBNET_CONNS[name][4]],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("net4", "net4c")}
    time.sleep(2)
    killed, restarted = pluto_xfrmid.kill_and_restart()
    time.sleep(2)
    for proc in pings.values():
        proc.send_signal(signal.SIGINT)
    for name, proc in pings.items():
        out = proc.communicate(timeout=60)[0]
        sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        replies = [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M)]
        during = [t for t in replies if killed < t < restarted]
        assert got >= sent - 1, f"{name}: {out[-600:]}"  # the last echo may be in flight at SIGINT
        assert during, f"{name}: no echo while xfrmid was down ({restarted - killed:.1f} s):\n{out[-600:]}"
        record(pair.libreswan.version, f"xfrmid SIGKILLed under {name}'s traffic",
               pings=f"{got}/{sent} answered", answered_while_down=len(during),
               seconds_down=round(restarted - killed, 1))
    assert {n: interfaces(pluto_xfrmid.address, n) for n in (w.netns, e.netns)} == state
    assert {n: (routes(n), links(n)) for n in (w.netns, e.netns)} == kernel
    for name in ("net4", "net4c"):  # and the tunnels still work through the new daemon
        number, _wn, _en, west_src, east_src, family = SUBNET_CONNS[name]
        traffic(pair, f"subnet {name} after xfrmid's restart", west_src, east_src, ifname(number), ifname(number))


def test_connections_going_down_take_only_their_own(pair, pluto_xfrmid, tunnels):
    """Each connection deleted takes what the helper added for it, and nothing else: the
    interface it shares stays for the other connection, the last one takes the interface;
    at the end both namespaces are as they were, someone else's objects included."""
    w, e = pair.sites.west, pair.sites.east
    pair.delete("net4b")
    for side in (w, e):
        have = interfaces(pluto_xfrmid.address, side.netns)
        assert have["ipsec10"]["Owners"] == ["net4"], have
        assert not any("192.0.12.0/24" in r or "192.0.11.0/24" in r for r in routes(side.netns)
                       if "proto xfrmid" in r)
    traffic(pair, "subnet net4 after net4b went down", "192.0.1.254", "192.0.2.254", "ipsec10", "ipsec10")
    for name in ("net4c", "net4", "net6"):
        pair.delete(name)
    for side in (w, e):
        for number in (0, 10, 11):
            # 5.x: xfrmid deletes its own interface with its last owner; 4.x: pluto deletes the one it made
            assert wait_for(lambda: not link_present(side.netns, ifname(number)), 120), (side.name, number)
        assert interfaces(pluto_xfrmid.address, side.netns) == {}
        assert (routes(side.netns), links(side.netns)) == tunnels["foreign"][side.netns], side.name
    for pluto, mark in zip(pair.plutos(), tunnels["log marks"]):
        log = pluto.log(mark)
        assert "Traceback" not in log and "xfrmid-updown:" not in log, log[-3000:]


def test_full_tunnels_send_marked_esp_by_the_default_route(pair, pluto_xfrmid):
    """leftsubnet = one address, rightsubnet = 0.0.0.0/0 (and ::/0): the peer is inside its own
    tunnel and two hops away, so its ESP (carrying the output mark) must take the default route."""
    w, e = pair.sites.west, pair.sites.east
    conns = {"full4": (12, "10.0.1.1/32", "0.0.0.0/0", 4), "full6": (13, "2001:db8:f::1/128", "::/0", 6)}
    for name, (number, mine, theirs, family) in conns.items():
        pair.up(name, pair.conn(name, ipsec_interface=number, left_subnet=mine, right_subnet=theirs,
                                family=family, left_source=mine.split("/")[0]))
    try:
        for name, (number, mine, _theirs, family) in conns.items():
            src = mine.split("/")[0]
            peer = e.v4 if family == 4 else e.v6
            # the peer itself through the tunnel, and a host behind it
            traffic(pair, f"full tunnel {name}: the peer", src, peer, ifname(number), ifname(number), outer=family)
            behind = "192.0.2.254" if family == 4 else "2001:db8:0:2::254"
            traffic(pair, f"full tunnel {name}: behind the peer", src, behind, ifname(number), ifname(number),
                    outer=family)
            fam = "-4" if family == 4 else "-6"
            gateway = w.gw4 if family == 4 else w.gw6
            plain = _route_get(w.netns, fam, peer)
            marked = _route_get(w.netns, fam, peer, mark=number)
            assert plain["dev"] == ifname(number), plain
            assert (marked["dev"], marked.get("gateway")) == ("eth0", gateway), marked
        west = interfaces(pluto_xfrmid.address, w.netns)
        assert "10.0.1.1/32" in west["ipsec12"]["Addresses"]  # leftsourceip, not local: addsource
        assert {r[0] for r in west["ipsec12"]["Routes"]} == {"0.0.0.0/1", "128.0.0.0/1"}  # 0.0.0.0/0, split
        assert {r[0] for r in west["ipsec13"]["Routes"]} == {"2000::/3"}  # libreswan's ::/0
    finally:
        for name in conns:
            pair.delete(name)
    for name, (number, *_rest) in conns.items():
        assert wait_for(lambda: not link_present(w.netns, ifname(number)), 60), name
    assert interfaces(pluto_xfrmid.address, w.netns) == {}


def _route_get(netns: str, family: str, dst: str, mark: int | None = None) -> dict:
    return ip(family, "route", "get", dst, *(["mark", str(mark)] if mark is not None else []), netns=netns)[0]
