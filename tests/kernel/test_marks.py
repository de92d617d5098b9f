"""Output marks under a narrow mask, end to end, and multihoming steered by marks.

A daemon of its own (in a namespace of its own, on a private bus) runs with
``mark_mask = 0xff``: IPsec owns the low byte of the packet mark, the other
bits belong to the rest of the routing policy.

- Narrow mask: the Attach reply, the peer rules, the SAs' output mark and real
  ESP all use ``if_id/0xff``. A firewall's bits (``0x4200``) on a packet are
  neither matched by xfrmid's rules (the packet still enters the tunnel) nor
  changed by the SA (its ESP carries ``0x4205`` and a foreign rule on those
  bits sends it out of the second uplink, where it is counted).
- Multihoming: two uplinks, one XFRM interface per uplink (``link``), one SA
  pair over each; each interface's output mark picks its uplink's table, marks
  on clear traffic pick the interface, and traffic fails over to the other
  uplink's interface when the connection over the failed one goes down.
"""

from __future__ import annotations

import subprocess

import pytest

from xfrmid.client import Client

from .bus_fixtures import start_bus, start_daemon
from .conftest import add_netns, del_netns, new_netns_name
from .esp_util import Counters, Net, Tunnel, esp_pair, ip_batch, ip_text, own_rules, ping, route_get, sysctl

MASK = 0xFF
FIREWALL = 0x4200  # another program's bits, outside the mask
ROLES = ("r", "h", "p")
TESTS = ("narrow", "multi")


@pytest.fixture(scope="module")
def narrow_daemon():
    """xfrmid with mark_mask 0xff, alone in its namespace on a private bus, and the namespaces
    each test uses (made before the daemon starts: ``ip netns exec`` gives it a mount namespace
    of its own, which does not see later ones)."""
    own = new_netns_name("xmk")
    names = {test: {role: new_netns_name(f"x{role}") for role in ROLES} for test in TESTS}
    made = [own] + [n for roles in names.values() for n in roles.values()]
    for name in made:
        add_netns(name)
    bus = start_bus(policy=False)
    try:
        daemon = start_daemon(bus, "[names]\nmark_mask = 0xff\n", netns=own)
    except BaseException:
        bus.stop()
        for name in made:
            del_netns(name)
        raise
    yield daemon, names
    rc = daemon.stop()
    bus.stop()
    for name in made:
        del_netns(name)
    assert rc == 0, daemon.log_text()[-3000:]


@pytest.fixture
async def narrow(narrow_daemon):
    c = await Client.connect(narrow_daemon[0].address)
    yield c
    c.close()


def two_uplinks(names: dict[str, str], peer_addr: str, peer_inner: str) -> Net:
    """Hub H with uplinks eth0 (192.0.2.1) and eth1 (198.51.100.1) to router R, and peer P
    (``peer_addr``/24, gateway .254, ``peer_inner`` on lo) behind R."""
    net = Net(dict(names))
    # IPv4 only: a veth's IPv6 router solicitations and MLD reports, sent for seconds after
    # it comes up, fell into a ping's packet counts on a slow run (eth1: 3 out, 3 in)
    for netns in net.ns.values():
        sysctl(netns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    net.wire("h", "eth0", "r", "toh0")
    net.wire("h", "eth1", "r", "toh1")
    net.wire("p", "eth0", "r", "top")
    gw = peer_addr.rsplit(".", 1)[0] + ".254"
    for line in ("addr add 192.0.2.254/24 dev toh0", "addr add 198.51.100.254/24 dev toh1", f"addr add {gw}/24 dev top"):
        net.run("r", line)
    for line in ("addr add 192.0.2.1/24 dev eth0", "addr add 198.51.100.1/24 dev eth1",
                 "route add default via 192.0.2.254 dev eth0"):
        net.run("h", line)
    for line in (f"addr add {peer_addr}/24 dev eth0", f"route add default via {gw}", f"addr add {peer_inner} dev lo"):
        net.run("p", line)
    net.commit()
    sysctl(net.ns["r"], "net.ipv4.ip_forward=1")
    return net


async def test_narrow_mask_end_to_end(narrow, narrow_daemon):
    net = two_uplinks(narrow_daemon[1]["narrow"], "10.5.0.2", "10.5.5.5/32")
    hub = net.ns["h"]
    reply = await narrow.attach("ipsec5", "west", netns=hub)
    assert (reply.if_id, reply.mark, reply.mask) == (5, 5, MASK)
    await narrow.add_address("ipsec5", "west", "10.100.5.1/32", netns=hub)
    await narrow.add_route("ipsec5", "west", "10.5.0.0/16", netns=hub, peer="10.5.0.2")
    assert own_rules(hub) == [
        "100:\tfrom all fwmark 0/0xff goto 102 proto xfrmid",
        "101:\tfrom all to 10.5.0.0/16 fwmark 0x5/0xff goto 103 proto xfrmid",
        "102:\tfrom all lookup 50 proto xfrmid",
        "103:\tfrom all nop proto xfrmid",
    ]
    # the firewall's own rule on its own bits: those packets leave by the second uplink
    ip_batch(hub, [f"rule add prio 200 fwmark {hex(FIREWALL)}/0xff00 lookup 77",
                   "route add 10.5.0.0/16 via 198.51.100.254 dev eth1 table 77"])
    t = Tunnel("192.0.2.1", "10.5.0.2", "10.100.5.1/32", "10.5.0.0/16", 0x5100)
    esp_pair(hub, net.ns["p"], t, reply.if_id, reply.mark, reply.mask)
    assert "output-mark 0x5/0xff" in ip_text("xfrm", "state", netns=hub)

    for dst in ("10.5.5.5", "10.5.0.2"):  # behind the peer, and the peer itself
        assert route_get(hub, dst) == "ipsec5"
        assert route_get(hub, dst, FIREWALL) == "ipsec5"  # the firewall's bits are not xfrmid's mark
        assert route_get(hub, dst, 0x5) == "eth0"  # the output mark: as without xfrmid
        assert route_get(hub, dst, FIREWALL | 0x5) == "eth1"  # ... and the firewall's rule still applies

    counters = Counters(hub)
    assert ping(hub, "10.5.5.5", 3) == (3, 3)
    plain, sa = counters.delta()
    counters = Counters(hub)
    assert ping(hub, "10.5.5.5", 3, mark=FIREWALL) == (3, 3)
    marked, sa_marked = counters.delta()
    # unmarked: through ipsec5, ESP (mark 0x5) out of eth0
    assert plain["ipsec5"][0] >= 3 and plain["eth0"][0] >= 3 and plain["eth1"][0] < 3, plain
    # the firewall's bits: still through ipsec5, and the ESP kept them (0x4205): out of eth1
    assert marked["ipsec5"][0] >= 3 and marked["eth1"][0] >= 3 and marked["eth0"][0] < 3, marked
    assert sa[0x5100] >= 3 and sa_marked[0x5100] >= 3
    await narrow.detach("ipsec5", "west", netns=hub)
    assert own_rules(hub) == []


async def test_multihoming_steered_by_marks(narrow, narrow_daemon):
    net = two_uplinks(narrow_daemon[1]["multi"], "203.0.113.2", "10.2.5.5/32")
    west, east = net.ns["h"], net.ns["p"]
    # one interface per uplink; the output mark (its if_id) picks the uplink's table
    for name, uplink, owner in (("ipsec1", "eth0", "isp1"), ("ipsec2", "eth1", "isp2")):
        await narrow.create_interface(name, netns=west, link=uplink)
    isp1 = await narrow.attach("ipsec1", "isp1", netns=west)
    isp2 = await narrow.attach("ipsec2", "isp2", netns=west)
    for reply, name, owner, metric in ((isp1, "ipsec1", "isp1", 100), (isp2, "ipsec2", "isp2", 200)):
        await narrow.add_address(name, owner, "10.1.0.1/32", netns=west)
        await narrow.add_route(name, owner, "10.2.0.0/16", netns=west, metric=metric)  # unmarked: ISP1 first
        await narrow.add_route(name, owner, "10.2.0.0/16", netns=west, table=200 + reply.if_id)  # steered
    ip_batch(west, [
        # ESP: the interface's output mark picks its uplink
        "rule add prio 200 to 203.0.113.2 fwmark 0x1/0xff lookup 101",
        "rule add prio 201 to 203.0.113.2 fwmark 0x2/0xff lookup 102",
        "route add default via 192.0.2.254 dev eth0 table 101",
        "route add default via 198.51.100.254 dev eth1 table 102",
        # clear traffic: marks 0x100 / 0x200 (outside xfrmid's mask) pick the interface
        "rule add prio 210 fwmark 0x100/0xff00 lookup 201",
        "rule add prio 211 fwmark 0x200/0xff00 lookup 202",
    ])
    # east answers over both paths: an XFRM interface per path there too, ISP1's preferred
    ip_batch(east, ["link add e1 type xfrm if_id 1", "link add e2 type xfrm if_id 2", "link set e1 up",
                    "link set e2 up", "route add 10.1.0.1/32 dev e1 src 10.2.5.5 metric 100",
                    "route add 10.1.0.1/32 dev e2 src 10.2.5.5 metric 200"])
    esp_pair(west, east, Tunnel("192.0.2.1", "203.0.113.2", "10.1.0.1/32", "10.2.0.0/16", 0x1100),
             isp1.if_id, isp1.mark, isp1.mask, far_if_id=1)
    esp_pair(west, east, Tunnel("198.51.100.1", "203.0.113.2", "10.1.0.1/32", "10.2.0.0/16", 0x2200),
             isp2.if_id, isp2.mark, isp2.mask, far_if_id=2)
    # the state README.md shows
    assert ip_text("-d", "link", "show", "ipsec1", netns=west).split(":")[1].strip() == "ipsec1@eth0"
    assert ip_text("rule", "show", netns=west).splitlines() == [
        "0:\tfrom all lookup local",
        "200:\tfrom all to 203.0.113.2 fwmark 0x1/0xff lookup 101",
        "201:\tfrom all to 203.0.113.2 fwmark 0x2/0xff lookup 102",
        "210:\tfrom all fwmark 0x100/0xff00 lookup 201",
        "211:\tfrom all fwmark 0x200/0xff00 lookup 202",
        "32766:\tfrom all lookup main",
        "32767:\tfrom all lookup default",
    ]
    assert ip_text("route", "show", "10.2.0.0/16", netns=west).splitlines() == [
        "10.2.0.0/16 dev ipsec1 proto xfrmid scope link metric 100 ",
        "10.2.0.0/16 dev ipsec2 proto xfrmid scope link metric 200 ",
    ]
    for table, dev in (("201", "ipsec1"), ("202", "ipsec2")):
        assert ip_text("route", "show", "table", table, netns=west) == f"10.2.0.0/16 dev {dev} proto xfrmid scope link \n"
    assert route_get(west, "203.0.113.2", 0x1) == "eth0" and route_get(west, "203.0.113.2", 0x2) == "eth1"

    def measure(mark: int | None) -> dict:
        counters = Counters(west)
        result = ping(west, "10.2.5.5", 3, mark=mark)
        devices, _ = counters.delta()
        return {"ping": result, **{d: devices[d][0] for d in ("ipsec1", "ipsec2", "eth0", "eth1") if d in devices}}

    # both uplinks at once: steered by the marks, unmarked by the metric
    one, two, unmarked = measure(0x100), measure(0x200), measure(None)
    assert one["ping"] == (3, 3) and one["ipsec1"] >= 3 and one["eth0"] >= 3 and one["ipsec2"] == 0, one
    assert two["ping"] == (3, 3) and two["ipsec2"] >= 3 and two["eth1"] >= 3 and two["ipsec1"] == 0, two
    assert unmarked["ping"] == (3, 3) and unmarked["ipsec1"] >= 3 and unmarked["ipsec2"] == 0, unmarked

    # uplink 1 fails; its IKE connection goes down (dead peer detection), on both sides
    subprocess.run(["ip", "-n", west, "link", "set", "eth0", "down"], check=True)
    assert await narrow.detach("ipsec1", "isp1", netns=west) is False  # created by CreateInterface: it stays
    subprocess.run(["ip", "-n", east, "route", "del", "10.1.0.1/32", "dev", "e1"], check=True)
    after = {m: measure(m) for m in (None, 0x100, 0x200)}
    for mark, seen in after.items():
        assert seen["ping"] == (3, 3) and seen["ipsec2"] >= 3 and seen["eth1"] >= 3 and seen["ipsec1"] == 0, (mark, seen)
    for name, owner in (("ipsec2", "isp2"),):
        await narrow.detach(name, owner, netns=west)
    for name in ("ipsec1", "ipsec2"):
        await narrow.delete_interface(name, netns=west)
