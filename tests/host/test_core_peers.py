"""The peer pattern against the in-memory kernel: one route in the peer table and the gate,
skip, lookup and landing rules per address family, for any number of peers; addresses that
other owners' routes need stay until they go.

``settings`` and ``manager`` come from tests/conftest.py, over this module's FakeKernel.
"""

from __future__ import annotations

import socket

import pytest

from xfrmid.errors import InvalidArgument
from xfrmid.kernel.objects import RouteSpec, RuleSpec
from xfrmid.core.manager import Manager
from xfrmid.naming import NamePolicy
from xfrmid.settings import Settings

from fake_kernel import FakeKernel, main_routes, ns


@pytest.fixture
def kernel():
    return FakeKernel()


def peer_rules(mark: int, dst: str | None, family: int = socket.AF_INET, mask: int = 0xFFFFFFFF) -> set[RuleSpec]:
    """The peer pattern's rules for one peer route in table 50 at priority 100."""
    return {
        RuleSpec(priority=100, table=0, family=family, fwmark=0, fwmask=mask, action="goto", goto=102),
        RuleSpec(priority=101, table=0, family=family, dst=dst, fwmark=mark, fwmask=mask, action="goto", goto=103),
        RuleSpec(priority=102, table=50, family=family),
        RuleSpec(priority=103, table=0, family=family, action="nop"),
    }


async def test_peer_pattern_route_and_rule(manager, kernel):
    await manager.attach("ipsec4", "a")
    await manager.add_address("ipsec4", "a", "192.1.3.209/32")
    await manager.add_route("ipsec4", "a", "192.1.2.23/32", peer="192.1.2.23", src="192.1.3.209")
    assert ns(kernel).routes == {RouteSpec("192.1.2.23/32", "ipsec4", 50, "192.1.3.209", None)}
    assert ns(kernel).rules == peer_rules(4, "192.1.2.23/32")
    # second owner with the same pattern: counted, one set of rules
    await manager.attach("ipsec4", "b")
    await manager.add_address("ipsec4", "b", "192.1.3.209/32")
    await manager.add_route("ipsec4", "b", "192.1.2.23/32", peer="192.1.2.23", src="192.1.3.209")
    await manager.detach("ipsec4", "a")
    assert ns(kernel).rules == peer_rules(4, "192.1.2.23/32") and len(ns(kernel).routes) == 1
    await manager.remove_route("ipsec4", "b", "192.1.2.23/32", peer="192.1.2.23")
    assert not ns(kernel).rules and not ns(kernel).routes


async def test_peer_with_default_destination_has_one_skip_rule(manager, kernel):
    await manager.attach("ipsec5", "a")
    await manager.add_route("ipsec5", "a", "0.0.0.0/0", peer="203.0.113.9")
    assert {(r.dst, r.table) for r in ns(kernel).routes} == {("0.0.0.0/1", 50), ("128.0.0.0/1", 50)}
    assert ns(kernel).rules == peer_rules(5, None)


async def test_peers_share_the_gate_lookup_and_landing(manager, kernel):
    await manager.attach("ipsec12", "a")
    await manager.attach("ipsec13", "b")
    await manager.add_route("ipsec12", "a", "10.12.0.0/16", peer="10.12.0.1")
    await manager.add_route("ipsec12", "a", "192.0.2.12/32", peer="192.0.2.12")
    await manager.add_route("ipsec13", "b", "0.0.0.0/0", peer="203.0.113.13")
    await manager.add_route("ipsec13", "b", "2001:db8:13::/48", peer="2001:db8:13::1")
    four = (peer_rules(12, "10.12.0.0/16") | peer_rules(12, "192.0.2.12/32") | peer_rules(13, None)
            | peer_rules(13, "2001:db8:13::/48", socket.AF_INET6))
    assert ns(kernel).rules == four and len(four) == 3 + 3 + 3 + 1
    # one peer goes: only its skip rule goes with it
    await manager.detach("ipsec13", "b")
    assert ns(kernel).rules == peer_rules(12, "10.12.0.0/16") | peer_rules(12, "192.0.2.12/32")
    await manager.remove_route("ipsec12", "a", "10.12.0.0/16")
    assert ns(kernel).rules == peer_rules(12, "192.0.2.12/32")
    await manager.detach("ipsec12", "a")
    assert not ns(kernel).rules
    assert await manager.reconcile() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}


async def test_second_interface_to_the_same_peer_declares_it_at_another_metric(manager, kernel):
    # ipsec15's ESP goes to the peer ipsec14 routes with peer: a route of its own to that
    # address with peer, at another metric, gives it a skip rule too (no route slot clash)
    for name in ("ipsec14", "ipsec15"):
        await manager.attach(name, "a")
    await manager.add_route("ipsec14", "a", "192.0.2.14/32", peer="192.0.2.14")
    await manager.add_route("ipsec15", "a", "10.15.0.0/16")
    await manager.add_route("ipsec15", "a", "192.0.2.14/32", peer="192.0.2.14", metric=200)
    skips = {(q.dst, q.fwmark) for q in ns(kernel).rules if q.priority == 101}
    assert skips == {("192.0.2.14/32", 14), ("192.0.2.14/32", 15)}
    assert {(r.dev, r.metric) for r in ns(kernel).routes if r.table == 50} == {("ipsec14", None), ("ipsec15", 200)}


async def test_peer_outside_destination_is_invalid(manager):
    await manager.attach("ipsec5", "a")
    with pytest.raises(InvalidArgument, match="not inside destination"):
        await manager.add_route("ipsec5", "a", "10.0.0.0/8", peer="192.0.2.1")


async def test_address_stays_while_other_owners_routes_need_it(manager, kernel):
    await manager.attach("ipsec6", "a")
    await manager.attach("ipsec6", "b")
    await manager.add_address("ipsec6", "a", "192.0.2.6/24")
    await manager.add_address("ipsec6", "a", "2001:db8:6::1/64")
    await manager.add_route("ipsec6", "b", "10.6.0.0/16")
    await manager.add_route("ipsec6", "b", "10.7.0.0/16", src="192.0.2.6")
    # the kernel drops every IPv4 route through ipsec6 with its last IPv4 address, and a
    # route with its source: b's routes keep the address a released (a's IPv6 one goes)
    kernel.calls.clear()
    await manager.detach("ipsec6", "a")
    assert main_routes(kernel) == {("10.6.0.0/16", "ipsec6", 254, None), ("10.7.0.0/16", "ipsec6", 254, "192.0.2.6")}
    assert ns(kernel).addresses["ipsec6"] == {"192.0.2.6/24"}
    assert [c[0] for c in kernel.mutations()] == ["remove_address"]  # the IPv6 one; no route put back
    assert manager.get("ipsec6").addresses == ()  # nobody holds it
    await manager.remove_route("ipsec6", "b", "10.7.0.0/16")
    assert ns(kernel).addresses["ipsec6"] == {"192.0.2.6/24"}  # still the last IPv4 one
    await manager.remove_route("ipsec6", "b", "10.6.0.0/16")
    assert ns(kernel).addresses["ipsec6"] == set() and not main_routes(kernel)
    assert [c[1].cidr for c in kernel.mutations() if c[0] == "remove_address"] == [
        "2001:db8:6::1/64", "192.0.2.6/24"]


async def test_address_swap_keeps_the_routes(manager, kernel):
    await manager.attach("ipsec17", "a")
    await manager.add_address("ipsec17", "a", "192.0.2.17/32")
    await manager.add_route("ipsec17", "a", "10.17.0.0/16")
    await manager.remove_address("ipsec17", "a", "192.0.2.17/32")  # kept: the route needs an IPv4 address
    kernel.calls.clear()
    await manager.add_address("ipsec17", "a", "192.0.2.18/32")  # its successor: the old one goes after it
    assert [c[0] for c in kernel.mutations()] == ["add_address", "remove_address"]
    assert ns(kernel).addresses["ipsec17"] == {"192.0.2.18/32"}
    assert main_routes(kernel) == {("10.17.0.0/16", "ipsec17", 254, None)}
    assert not manager.desired.retired


async def test_kept_address_survives_a_restart(kernel, settings):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec16", "a")
    await m1.attach("ipsec16", "b")
    await m1.add_address("ipsec16", "a", "192.0.2.16/32")
    await m1.add_route("ipsec16", "b", "10.16.0.0/16")
    await m1.detach("ipsec16", "a")
    await m1.stop()
    m2 = Manager(kernel, settings)
    await m2.start()
    assert ns(kernel).addresses["ipsec16"] == {"192.0.2.16/32"}
    await m2.detach("ipsec16", "b")
    assert "ipsec16" not in ns(kernel).links
    assert not m2.desired.retired
    await m2.stop()


async def test_interfaces_sharing_a_mark_keep_each_others_peer_rule(kernel, tmp_path):
    m = Manager(kernel, Settings(state_dir=str(tmp_path), name_policy=NamePolicy(any_name=True)))
    await m.start()
    await m.create_interface("ipsec81", external=True)
    await m.create_interface("vpn81", 81)  # the same if_id, so the same output mark
    for name in ("ipsec81", "vpn81"):
        await m.attach(name, "a")
    await m.add_route("vpn81", "a", "10.81.0.0/16", peer="10.81.0.1")
    rules = set(ns(kernel).rules)
    assert rules == peer_rules(81, "10.81.0.0/16")
    await m.add_route("ipsec81", "a", "10.82.0.0/16", peer="10.82.0.1")
    await m.detach("ipsec81", "a")  # ipsec81's sync must not take vpn81's rule (same mark)
    assert rules <= set(ns(kernel).rules)
    assert await m.reconcile() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}
    await m.stop()
