"""The save point of a change (DesiredState.savepoint): O(1) to take, the owners a change replaces
kept as they go; DesiredInterface.copy() is a copy no change of the original reaches."""

from __future__ import annotations

import copy
from dataclasses import FrozenInstanceError, fields, replace

import pytest

from xfrmid.core.desired import DesiredInterface, Owner
from xfrmid.core.routes_policy import PeerPolicy, route_request


def _full() -> DesiredInterface:
    iface = DesiredInterface(
        netns="blue", name="ipsec7", if_id=7, link="eth0", mtu=1400, external=True, owned=False,
        explicit=True, static=True,
        owners={"a": Owner("a", ":1.5", {"10.0.0.1/24"}, {route_request("10.1.0.0/16")}),
                "b": Owner("b", None, set(), set())},
        created_addresses={"10.0.0.2/24"}, static_addresses={"10.0.0.3/24"},
        preexisting={"10.0.0.4/24"}, linger_until=123.5,
    )
    iface.kernel_routes(0xFFFFFFFF, PeerPolicy())  # fills the _expanded cache
    return iface


def test_copy_has_every_field_and_equals_deepcopy():
    iface = _full()
    twin, deep = iface.copy(), copy.deepcopy(iface)
    for f in fields(DesiredInterface):
        assert getattr(twin, f.name) == getattr(deep, f.name) == getattr(iface, f.name), f.name
    assert twin.to_json() == iface.to_json()


def test_owners_are_values():
    owner = _full().owners["a"]
    with pytest.raises(FrozenInstanceError):
        owner.caller = None  # type: ignore[misc]
    assert isinstance(owner.addresses, frozenset) and isinstance(owner.routes, frozenset)


def test_changing_the_original_leaves_the_copy():
    iface = _full()
    twin = iface.copy()
    assert twin.owners is not iface.owners
    before = twin.to_json()
    a = iface.owners["a"]
    iface.set_owner("a", replace(a, caller=None, addresses=a.addresses | {"10.9.9.9/32"}, routes=frozenset()))
    iface.set_owner("c", Owner("c"))
    iface.set_owner("b", None)
    for name in ("created_addresses", "static_addresses", "preexisting"):
        setattr(iface, name, getattr(iface, name) | {"10.8.8.8/32"})  # immutable: replaced
    iface.linger_until = None
    iface.owned = True
    assert twin.to_json() == before
    assert twin.static_addresses == {"10.0.0.3/24"} and twin.preexisting == {"10.0.0.4/24"}


def test_restore_undoes_any_change_of_the_interface():
    from xfrmid.core.desired_state import DesiredState

    state = DesiredState()
    state.put(_full())
    key = ("blue", "ipsec7")
    state.retired[key] = {"10.0.0.9/24"}
    before = state.to_json()
    saved = state.savepoint(key)
    state.detach(key, "a")  # retires a's address
    state.get(key).linger_until = None
    state.drop(key)
    assert state.to_json() != before
    state.restore(saved)
    assert state.to_json() == before and state.with_if_id("blue", 7)[0] is state.get(key)
    fresh = state.savepoint(("blue", "ipsec8"))  # not there yet: restoring removes it again
    state.put(DesiredInterface(netns="blue", name="ipsec8", if_id=8))
    state.restore(fresh)
    assert state.get(("blue", "ipsec8")) is None and state.to_json() == before


def test_a_save_point_keeps_only_what_the_change_replaced():
    from xfrmid.core.desired_state import DesiredState

    state = DesiredState()
    state.put(_full())
    key = ("blue", "ipsec7")
    a = state.get(key).owners["a"]
    saved = state.savepoint(key)
    state.attach(key, "c", None)
    state.add_address(key, "c", "10.5.0.1/32", on_link=False)
    state.detach(key, "a")
    assert saved.owners == {"c": None, "a": a}  # the first value each had, nothing else copied
    state.release(saved)
    state.attach(key, "d", None)  # closed: no longer recorded
    assert saved.owners == {"c": None, "a": a} and state.get(key)._undo is None
