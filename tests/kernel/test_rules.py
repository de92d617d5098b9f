"""Policy rules (lookup, goto, nop; not fwmark X/M; both families) and the design notes' pair, on a real kernel."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time

import pytest

from xfrmid.errors import InvalidArgument
from xfrmid.kernel.objects import AddressSpec, LinkSpec, RouteSpec, RuleSpec

from .conftest import ip, ip_run

PEER_RULE = RuleSpec(priority=100, table=50, family=socket.AF_INET, dst="192.1.2.23/32",
                     fwmark=1, fwmask=0xFFFFFFFF, invert=True)


def rules(netns: str, family: str = "-4") -> list[dict]:
    return [r for r in ip(family, "rule", "show", netns=netns) if r["priority"] not in (0, 32766, 32767)]


async def test_not_fwmark_rule(kernel, netns):
    spec = RuleSpec(priority=200, table=60, family=socket.AF_INET, fwmark=0x10, fwmask=0xF0, invert=True)
    await kernel.add_rule(netns, spec)
    assert await kernel.own_rules(netns) == {spec}
    (shown,) = rules(netns)
    assert shown["priority"] == 200 and "not" in shown
    assert (shown["fwmark"], shown["fwmask"], shown["table"], shown["protocol"]) == ("0x10", "0xf0", "60", "xfrmid")


async def test_ipv6_rule_from_prefix(kernel, netns):
    spec = RuleSpec(priority=300, table=1000, family=socket.AF_INET6, src="2001:db8::/32")
    await kernel.add_rule(netns, spec)
    assert await kernel.own_rules(netns) == {spec}
    (shown,) = rules(netns, "-6")
    assert (shown["src"], shown["srclen"], shown["table"], shown["protocol"]) == ("2001:db8::", 32, "1000", "xfrmid")


async def test_fwmark_without_mask_gets_full_mask(kernel, netns):
    await kernel.add_rule(netns, RuleSpec(priority=301, table=61, family=socket.AF_INET, fwmark=3))
    assert await kernel.own_rules(netns) == {
        RuleSpec(priority=301, table=61, family=socket.AF_INET, fwmark=3, fwmask=0xFFFFFFFF)}


async def test_rule_add_and_remove_idempotent(kernel, netns):
    spec = RuleSpec(priority=400, table=62, family=socket.AF_INET, dst="10.0.0.0/8")
    await kernel.add_rule(netns, spec)
    await kernel.add_rule(netns, spec)
    assert await kernel.own_rules(netns) == {spec}
    await kernel.remove_rule(netns, spec)
    await kernel.remove_rule(netns, spec)
    assert await kernel.own_rules(netns) == set() and rules(netns) == []


@pytest.mark.parametrize("family,peer", [(socket.AF_INET, "192.1.2.23/32"), (socket.AF_INET6, "2001:db8:7::1/128")])
async def test_catch_all_rule_beside_the_peer_rule(kernel, netns, family, peer):
    # A default route's rule has no destination, which the kernel's duplicate
    # check and removal read as "any destination": the add failed with EEXIST
    # after the peer's rule, and a removal took the first match, the peer's.
    peer_rule = RuleSpec(priority=100, table=50, family=family, dst=peer, fwmark=7, fwmask=0xFFFFFFFF, invert=True)
    catch_all = RuleSpec(priority=100, table=50, family=family, fwmark=7, fwmask=0xFFFFFFFF, invert=True)
    for first, second in ((peer_rule, catch_all), (catch_all, peer_rule)):
        await kernel.add_rule(netns, first)
        await kernel.add_rule(netns, second)
        await kernel.add_rule(netns, second)  # idempotent
        assert await kernel.own_rules(netns) == {peer_rule, catch_all}
        assert len(rules(netns, "-6" if family == socket.AF_INET6 else "-4")) == 2
        await kernel.remove_rule(netns, catch_all)
        assert await kernel.own_rules(netns) == {peer_rule}
        await kernel.remove_rule(netns, catch_all)  # already gone: still spares the peer's
        assert await kernel.own_rules(netns) == {peer_rule}
        await kernel.remove_rule(netns, peer_rule)
        assert await kernel.own_rules(netns) == set()


def skip_rule(family: int, dst: str | None, mark: int) -> RuleSpec:
    return RuleSpec(priority=101, table=0, family=family, dst=dst, fwmark=mark, fwmask=0xFFFFFFFF,
                    action="goto", goto=103)


async def test_goto_and_nop_rules(kernel, netns):
    landing = RuleSpec(priority=103, table=0, family=socket.AF_INET6, action="nop")
    gate = RuleSpec(priority=100, table=0, family=socket.AF_INET6, fwmark=0, fwmask=0xFF, action="goto", goto=102)
    skip = skip_rule(socket.AF_INET6, "2001:db8:5::/48", 5)
    for spec in (gate, skip, landing):  # a goto before its landing place: the kernel holds it unresolved
        await kernel.add_rule(netns, spec)
        await kernel.add_rule(netns, spec)  # idempotent
    assert await kernel.own_rules(netns) == {gate, skip, landing}
    shown = {r["priority"]: r for r in rules(netns, "-6")}
    assert (shown[100]["fwmark"], shown[100]["fwmask"], shown[100]["goto"]) == ("0", "0xff", 102)
    assert (shown[101]["dst"], shown[101]["dstlen"], shown[101]["goto"]) == ("2001:db8:5::", 48, 103)
    assert "nop" in shown[103] and {r["protocol"] for r in shown.values()} == {"xfrmid"}
    for spec in (skip, gate, landing):
        await kernel.remove_rule(netns, spec)
        await kernel.remove_rule(netns, spec)
    assert await kernel.own_rules(netns) == set() and rules(netns, "-6") == []


async def test_backward_goto_is_invalid(kernel, netns):
    with pytest.raises(InvalidArgument, match="only later rules"):
        await kernel.add_rule(netns, RuleSpec(priority=101, table=0, family=socket.AF_INET, action="goto", goto=101))


class RuleMonitor:
    """``ip monitor rule`` in a namespace; ``mark()`` adds and deletes a foreign rule until the
    monitor has printed its deletion, so what happens between two marks is all seen (a monitor
    still starting misses the first ones)."""

    def __init__(self, netns: str, family: str) -> None:
        self.netns, self.family, self.count = netns, family, 0
        self.proc = subprocess.Popen(["ip", "-n", netns, family, "monitor", "rule"], stdout=subprocess.PIPE)
        self.pending = b""  # read from the pipe, not yet a whole line

    def mark(self, timeout: float = 60) -> list[str]:
        """The lines since the previous mark, markers left out."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.count += 1
            prio = str(4000 + self.count)
            ip_run(self.family, "rule", "add", "prio", prio, "lookup", "4000", netns=self.netns)
            ip_run(self.family, "rule", "del", "prio", prio, "lookup", "4000", netns=self.netns)
            until = min(deadline, time.monotonic() + 1)
            while time.monotonic() < until:
                # the pipe's own bytes (a buffered reader would hide lines from select)
                if select.select([self.proc.stdout], [], [], 0.2)[0]:
                    self.pending += os.read(self.proc.stdout.fileno(), 65536)
                *lines, self.pending = self.pending.split(b"\n")
                for line in (x.decode() for x in lines):
                    if line == f"Deleted {prio}:\tfrom all lookup 4000":
                        return [x for x in seen if "lookup 4000" not in x]
                    seen.append(line)
        raise AssertionError(f"ip monitor printed no marker within {timeout} s: {seen}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


@pytest.mark.parametrize("family,peer", [(socket.AF_INET, "192.1.2.23/32"), (socket.AF_INET6, "2001:db8:7::1/128")])
async def test_full_tunnel_skip_rule_removed_without_a_gap(kernel, netns, family, peer):
    """Removing a full tunnel's skip rule (no destination) while a peer's of the same mark
    comes first: the kernel would take the peer's. The peer's is taken out and put back
    behind the full tunnel's, which covers its packets meanwhile, before that one goes."""
    full, one = skip_rule(family, None, 7), skip_rule(family, peer, 7)
    await kernel.add_rule(netns, one)
    await kernel.add_rule(netns, full)
    monitor = RuleMonitor(netns, "-6" if family == socket.AF_INET6 else "-4")
    try:
        monitor.mark()
        await kernel.remove_rule(netns, full)
        events = [line for line in monitor.mark() if "goto" in line]
    finally:
        monitor.stop()
    assert await kernel.own_rules(netns) == {one}
    host = peer.split("/")[0]
    assert [("Deleted" in e, "to " + host in e) for e in events] == [
        (True, True), (False, True), (True, False)], events


async def test_foreign_rules_left_untouched(kernel, netns):
    ip_run("rule", "add", "prio", "100", "to", "192.1.2.23/32", "not", "fwmark", "1/0xffffffff",
           "lookup", "50", netns=netns)
    assert await kernel.own_rules(netns) == set()
    await kernel.add_rule(netns, PEER_RULE)
    assert await kernel.own_rules(netns) == {PEER_RULE}
    assert len(rules(netns)) == 2
    await kernel.remove_rule(netns, PEER_RULE)
    (left,) = rules(netns)
    assert left["dst"] == "192.1.2.23" and "protocol" not in left


async def test_rule_family_mismatch_is_invalid(kernel, netns):
    with pytest.raises(InvalidArgument, match="2001:db8::/32"):
        await kernel.add_rule(netns, RuleSpec(priority=1, table=5, family=socket.AF_INET, dst="2001:db8::/32"))


async def test_design_notes_peer_pair(kernel, netns):
    """prio 100 to 192.1.2.23/32 not fwmark 1/0xffffffff lookup 50 + table 50 route via ipsec0."""
    await kernel.create_link(netns, LinkSpec(name="ipsec0", if_id=16384))
    await kernel.add_address(netns, AddressSpec("ipsec0", "192.1.3.209/32"))
    route = RouteSpec(dst="192.1.2.23/32", dev="ipsec0", table=50, src="192.1.3.209")
    await kernel.add_rule(netns, PEER_RULE)
    await kernel.add_route(netns, route)

    (rule,) = rules(netns)
    assert rule == {
        "priority": 100, "not": None, "src": "all", "dst": "192.1.2.23", "fwmark": "0x1",
        "table": "50", "protocol": "xfrmid",
    }
    (shown,) = ip("route", "show", "table", "50", netns=netns)
    assert (shown["dst"], shown["dev"], shown["prefsrc"], shown["protocol"]) == (
        "192.1.2.23", "ipsec0", "192.1.3.209", "xfrmid")
    text = ip_text("rule", "show", "prio", "100", netns=netns)
    assert "not from all to 192.1.2.23 fwmark 0x1 lookup 50" in text
    assert await kernel.own_rules(netns) == {PEER_RULE}
    assert await kernel.own_routes(netns) == {route}
    # the pair routes the peer through ipsec0 unless the packet carries the output mark
    (via,) = ip("route", "get", "192.1.2.23", netns=netns)
    assert via["dev"] == "ipsec0"
    (marked,) = ip("route", "get", "192.1.2.23", "mark", "1", netns=netns, check=False) or [{"dev": None}]
    assert marked.get("dev") != "ipsec0"


def ip_text(*args: str, netns: str) -> str:
    import subprocess

    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout
