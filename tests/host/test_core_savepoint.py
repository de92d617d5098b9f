"""The save point of a change (DesiredState.savepoint): DesiredInterface.copy() must be a copy no
mutation of the original reaches, with every field, as copy.deepcopy was."""

from __future__ import annotations

import copy
from dataclasses import fields

from xfrmid.core.desired import DesiredInterface, Owner
from xfrmid.core.routes_policy import PeerPolicy, route_request

MUTABLE = (set, dict, list)


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


def test_copy_shares_no_mutable_container():
    iface = _full()
    twin = iface.copy()
    for f in fields(DesiredInterface):
        value = getattr(iface, f.name)
        if isinstance(value, MUTABLE):
            assert getattr(twin, f.name) is not value, f.name
    for name, owner in iface.owners.items():
        other = twin.owners[name]
        assert other is not owner
        for f in fields(Owner):
            if isinstance(getattr(owner, f.name), MUTABLE):
                assert getattr(other, f.name) is not getattr(owner, f.name), f.name


def test_mutating_the_original_leaves_the_copy():
    iface = _full()
    twin = iface.copy()
    before = twin.to_json()
    iface.owners["a"].addresses.add("10.9.9.9/32")
    iface.owners["a"].routes.clear()
    iface.owners["a"].caller = None
    iface.owners["c"] = Owner("c")
    for name in ("created_addresses", "static_addresses", "preexisting"):
        value = getattr(iface, name)
        if isinstance(value, set):
            value.add("10.8.8.8/32")  # changed in place
        else:
            setattr(iface, name, value | {"10.8.8.8/32"})  # immutable: replaced
    iface.linger_until = None
    iface.owned = True
    assert twin.to_json() == before
    assert twin.static_addresses == {"10.0.0.3/24"} and twin.preexisting == {"10.0.0.4/24"}


def test_restore_undoes_any_change_of_the_interface():
    from xfrmid.core.desired import DesiredState

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
