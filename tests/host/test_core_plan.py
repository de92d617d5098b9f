"""The pure parts of the core: route expansion, the reconcile plan, the desired-state model."""

from __future__ import annotations

from dataclasses import replace

import socket

import pytest

from xfrmid.core.desired import DesiredInterface, Owner
from xfrmid.core.desired_state import DesiredState
from xfrmid.core.plan import (KernelView, PlanInput, Scope, addresses_to_keep, plan_netns, settle_retired,
                              summarise)
from xfrmid.core.routes_policy import PeerPolicy, RouteRequest, expand, is_shared, route_request, split_default
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


POLICY = PeerPolicy(table=50, priority=100)


def shared(family=socket.AF_INET, table=50, mask=MASK):
    return (
        RuleSpec(priority=100, table=0, family=family, fwmark=0, fwmask=mask, action="goto", goto=102),
        RuleSpec(priority=102, table=table, family=family),
        RuleSpec(priority=103, table=0, family=family, action="nop"),
    )


def test_expand_peer_pattern():
    req = route_request("192.1.2.23/32", peer="192.1.2.23", src="192.1.3.209")
    routes, rules = expand(req, "ipsec0", 16384, MASK, POLICY)
    assert routes == (RouteSpec("192.1.2.23/32", "ipsec0", 50, "192.1.3.209", None),)
    skip = RuleSpec(priority=101, table=0, family=socket.AF_INET, dst="192.1.2.23/32", fwmark=16384,
                    fwmask=MASK, action="goto", goto=103)
    assert rules == (skip, *shared())
    assert [is_shared(q) for q in rules] == [False, True, True, True]


def test_expand_peer_v6_custom_table_and_mask():
    req = route_request("2001:db8::/32", peer="2001:db8::1", table=77)
    routes, rules = expand(req, "ipsec1", 1, 0xFF, POLICY)
    assert routes[0].table == 77
    assert rules == (RuleSpec(priority=101, table=0, family=socket.AF_INET6, dst="2001:db8::/32", fwmark=1,
                              fwmask=0xFF, action="goto", goto=103), *shared(socket.AF_INET6, 77, 0xFF))


def test_expand_full_tunnel_has_one_skip_rule_without_destination():
    routes, rules = expand(route_request("::/0", peer="2001:db8::9"), "ipsec2", 2, MASK, POLICY)
    assert [r.dst for r in routes] == ["::/1", "8000::/1"]
    assert rules[0].dst is None and rules[0].fwmark == 2 and rules[1:] == shared(socket.AF_INET6)


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
    # the jumps (landing place first) before the routes; the lookup last
    assert [(a.op, a.rule and a.rule.action) for a in actions] == [
        ("add_rule", "nop"), ("add_rule", "goto"), ("add_rule", "goto"), ("create_link", None),
        ("add_address", None), ("add_route", None), ("add_route", None), ("add_rule", "lookup")]
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
    assert ops(actions) == [("delete_link", "ipsec7"), ("remove_rule", None)]
    assert summarise(actions)["removed"] == 2


def test_adopt_identical_foreign_link():
    d = iface("ipsec3", 3)  # e.g. configured: xfrmid would create it, but it exists
    actions = plan([d], view([link("ipsec3", 3, owned=False, mtu=1300)]))
    assert ops(actions) == [("adopt", "ipsec3")] and actions[0].owned is False
    assert summarise(actions)["adopted"] == 1


def test_adopted_link_deleted_by_its_maker_is_made_again_as_ours():
    """pluto 4 deletes the device it made while another owner still holds it in xfrmid."""
    d = iface("ipsec3", 3, owned=False, owners={"keeper": ((), ())})
    actions = plan([d], view())
    assert ops(actions) == [("adopt", "ipsec3"), ("create_link", "ipsec3")]
    assert actions[0].owned is True and actions[0].category is None


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


def peer_view(*ifaces, extra_rules=()):
    """The kernel as the plan would leave it for ``ifaces`` (links up, routes and rules in)."""
    links, routes, rules = [], set(), set(extra_rules)
    for d in ifaces:
        links.append(link(d.name, d.if_id))
        r, q = d.kernel_routes(MASK, PeerPolicy())
        routes |= r
        rules |= q
    return view(links, routes=routes, rules=rules)


def test_peer_removed_its_route_before_its_skip_rule_shared_rules_stay():
    a = iface("ipsec1", 1, owners={"x": ([], [RouteRequest("10.1.0.0/16", peer="10.1.0.1")])})
    b = iface("ipsec2", 2, owners={"y": ([], [RouteRequest("0.0.0.0/0", peer="203.0.113.2")])})
    k = peer_view(a, b)
    b.set_owner("y", replace(b.owners["y"], routes=frozenset()))
    actions = plan([a, b], k)
    assert [(a.op, a.route and a.route.dst, a.rule and a.rule.fwmark) for a in actions] == [
        ("remove_route", "0.0.0.0/1", None), ("remove_route", "128.0.0.0/1", None), ("remove_rule", None, 2)]


def test_last_peer_goes_lookup_first_landing_last():
    a = iface("ipsec1", 1, owners={"x": ([], [RouteRequest("10.1.0.0/16", peer="10.1.0.1")])})
    k = peer_view(a)
    a.set_owner("x", replace(a.owners["x"], routes=frozenset()))
    actions = plan([a], k)
    assert [(a.op, a.rule.action if a.rule else None) for a in actions] == [
        ("remove_route", None), ("remove_rule", "goto"), ("remove_rule", "goto"), ("remove_rule", "nop"),
        ("remove_rule", "lookup")]
    # the lookup rule goes last, but after the routes: the table it looks up is empty by then


def test_old_shape_rules_are_replaced_without_a_gap():
    """A restart over the inverted per-peer rules of earlier versions: the new rules go in
    first, the old ones come out last."""
    a = iface("ipsec1", 1, owners={"x": ([], [RouteRequest("10.1.0.0/16", peer="10.1.0.1")])})
    b = iface("ipsec2", 2, owners={"y": ([], [RouteRequest("0.0.0.0/0", peer="203.0.113.2")])})
    old = [RuleSpec(priority=100, table=50, family=socket.AF_INET, dst="10.1.0.0/16", fwmark=1, fwmask=MASK,
                    invert=True),
           RuleSpec(priority=100, table=50, family=socket.AF_INET, fwmark=2, fwmask=MASK, invert=True)]
    full = peer_view(a, b)
    k = view(list(full.links.values()), routes=full.routes, rules=old)
    actions = plan([a, b], k)
    assert {q.rule for q in actions if q.op == "add_rule"} == set(full.rules)
    assert [q.op for q in actions][-2:] == ["remove_rule", "remove_rule"]
    assert {q.rule for q in actions[-2:]} == set(old)
    assert summarise(actions)["removed"] == 2
    # and the next plan finds nothing to do
    assert plan([a, b], full) == []


def test_scoped_plan_keeps_shared_rules_others_need():
    a = iface("ipsec1", 1, owners={"x": ([], [RouteRequest("10.1.0.0/16", peer="10.1.0.1")])})
    b = iface("ipsec2", 2, owners={"y": ([], [RouteRequest("10.2.0.0/16", peer="10.2.0.1")])})
    k = peer_view(a, b)
    b.set_owner("y", replace(b.owners["y"], routes=frozenset()))
    scope = Scope(frozenset({"ipsec2"}), frozenset({2}))
    still = frozenset(a.kernel_routes(MASK, PeerPolicy())[1]) - {q for q in k.rules if q.fwmark == 1}
    kept = plan([b], k, scope=scope, shared=still)
    assert [(q.op, q.rule and q.rule.fwmark) for q in kept] == [("remove_route", None), ("remove_rule", 2)]
    unknown = plan([b], k, scope=scope)  # without the namespace's count: no shared rule goes
    assert [q.op for q in unknown] == [q.op for q in kept]
    # the last peer route of the namespace: the shared ones go too
    last = plan([b], peer_view(iface("ipsec2", 2, owners={"y": ([], [RouteRequest("10.2.0.0/16", peer="10.2.0.1")])})),
                scope=scope, shared=frozenset())
    assert sorted(q.rule.action for q in last if q.op == "remove_rule") == ["goto", "goto", "lookup", "nop"]


@pytest.mark.parametrize("going, staying, routes, kept", [
    # the last IPv4 address while IPv4 routes go through the interface
    ({"192.0.2.1/24"}, set(), [RouteSpec("10.0.0.0/8", "ipsec1")], {"192.0.2.1/24"}),
    ({"192.0.2.2/24", "192.0.2.1/24"}, set(), [RouteSpec("10.0.0.0/8", "ipsec1")], {"192.0.2.1/24"}),
    # another IPv4 address stays (foreign, or still held): nothing to keep
    ({"192.0.2.1/24"}, {"192.0.2.9/24"}, [RouteSpec("10.0.0.0/8", "ipsec1")], set()),
    # IPv6 routes do not go with addresses; IPv4 addresses are not needed by them
    ({"192.0.2.1/24", "2001:db8::1/64"}, set(), [RouteSpec("2001:db8:1::/48", "ipsec1")], set()),
    # a route's source stays, in either family, whatever else stays
    ({"2001:db8::1/64"}, {"2001:db8::2/64"}, [RouteSpec("2001:db8:1::/48", "ipsec1", src="2001:db8::1")],
     {"2001:db8::1/64"}),
    ({"192.0.2.1/24", "192.0.2.3/24"}, {"192.0.2.9/24"},
     [RouteSpec("10.0.0.0/8", "ipsec1", src="192.0.2.3")], {"192.0.2.3/24"}),
    # no routes: everything goes
    ({"192.0.2.1/24"}, set(), [], set()),
])
def test_addresses_to_keep(going, staying, routes, kept):
    assert addresses_to_keep(going, staying, routes) == kept


def test_plan_keeps_the_address_routes_need():
    d = iface("ipsec1", 1, owners={"b": ([], [RouteRequest("10.2.0.0/16")])})
    k = view([link("ipsec1", 1)], {"ipsec1": frozenset({"192.0.2.1/32", "2001:db8::1/128"})},
             [RouteSpec("10.2.0.0/16", "ipsec1")])
    actions = plan([d], k, retired={"ipsec1": {"192.0.2.1/32", "2001:db8::1/128"}})
    assert [(a.op, a.address.cidr) for a in actions] == [
        ("keep_address", "192.0.2.1/32"), ("remove_address", "2001:db8::1/128")]
    retired = {(None, "ipsec1"): {"192.0.2.1/32", "2001:db8::1/128"}, (None, "ipsec2"): {"192.0.2.2/32"}}
    assert settle_retired(retired, None, {"ipsec1"}, actions) == {(None, "ipsec1")}
    assert retired == {(None, "ipsec1"): {"192.0.2.1/32"}, (None, "ipsec2"): {"192.0.2.2/32"}}
    assert summarise(actions)["removed"] == 1


def test_plan_removes_a_replaced_address_after_its_successor_is_in():
    d = iface("ipsec1", 1, owners={"b": (["192.0.2.9/32"], [RouteRequest("10.2.0.0/16")])})
    k = view([link("ipsec1", 1)], {"ipsec1": frozenset({"192.0.2.1/32"})}, [RouteSpec("10.2.0.0/16", "ipsec1")])
    actions = plan([d], k, retired={"ipsec1": {"192.0.2.1/32"}})
    assert [(a.op, a.address.cidr) for a in actions] == [
        ("add_address", "192.0.2.9/32"), ("remove_address", "192.0.2.1/32")]  # never without an IPv4 address


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
    d.set_owner("a", replace(d.owners["a"], caller=":1.5"))
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
