"""What a call changed, counted (core/changes.py, core/holdings.py), is what comparing the whole
interface before and after says; the counts stay those of a fresh count; a restore undoes all.

Any sequence of owner changes, on an interface that keeps its counts (``BIG`` 1) or counts
them for the call only (``BIG`` 1000), in calls of one or more changes each.
"""

from __future__ import annotations

from unittest import mock

from hypothesis import given, settings as hsettings, strategies as st

from xfrmid.core import desired_state as desired_module
from xfrmid.core.changes import Change, change_of
from xfrmid.core.desired import DesiredInterface
from xfrmid.core.desired_state import DesiredState
from xfrmid.core.holdings import Holdings
from xfrmid.core.routes_policy import route_request
from xfrmid.core.sorted_items import SortedItems, sorted_items, with_item, without_item
from xfrmid.core.state import CoreState
from xfrmid.settings import Settings

KEY = (None, "ipsec5")
OWNERS = [f"o{i}" for i in range(6)]
ADDRESSES = ["10.0.0.1/32", "10.0.0.2/32", "fd00::1/128", "10.0.0.3/24"]
ROUTES = [route_request("10.1.0.0/16"), route_request("10.1.0.0/16", metric=5), route_request("0.0.0.0/0"),
          route_request("0.0.0.0/1"), route_request("10.2.0.0/16", peer="10.2.0.1"),
          route_request("10.3.0.0/16", src="10.0.0.1"), route_request("fd01::/64"),
          route_request("10.1.0.0/16", table=254)]

OP = st.tuples(st.sampled_from(["attach", "detach", "add_address", "remove_address", "add_route", "remove_route"]),
               st.sampled_from(OWNERS), st.integers(0, len(ROUTES) - 1))
CALLS = st.lists(st.tuples(st.lists(OP, min_size=1, max_size=4), st.booleans()), min_size=1, max_size=12)


def _apply(state: DesiredState, op: tuple) -> None:
    kind, owner, i = op
    iface = state.get(KEY)
    if kind == "attach":
        state.attach(KEY, owner, None)
    elif owner not in iface.owners:
        return
    elif kind == "detach":
        state.detach(KEY, owner)
    elif kind == "add_address":
        state.add_address(KEY, owner, ADDRESSES[i % len(ADDRESSES)], on_link=False)
    elif kind == "remove_address":
        state.remove_address(KEY, owner, ADDRESSES[i % len(ADDRESSES)])
    elif kind == "add_route":
        state.add_route(KEY, owner, ROUTES[i])
    else:
        state.remove_route(KEY, owner, ROUTES[i])


def _whole(core: CoreState, before: DesiredInterface) -> tuple:
    after = core.desired.get(KEY)
    old_routes, old_rules = before.kernel_routes(core.mask, core.peer)
    new_routes, new_rules = after.kernel_routes(core.mask, core.peer)
    old_addresses, new_addresses = before.addresses(), after.addresses()
    return (new_addresses - old_addresses, old_addresses - new_addresses, new_routes - old_routes,
            old_routes - new_routes, new_rules - old_rules, old_rules - new_rules)


def _counted(change: Change) -> tuple:
    return (change.addresses_added, change.addresses_removed, change.routes_added, change.routes_removed,
            change.rules_added, change.rules_removed)


@hsettings(max_examples=150, deadline=None)
@given(calls=CALLS, big=st.sampled_from([1, 1000]))
def test_counted_changes_are_the_whole_comparison(calls, big):
    with mock.patch.object(desired_module, "BIG", big):
        core = CoreState(Settings())
        core.desired.put(DesiredInterface(netns=None, name="ipsec5", if_id=5, created_addresses=frozenset(
            {"10.0.0.2/32"})))
        for ops, keep in calls:
            before = core.desired.get(KEY).copy()
            json_before = core.desired.to_json()
            saved = core.savepoint(KEY)
            for op in ops:
                _apply(core.desired, op)
            change = change_of(core, saved)
            assert not change.whole
            assert _counted(change) == tuple(map(frozenset, _whole(core, before)))
            assert change.owners <= {op[1] for op in ops}
            if keep:
                core.desired.release(saved)
            else:
                core.desired.restore(saved)
                assert core.desired.to_json() == json_before
            iface = core.desired.get(KEY)
            assert len(iface.owners) < big or iface.holdings is not None
            if iface.holdings is not None:
                fresh = Holdings(iface.owners)
                assert iface.holdings.addresses == fresh.addresses and iface.holdings.requests == fresh.requests
                assert iface.holdings.owners == fresh.owners and iface.holdings.address_list == fresh.address_list
                mine = iface.holdings.expanded(iface.name, iface.if_id, core.mask, core.peer)
                theirs = fresh.expanded(iface.name, iface.if_id, core.mask, core.peer)
                assert (mine.routes, mine.rules, mine.listed) == (theirs.routes, theirs.rules, theirs.listed)
                assert mine.prefixes == theirs.prefixes and mine.sources == theirs.sources
            owners, addresses, routes = iface.listing(core.mask, core.peer)
            specs = iface.kernel_routes(core.mask, core.peer)[0]
            assert owners == tuple(sorted(iface.owners)) and addresses == tuple(sorted(iface.addresses()))
            assert routes == tuple(sorted((r.dst, r.table, r.src or "") for r in specs))


@hsettings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400))
def test_sorted_items_behave_as_a_sorted_tuple(steps):
    seq, model = (), []
    for add, item in steps:
        if add:
            seq = with_item(seq, item)
            model.append(item)
        else:
            seq = without_item(seq, item)
            if item in model:
                model.remove(item)
        model.sort()
        assert seq == tuple(model) and tuple(seq) == tuple(model) and len(seq) == len(model)
        assert isinstance(seq, SortedItems) == (len(model) > 64)
        assert all((x in seq) == (x in model) for x in (item, item + 1, -1))
        if model:
            assert seq[0] == model[0] and seq[-1] == model[-1] and seq[len(model) // 2] == model[len(model) // 2]
    assert sorted_items(model) == tuple(model)
