"""The core Manager on the real kernel: refcounting, peer pattern, restart, foreign objects.

Every test works in a fresh namespace and checks the result with iproute2's
JSON output, not with xfrmid's own view of the kernel. ``settings`` and ``manager``
come from tests/conftest.py, over the real Kernel.
"""

from __future__ import annotations

import subprocess

import pytest

from xfrmid.core.manager import Manager
from xfrmid.errors import Busy, Conflict, NotOwned
from xfrmid.kernel import open_kernel
from xfrmid.kernel.objects import LinkSpec

from .conftest import ip, ip_run, link_exists, link_json

ZERO = {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}


def addrs(netns: str, dev: str) -> set[str]:
    (link,) = ip("addr", "show", "dev", dev, netns=netns)
    return {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link"}


def routes(netns: str, *where: str, family: str = "-4") -> set[tuple]:
    """(dst, dev, prefsrc) of ``ip route show WHERE``; iproute2 omits the dev it was asked for."""
    asked = where[where.index("dev") + 1] if "dev" in where else None
    return {(r["dst"], r.get("dev", asked), r.get("prefsrc"))
            for r in ip(family, "route", "show", *where, netns=netns)}


def own_rules(netns: str, family: str = "-4") -> list[dict]:
    return [r for r in ip(family, "rule", "show", netns=netns) if r.get("protocol") == "xfrmid"]


async def test_two_owners_share_interface_addresses_routes(manager, netns):
    first = await manager.attach("ipsec1", "conn-a", netns=netns)
    second = await manager.attach("ipsec1", "conn-b", netns=netns)
    assert (first.if_id, first.mark, first.mask) == (1, 1, 0xFFFFFFFF) and second.info.owners == ("conn-a", "conn-b")
    shown = link_json("ipsec1", netns)
    if_id = shown["linkinfo"]["info_data"]["if_id"]
    assert shown["linkinfo"]["info_kind"] == "xfrm" and int(str(if_id), 0) == 1
    for owner in ("conn-a", "conn-b"):
        await manager.add_address("ipsec1", owner, "192.0.2.1/24", netns=netns)
        await manager.add_address("ipsec1", owner, "2001:db8::1/64", netns=netns)
        await manager.add_route("ipsec1", owner, "10.10.0.0/16", netns=netns)
        await manager.add_route("ipsec1", owner, "2001:db8:10::/48", netns=netns)
    await manager.add_route("ipsec1", "conn-a", "10.11.0.0/16", netns=netns)
    assert addrs(netns, "ipsec1") == {"192.0.2.1/24", "2001:db8::1/64"}
    assert ("10.11.0.0/16", "ipsec1", None) in routes(netns)

    assert not await manager.detach("ipsec1", "conn-a", netns=netns)
    # conn-b still holds the shared ones; conn-a's own route left with it
    assert addrs(netns, "ipsec1") == {"192.0.2.1/24", "2001:db8::1/64"}
    v4 = routes(netns, "dev", "ipsec1")
    assert {r[0] for r in v4} >= {"10.10.0.0/16"} and "10.11.0.0/16" not in {r[0] for r in v4}
    assert "2001:db8:10::/48" in {r[0] for r in routes(netns, family="-6")}

    assert await manager.detach("ipsec1", "conn-b", netns=netns)
    assert not link_exists("ipsec1", netns)
    assert not ip("route", "show", "proto", "xfrmid", netns=netns)
    assert manager.interfaces() == []


async def test_default_route_is_split_and_default_kept(manager, netns):
    ip_run("link", "add", "up0", "type", "veth", "peer", "name", "up1", netns=netns)
    ip_run("link", "set", "up0", "up", netns=netns)
    ip_run("addr", "add", "198.51.100.2/24", "dev", "up0", netns=netns)
    ip_run("route", "add", "default", "via", "198.51.100.1", netns=netns)
    await manager.attach("ipsec2", "a", netns=netns)
    await manager.add_route("ipsec2", "a", "0.0.0.0/0", netns=netns)
    await manager.add_route("ipsec2", "a", "::/0", netns=netns)
    (default,) = ip("route", "show", "default", netns=netns)
    assert default["dev"] == "up0" and default.get("gateway") == "198.51.100.1"
    assert {r[0] for r in routes(netns, "dev", "ipsec2")} == {"0.0.0.0/1", "128.0.0.0/1"}
    assert {"::/1", "8000::/1"} <= {r[0] for r in routes(netns, "dev", "ipsec2", family="-6")}
    (via,) = ip("route", "get", "203.0.113.5", netns=netns)
    assert via["dev"] == "ipsec2"


async def test_peer_pattern_refcounted(manager, netns):
    for owner in ("a", "b"):
        await manager.attach("ipsec0", owner, netns=netns)
        await manager.add_address("ipsec0", owner, "192.1.3.209/32", netns=netns)
        await manager.add_route("ipsec0", owner, "192.1.2.23/32", netns=netns, peer="192.1.2.23",
                                src="192.1.3.209")
    text = subprocess.run(["ip", "-n", netns, "rule", "show"], capture_output=True, text=True).stdout
    assert PEER_RULES.format(dst="to 192.1.2.23 ", mark="0x4000") in text, text
    assert len(own_rules(netns)) == 4
    assert routes(netns, "table", "50") == {("192.1.2.23", "ipsec0", "192.1.3.209")}
    (via,) = ip("route", "get", "192.1.2.23", netns=netns)
    assert via["dev"] == "ipsec0"
    (marked,) = ip("route", "get", "192.1.2.23", "mark", "0x4000", netns=netns, check=False) or [{}]
    assert marked.get("dev") != "ipsec0"
    await manager.detach("ipsec0", "a", netns=netns)
    assert len(own_rules(netns)) == 4 and routes(netns, "table", "50")
    await manager.remove_route("ipsec0", "b", "192.1.2.23/32", netns=netns)
    assert own_rules(netns) == [] and not routes(netns, "table", "50")


# ``ip rule`` of one peer route in table 50 (priority 100, the full mask)
PEER_RULES = """100:\tfrom all fwmark 0 goto 102 proto xfrmid
101:\tfrom all {dst}fwmark {mark} goto 103 proto xfrmid
102:\tfrom all lookup 50 proto xfrmid
103:\tfrom all nop proto xfrmid
"""


async def test_routes_survive_removal_of_last_address(manager, netns):
    await manager.attach("ipsec3", "addr-owner", netns=netns)
    await manager.attach("ipsec3", "route-owner", netns=netns)
    await manager.add_address("ipsec3", "addr-owner", "192.0.2.3/24", netns=netns)
    await manager.add_route("ipsec3", "route-owner", "10.3.0.0/16", netns=netns)
    await manager.add_route("ipsec3", "route-owner", "10.4.0.0/16", netns=netns, table=77)
    # the kernel flushes every IPv4 route through ipsec3 with its last IPv4 address:
    # the address the other owner released stays while those routes are held
    await manager.detach("ipsec3", "addr-owner", netns=netns)
    assert addrs(netns, "ipsec3") == {"192.0.2.3/24"}
    assert routes(netns, "dev", "ipsec3", "proto", "120") == {("10.3.0.0/16", "ipsec3", None)}
    assert routes(netns, "table", "77") == {("10.4.0.0/16", "ipsec3", None)}
    await manager.remove_route("ipsec3", "route-owner", "10.3.0.0/16", netns=netns)
    assert addrs(netns, "ipsec3") == {"192.0.2.3/24"}
    await manager.remove_route("ipsec3", "route-owner", "10.4.0.0/16", netns=netns)
    assert addrs(netns, "ipsec3") == set()


async def test_foreign_interface_adopted_never_deleted(manager, netns):
    ip_run("link", "add", "ipsec5", "type", "xfrm", "if_id", "5", netns=netns)
    ip_run("addr", "add", "192.0.2.5/24", "dev", "ipsec5", netns=netns)
    result = await manager.attach("ipsec5", "a", netns=netns)
    assert not result.info.owned and result.if_id == 5
    await manager.add_address("ipsec5", "a", "192.0.2.5/24", netns=netns)  # it was there before
    await manager.add_address("ipsec5", "a", "192.0.2.55/24", netns=netns)
    with pytest.raises(NotOwned):
        await manager.delete_interface("ipsec5", netns=netns)
    assert not await manager.detach("ipsec5", "a", netns=netns)
    assert link_exists("ipsec5", netns)
    assert addrs(netns, "ipsec5") == {"192.0.2.5/24"}
    ip_run("link", "add", "ipsec6", "type", "xfrm", "if_id", "60", netns=netns)
    with pytest.raises(Conflict, match="if_id 60"):
        await manager.attach("ipsec6", "a", netns=netns)


async def test_delete_busy_then_forced(manager, netns):
    await manager.create_interface("ipsec7", netns=netns, mtu=1400, addresses=["192.0.2.7/24"])
    assert link_json("ipsec7", netns)["mtu"] == 1400 and addrs(netns, "ipsec7") == {"192.0.2.7/24"}
    await manager.attach("ipsec7", "a", netns=netns)
    with pytest.raises(Busy):
        await manager.delete_interface("ipsec7", netns=netns)
    await manager.delete_interface("ipsec7", netns=netns, force=True)
    assert not link_exists("ipsec7", netns)


async def test_failed_route_rolls_back(manager, netns):
    await manager.attach("ipsec8", "a", netns=netns)
    ip_run("link", "add", "other0", "type", "veth", "peer", "name", "other1", netns=netns)
    ip_run("link", "set", "other0", "up", netns=netns)
    ip_run("route", "add", "128.0.0.0/1", "dev", "other0", netns=netns)  # foreign, same slot
    with pytest.raises(Conflict):
        await manager.add_route("ipsec8", "a", "0.0.0.0/0", netns=netns)
    assert not ip("route", "show", "proto", "xfrmid", netns=netns)
    assert manager.get("ipsec8", netns).routes == ()
    assert routes(netns, "dev", "other0") == {("128.0.0.0/1", "other0", None)}


async def test_restart_reconciles_and_leaves_foreign_alone(kernel, settings, netns):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec10", "a", netns=netns)
    await m1.add_address("ipsec10", "a", "192.0.2.10/24", netns=netns)
    await m1.add_route("ipsec10", "a", "10.10.0.0/16", netns=netns, peer="10.10.0.1")
    await m1.create_interface("ipsec11", netns=netns)
    await m1.attach("ipsec12", "a", netns=netns)
    await m1.stop()
    # foreign objects with similar names and the same prefixes
    ip_run("link", "add", "ipsec13", "type", "xfrm", "if_id", "13", netns=netns)
    ip_run("link", "set", "ipsec13", "up", netns=netns)
    ip_run("route", "add", "10.13.0.0/16", "dev", "ipsec13", netns=netns)
    ip_run("rule", "add", "prio", "100", "to", "10.13.0.0/16", "lookup", "50", netns=netns)

    m2 = Manager(open_kernel(), settings)  # a new daemon: fresh netlink sockets, same state file
    counts = await m2.start()
    # (a leftover of another test module in the VM's own namespace would count as removed)
    assert counts["created"] == counts["repaired"] == counts["adopted"] == 0
    assert await m2.reconcile() == ZERO
    await m2.stop()
    await m2.kernel.close()

    # damage while stopped: link down, route and rule gone, an interface deleted, a marked leftover
    ip_run("link", "set", "ipsec10", "down", netns=netns)
    ip_run("rule", "del", "prio", "101", "to", "10.10.0.0/16", netns=netns)
    ip_run("link", "del", "ipsec11", netns=netns)
    ip_run("addr", "flush", "dev", "ipsec10", netns=netns)
    await kernel.create_link(netns, LinkSpec(name="ipsec99", if_id=99))

    m3 = Manager(kernel, settings)  # (the fixture's sockets: saves a feature probe)
    counts = await m3.start()
    assert counts == {"created": 1, "repaired": 1, "adopted": 0, "removed": 1}
    assert link_exists("ipsec11", netns) and not link_exists("ipsec99", netns)
    assert "UP" in link_json("ipsec10", netns)["flags"]
    assert addrs(netns, "ipsec10") == {"192.0.2.10/24"}
    assert routes(netns, "table", "50") == {("10.10.0.0/16", "ipsec10", None)}
    assert {(r.get("dst"), r.get("dstlen")) for r in own_rules(netns) if r["priority"] == 101} == {("10.10.0.0", 16)}
    # foreign ones untouched
    assert link_exists("ipsec13", netns)
    assert routes(netns, "dev", "ipsec13") == {("10.13.0.0/16", "ipsec13", None)}
    assert any((r.get("dst"), r.get("dstlen")) == ("10.13.0.0", 16) and r.get("protocol") != "xfrmid"
               for r in ip("rule", "show", netns=netns))
    assert await m3.reconcile() == ZERO
    await m3.stop()


async def test_create_cut_short_by_a_crash_is_finished_not_adopted(kernel, settings, netns):
    """A crash between a create's two requests leaves the link in xfrmid's group without its
    alias, down. The state file promised an interface of ours: the restart finishes the
    create (alias, up) instead of adopting the link as someone else's, which would leak it."""
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec14", "a", netns=netns)
    await m1.create_interface("ipsec15", netns=netns)
    # someone else's link in xfrmid's group, which the state file does not claim as ours
    ip_run("link", "add", "ipsec16", "group", "120", "type", "xfrm", "if_id", "16", netns=netns)
    await m1.create_interface("ipsec16", 16, netns=netns)  # adopted: not ours
    await m1.stop()
    # what the kernel holds after such a crash (the link made by the first request only)
    ip_run("link", "del", "ipsec14", netns=netns)
    ip_run("link", "add", "ipsec14", "group", "120", "type", "xfrm", "if_id", "14", netns=netns)

    m2 = Manager(kernel, settings)
    counts = await m2.start()
    assert counts["repaired"] == 1 and counts["adopted"] == 0
    link = link_json("ipsec14", netns)
    assert link.get("ifalias") == "xfrmid" and "UP" in link["flags"]
    assert m2.get("ipsec14", netns).owned and not m2.get("ipsec16", netns).owned
    assert link_json("ipsec16", netns).get("ifalias") is None
    await m2.detach("ipsec14", "a", netns=netns)
    await m2.delete_interface("ipsec15", netns=netns)
    assert not link_exists("ipsec14", netns) and not link_exists("ipsec15", netns)
    assert link_exists("ipsec16", netns)  # foreign: never deleted
    assert await m2.reconcile() == ZERO
    await m2.stop()
