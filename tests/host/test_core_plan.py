"""The pure parts of the core: route expansion, the reconcile plan, the desired-state model."""

from __future__ import annotations

import socket

import pytest

from xfrmid.core.desired import DesiredInterface, DesiredState, Owner
from xfrmid.core.plan import KernelView, PlanInput, Scope, plan_netns, summarise
from xfrmid.core.routes_policy import PeerPolicy, RouteRequest, expand, route_request, split_default
from xfrmid.errors import InvalidArgument
from xfrmid.kernel.objects import LinkState, RouteSpec, RuleSpec

MASK = 0xFFFFFFFF


def link(name, if_id, *, owned=True, mtu=1500, up=True, external=False, linkdev=None):
    return LinkState(name=name, if_id=if_id, ifindex=if_id + 100, link=linkdev, mtu=mtu, up=up,
                     operstate="UNKNOWN", external=external, owned=owned)


def view(links=(), addresses=None, routes=(), rules=()):
    return KernelView(links={l.name: l for l in links}, addresses=addresses or {},
                      routes=frozenset(routes), rules=frozenset(rules))


def iface(name, if_id, **kw):
    owners = kw.pop("owners", {})
    d = DesiredInterface(netns=None, name=name, if_id=if_id, **kw)
    for owner, (addresses, routes) in owners.items():
        d.owners[owner] = Owner(owner, addresses=set(addresses), routes=set(routes))
    return d


def plan(desired, kview, **kw):
    return plan_netns(PlanInput(netns=None, desired=desired, view=kview, mask=MASK, **kw))


def ops(actions):
    return [(a.op, a.ifname) for a in actions]


# --- route expansion -------------------------------------------------------------


def test_split_default_both_families():
    assert split_default("0.0.0.0/0") == ("0.0.0.0/1", "128.0.0.0/1")
    assert split_default("::/0") == ("::/1", "8000::/1")
    assert split_default("10.0.0.0/8") == ("10.0.0.0/8",)


def test_expand_peer_pattern_matches_design_notes():
    req = route_request("192.1.2.23/32", peer="192.1.2.23", src="192.1.3.209")
    routes, rules = expand(req, "ipsec0", 16384, MASK, PeerPolicy(table=50, priority=100))
    assert routes == (RouteSpec("192.1.2.23/32", "ipsec0", 50, "192.1.3.209", None),)
    assert rules == (RuleSpec(priority=100, table=50, family=socket.AF_INET, dst="192.1.2.23/32",
                              fwmark=16384, fwmask=MASK, invert=True),)


def test_expand_peer_v6_custom_table():
    req = route_request("2001:db8::/32", peer="2001:db8::1", table=77)
    routes, rules = expand(req, "ipsec1", 1, 0xFF, PeerPolicy(table=50, priority=100))
    assert routes[0].table == 77 and rules[0].table == 77 and rules[0].family == socket.AF_INET6


@pytest.mark.parametrize("kwargs, message", [
    ({"peer": "10.0.0.1"}, "not inside"),
    ({"peer": "2001:db8::1"}, "not inside"),
    ({"table": 0}, "unspecified"),
    ({"metric": -1}, "metric"),
    ({"src": "garbage"}, "'garbage'"),
])
def test_route_request_errors(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        route_request("192.0.2.0/24", **kwargs)


def test_remove_pattern_wildcards():
    held = RouteRequest("10.0.0.0/8", table=7, metric=5)
    assert held.matches(RouteRequest("10.0.0.0/8"))
    assert held.matches(RouteRequest("10.0.0.0/8", table=7))
    assert not held.matches(RouteRequest("10.0.0.0/8", table=8))


# --- plans ---------------------------------------------------------------------------


def test_nothing_to_do_when_identical():
    d = iface("ipsec1", 1, owners={"a": (["192.0.2.1/24"], [RouteRequest("10.0.0.0/8")])})
    k = view([link("ipsec1", 1)], {"ipsec1": frozenset({"192.0.2.1/24"})},
             [RouteSpec("10.0.0.0/8", "ipsec1")])
    assert plan([d], k) == []


def test_missing_link_is_created_with_everything():
    d = iface("ipsec1", 1, owners={"a": (["192.0.2.1/24"], [RouteRequest("0.0.0.0/0", peer="1.2.3.4")])})
    actions = plan([d], view())
    assert [a.op for a in actions] == ["create_link", "add_address", "add_route", "add_route", "add_rule"]
    assert summarise(actions) == {"created": 1, "repaired": 0, "adopted": 0, "removed": 0}


def test_repairs_mtu_and_up_in_place_recreates_on_if_id():
    a = iface("ipsec1", 1, mtu=1400)
    b = iface("ipsec2", 2, owners={"x": ([], [RouteRequest("10.2.0.0/16")])})
    k = view([link("ipsec1", 1, mtu=1500, up=False), link("ipsec2", 9)],
             routes=[RouteSpec("10.2.0.0/16", "ipsec2")])
    actions = plan([a, b], k)
    assert ops(actions) == [("recreate_link", "ipsec2"), ("change_link", "ipsec1"), ("add_route", "ipsec2")]
    change = actions[1]
    assert (change.mtu, change.up) == (1400, True)
    assert summarise(actions)["repaired"] == 2


def test_foreign_objects_are_never_touched():
    foreign = link("ipsec9", 9, owned=False)
    k = view([foreign], {"ipsec9": frozenset({"192.0.2.9/24"})})
    assert plan([], k) == []
    # a desired interface whose name is taken by a foreign link with another if_id: conflict only
    actions = plan([iface("ipsec9", 3)], k)
    assert ops(actions) == [("conflict", "ipsec9")]


def test_leftovers_with_marker_are_removed():
    rule = RuleSpec(priority=100, table=50, family=socket.AF_INET, dst="10.0.0.0/8", fwmark=7,
                    fwmask=MASK, invert=True)
    k = view([link("ipsec7", 7)], routes=[RouteSpec("10.0.0.0/8", "ipsec7", 50)], rules=[rule])
    actions = plan([], k)
    assert ops(actions) == [("remove_rule", None), ("delete_link", "ipsec7")]
    assert summarise(actions)["removed"] == 2


def test_adopt_identical_foreign_link():
    d = iface("ipsec3", 3)  # e.g. configured: xfrmid would create it, but it exists
    actions = plan([d], view([link("ipsec3", 3, owned=False, mtu=1300)]))
    assert ops(actions) == [("adopt", "ipsec3")] and actions[0].owned is False
    assert summarise(actions)["adopted"] == 1


def test_create_cut_short_is_finished_not_adopted():
    # in xfrmid's group without its alias, down: the first of a create's two requests only
    half = LinkState(name="ipsec3", if_id=3, ifindex=103, link=None, mtu=1500, up=False, operstate="DOWN",
                     external=False, owned=False, unmarked=True)
    d = iface("ipsec3", 3, owners={"a": (["192.0.2.1/24"], [])})
    actions = plan([d], view([half]))
    assert ops(actions) == [("change_link", "ipsec3"), ("add_address", "ipsec3")]
    assert actions[0].mark and actions[0].up is True and actions[0].category == "repaired"
    # the state file does not say it is ours (adopted before): still someone else's
    d.owned = False
    assert ops(plan([d], view([half]))) == [("add_address", "ipsec3")]
    # another if_id: not ours either way
    assert ops(plan([iface("ipsec3", 4)], view([half]))) == [("conflict", "ipsec3")]


def test_retired_addresses_removed_foreign_kept():
    d = iface("ipsec1", 1, owners={"a": (["192.0.2.1/24"], [])})
    k = view([link("ipsec1", 1)], {"ipsec1": frozenset({"192.0.2.1/24", "192.0.2.2/24", "198.51.100.1/24"})})
    actions = plan([d], k, retired={"ipsec1": {"192.0.2.2/24"}})
    assert [(a.op, a.address.cidr) for a in actions] == [("remove_address", "192.0.2.2/24")]


def test_scope_limits_plan():
    k = view([link("ipsec1", 1), link("ipsec2", 2)], routes=[RouteSpec("10.1.0.0/16", "ipsec1")])
    actions = plan([iface("ipsec2", 2)], k, scope=Scope(frozenset({"ipsec2"}), frozenset({2})))
    assert actions == []  # ipsec1 is a leftover, but not this call's business


def test_if_id_clash_with_other_link_is_conflict():
    actions = plan([iface("ipsec5", 5)], view([link("vpn", 5, owned=False)]))
    assert ops(actions) == [("conflict", "ipsec5")]


def test_metric_defaults_compare_equal():
    d = iface("ipsec1", 1, owners={"a": ([], [RouteRequest("2001:db8::/32", metric=1024)])})
    k = view([link("ipsec1", 1)], routes=[RouteSpec("2001:db8::/32", "ipsec1")])
    assert plan([d], k) == []


# --- desired state -------------------------------------------------------------------


def test_desired_json_round_trip():
    state = DesiredState()
    d = iface("ipsec1", 1, explicit=True, mtu=1400,
              owners={"a": (["192.0.2.1/24"], [RouteRequest("10.0.0.0/8", peer="10.0.0.1", metric=3)])})
    d.owners["a"].caller = ":1.5"
    state.put(d)
    state.put(DesiredInterface(netns="blue", name="ipsec2", if_id=2, owned=False))
    state.retired[(None, "ipsec1")] = {"192.0.2.9/24"}
    again = DesiredState.from_json(state.to_json())
    assert again.interfaces == state.interfaces
    assert again.retired == state.retired and again.namespaces == {None, "blue"}


def test_static_only_interfaces_are_not_persisted():
    state = DesiredState()
    state.put(iface("ipsec1", 1, static=True, static_addresses={"192.0.2.1/24"}))
    assert state.to_json()["interfaces"] == []
