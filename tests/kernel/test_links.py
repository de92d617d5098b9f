"""XFRM links on a real kernel: create, adopt, change, delete, offload, external, netns."""

from __future__ import annotations

import pytest

from xfrmid.errors import Conflict, InvalidArgument, NotFound
from xfrmid.kernel.objects import XFRMID_ALIAS, XFRMID_LINK_GROUP, LinkSpec

from .conftest import ip_run, link_exists, link_json


def info_data(link: dict) -> dict:
    return link.get("linkinfo", {}).get("info_data", {})


def if_id_of(link: dict) -> int:
    value = info_data(link)["if_id"]
    return int(value, 0) if isinstance(value, str) else int(value)


async def test_create_owned_link_with_markers(kernel, netns):
    state = await kernel.create_link(netns, LinkSpec(name="ipsec1", if_id=1))
    assert (state.name, state.if_id, state.owned, state.up, state.external) == ("ipsec1", 1, True, True, False)
    assert state.link is None and state.ifindex > 0
    shown = link_json("ipsec1", netns)
    assert shown["linkinfo"]["info_kind"] == "xfrm"
    assert if_id_of(shown) == 1
    assert "UP" in shown["flags"]
    assert shown["group"] in (str(XFRMID_LINK_GROUP), "xfrmid")
    assert shown["ifalias"] == XFRMID_ALIAS


async def test_create_is_idempotent(kernel, netns):
    first = await kernel.create_link(netns, LinkSpec(name="ipsec2", if_id=2))
    again = await kernel.create_link(netns, LinkSpec(name="ipsec2", if_id=2))
    assert again == first
    assert [s.name for s in await kernel.xfrm_links(netns)] == ["ipsec2"]


async def test_create_down_with_mtu(kernel, netns):
    state = await kernel.create_link(netns, LinkSpec(name="ipsec3", if_id=3, mtu=1400, up=False))
    assert state.mtu == 1400 and state.up is False
    shown = link_json("ipsec3", netns)
    assert shown["mtu"] == 1400 and "UP" not in shown["flags"]


async def test_create_identical_applies_mtu(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec4", if_id=4))
    state = await kernel.create_link(netns, LinkSpec(name="ipsec4", if_id=4, mtu=1300))
    assert state.mtu == 1300 and link_json("ipsec4", netns)["mtu"] == 1300


async def test_ipsec0_uses_if_id_16384(kernel, netns):
    from xfrmid.naming import resolve

    ident = resolve("ipsec0")
    state = await kernel.create_link(netns, LinkSpec(name=ident.name, if_id=ident.if_id))
    assert state.if_id == 16384 and if_id_of(link_json("ipsec0", netns)) == 16384


async def test_change_mtu(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec5", if_id=5))
    state = await kernel.change_link(netns, "ipsec5", mtu=1280)
    assert state.mtu == 1280 and link_json("ipsec5", netns)["mtu"] == 1280


async def test_change_down_and_up(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec6", if_id=6))
    down = await kernel.change_link(netns, "ipsec6", up=False)
    assert down.up is False and "UP" not in link_json("ipsec6", netns)["flags"]
    up = await kernel.change_link(netns, "ipsec6", up=True)
    assert up.up is True and "UP" in link_json("ipsec6", netns)["flags"]


async def test_change_without_changes_returns_state(kernel, netns):
    created = await kernel.create_link(netns, LinkSpec(name="ipsec7", if_id=7))
    assert await kernel.change_link(netns, "ipsec7") == created


async def test_change_rejects_bad_mtu(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec8", if_id=8))
    with pytest.raises(InvalidArgument, match="MTU 20 "):
        await kernel.change_link(netns, "ipsec8", mtu=20)
    with pytest.raises(InvalidArgument, match="70000"):
        await kernel.create_link(netns, LinkSpec(name="ipsec9", if_id=9, mtu=70000))


async def test_delete_link(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec10", if_id=10))
    await kernel.delete_link(netns, "ipsec10")
    assert not link_exists("ipsec10", netns)
    assert await kernel.xfrm_links(netns) == []


async def test_delete_missing_is_not_found(kernel, netns):
    with pytest.raises(NotFound, match="'ipsec11'"):
        await kernel.delete_link(netns, "ipsec11")


async def test_delete_refuses_other_kinds(kernel, netns):
    ip_run("link", "add", "ipsec12", "type", "veth", "peer", "name", "peer12", netns=netns)
    with pytest.raises(InvalidArgument, match="veth"):
        await kernel.delete_link(netns, "ipsec12")
    with pytest.raises(InvalidArgument, match="not an xfrm interface"):
        await kernel.change_link(netns, "ipsec12", mtu=1400)
    assert link_exists("ipsec12", netns)


async def test_adopt_foreign_link_is_not_owned(kernel, netns):
    ip_run("link", "add", "ipsec13", "type", "xfrm", "if_id", "13", netns=netns)
    (state,) = await kernel.xfrm_links(netns)
    assert (state.name, state.if_id, state.owned) == ("ipsec13", 13, False)
    # asking for the identical interface adopts it as it is
    again = await kernel.create_link(netns, LinkSpec(name="ipsec13", if_id=13, up=False))
    assert again.owned is False and again.ifindex == state.ifindex


async def test_one_marker_is_not_ownership(kernel, netns):
    ip_run("link", "add", "ipsec14", "group", str(XFRMID_LINK_GROUP), "type", "xfrm", "if_id", "14", netns=netns)
    ip_run("link", "add", "ipsec15", "type", "xfrm", "if_id", "15", netns=netns)
    ip_run("link", "set", "ipsec15", "alias", XFRMID_ALIAS, netns=netns)
    states = {s.name: s for s in await kernel.xfrm_links(netns)}
    assert states["ipsec14"].owned is False and states["ipsec15"].owned is False


async def test_listing_shows_only_xfrm_links(kernel, netns):
    ip_run("link", "add", "ipsec16", "type", "veth", "peer", "name", "p16", netns=netns)
    await kernel.create_link(netns, LinkSpec(name="ipsec17", if_id=17))
    await kernel.create_link(netns, LinkSpec(name="ipsec18", if_id=18))
    assert sorted(s.name for s in await kernel.xfrm_links(netns)) == ["ipsec17", "ipsec18"]


async def test_offload_link_on_veth(kernel, netns):
    ip_run("link", "add", "eth9", "type", "veth", "peer", "name", "eth9p", netns=netns)
    state = await kernel.create_link(netns, LinkSpec(name="ipsec19", if_id=19, link="eth9"))
    assert state.link == "eth9"
    shown = link_json("ipsec19", netns)
    assert shown.get("link") == "eth9" or info_data(shown).get("link") == "eth9"
    assert (await kernel.create_link(netns, LinkSpec(name="ipsec19", if_id=19, link="eth9"))) == state


async def test_offload_missing_device_is_not_found(kernel, netns):
    with pytest.raises(NotFound, match="'nosuchdev'"):
        await kernel.create_link(netns, LinkSpec(name="ipsec20", if_id=20, link="nosuchdev"))
    assert not link_exists("ipsec20", netns)


async def test_external_mode(kernel, netns):
    state = await kernel.create_link(netns, LinkSpec(name="ipsec21", if_id=21, external=True))
    assert state.external is True and state.owned is True and state.if_id == 0
    shown = link_json("ipsec21", netns)
    assert shown["linkinfo"]["info_kind"] == "xfrm"
    assert info_data(shown).get("external", True) is True
    assert await kernel.create_link(netns, LinkSpec(name="ipsec21", if_id=21, external=True)) == state


async def test_external_only_one_per_netns(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec22", if_id=22, external=True))
    with pytest.raises(Conflict, match="'ipsec22'.*one per namespace"):
        await kernel.create_link(netns, LinkSpec(name="ipsec23", if_id=23, external=True))


async def test_external_with_link_is_invalid(kernel, netns):
    with pytest.raises(InvalidArgument, match="'ipsec24'.*'lo'"):
        await kernel.create_link(netns, LinkSpec(name="ipsec24", if_id=24, external=True, link="lo"))


async def test_external_name_clash_with_normal_link(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec25", if_id=25))
    with pytest.raises(Conflict, match="'ipsec25'"):
        await kernel.create_link(netns, LinkSpec(name="ipsec25", if_id=25, external=True))


async def test_named_netns_is_isolated(kernel, netns_factory):
    blue, red = netns_factory(), netns_factory()
    await kernel.create_link(blue, LinkSpec(name="ipsec26", if_id=26))
    assert link_exists("ipsec26", blue) and not link_exists("ipsec26", red)
    assert await kernel.xfrm_links(red) == []
    # the same name and if_id are free in another namespace
    other = await kernel.create_link(red, LinkSpec(name="ipsec26", if_id=26))
    assert other.owned and link_exists("ipsec26", red)


async def test_unknown_netns_is_not_found_and_not_created(kernel):
    with pytest.raises(NotFound, match="'xfrmid-nonexistent'"):
        await kernel.create_link("xfrmid-nonexistent", LinkSpec(name="ipsec27", if_id=27))
    import os

    assert not os.path.exists("/run/netns/xfrmid-nonexistent")


async def test_conflict_name_with_other_if_id(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec28", if_id=28))
    with pytest.raises(Conflict, match="'ipsec28' already exists with if_id 28, not 29"):
        await kernel.create_link(netns, LinkSpec(name="ipsec28", if_id=29))


async def test_conflict_if_id_used_by_other_name(kernel, netns):
    await kernel.create_link(netns, LinkSpec(name="ipsec30", if_id=30))
    with pytest.raises(Conflict, match="if_id 30 is already used by interface 'ipsec30'"):
        await kernel.create_link(netns, LinkSpec(name="vpn30", if_id=30))
    assert not link_exists("vpn30", netns)


async def test_conflict_with_foreign_link(kernel, netns):
    ip_run("link", "add", "ipsec31", "type", "xfrm", "if_id", "99", netns=netns)
    with pytest.raises(Conflict, match="'ipsec31'.*if_id 99"):
        await kernel.create_link(netns, LinkSpec(name="ipsec31", if_id=31))
    with pytest.raises(Conflict, match="if_id 99 .*'ipsec31'"):
        await kernel.create_link(netns, LinkSpec(name="ipsec99", if_id=99))
    assert await kernel.xfrm_links(netns) == [s for s in await kernel.xfrm_links(netns) if s.name == "ipsec31"]


async def test_conflict_name_used_by_other_kind(kernel, netns):
    ip_run("link", "add", "ipsec32", "type", "veth", "peer", "name", "p32", netns=netns)
    with pytest.raises(Conflict, match="'ipsec32'.*veth"):
        await kernel.create_link(netns, LinkSpec(name="ipsec32", if_id=32))


async def test_bad_names_are_invalid(kernel, netns):
    with pytest.raises(InvalidArgument, match="15"):
        await kernel.create_link(netns, LinkSpec(name="ipsec1234567890123", if_id=5))
    with pytest.raises(InvalidArgument, match="'a/b'"):
        await kernel.create_link(netns, LinkSpec(name="a/b", if_id=5))
    with pytest.raises(InvalidArgument, match="if_id 0"):
        await kernel.create_link(netns, LinkSpec(name="ipsec33", if_id=0))


async def test_recreated_netns_is_not_confused_with_the_old_one(kernel):
    from .conftest import add_netns, del_netns, new_netns_name

    name = new_netns_name("xre")
    add_netns(name)
    try:
        await kernel.create_link(name, LinkSpec(name="ipsec40", if_id=40))
        del_netns(name)
        with pytest.raises(NotFound, match=repr(name)):
            await kernel.xfrm_links(name)
        add_netns(name)
        assert await kernel.xfrm_links(name) == []  # a fresh socket in the new namespace
    finally:
        del_netns(name)


async def test_concurrent_identical_creates_agree(kernel, netns):
    import asyncio

    spec = LinkSpec(name="ipsec41", if_id=41)
    first, second = await asyncio.gather(kernel.create_link(netns, spec), kernel.create_link(netns, spec))
    assert first.ifindex == second.ifindex and first.name == "ipsec41"


async def test_create_links_in_batches_like_create_link_each(kernel, netns):
    """create_links (two batches of requests from a thread, kernel/batch.py): every outcome
    as create_link(read=False) would give it, in order."""
    ours = await kernel.create_link(netns, LinkSpec(name="ipsec50", if_id=50))
    ip_run("link", "add", "ipsec51", "type", "xfrm", "if_id", "99", netns=netns)
    ip_run("link", "add", "ipsec52", "type", "veth", "peer", "name", "p52", netns=netns)
    specs = [LinkSpec(name="ipsec50", if_id=50), LinkSpec(name="ipsec51", if_id=51),
             LinkSpec(name="ipsec52", if_id=52), LinkSpec(name="ipsec53", if_id=53, link="missing0")]
    specs += [LinkSpec(name=f"ipsec{i}", if_id=i, mtu=1400 if i == 54 else None, up=i != 55) for i in range(54, 64)]
    specs.append(LinkSpec(name="vpn64", if_id=60))  # if_id taken by ipsec60 of this very batch
    outcomes = await kernel.create_links(netns, specs)
    assert outcomes[0] == ours
    assert isinstance(outcomes[1], Conflict) and "if_id 99" in str(outcomes[1])
    assert isinstance(outcomes[2], Conflict) and "veth" in str(outcomes[2])
    assert isinstance(outcomes[3], NotFound) and "'missing0'" in str(outcomes[3])
    assert outcomes[4:14] == [None] * 10
    assert isinstance(outcomes[14], Conflict) and "if_id 60" in str(outcomes[14])
    assert not link_exists("vpn64", netns)
    for i in range(54, 64):
        shown = link_json(f"ipsec{i}", netns)
        assert if_id_of(shown) == i and shown["ifalias"] == XFRMID_ALIAS
        assert shown["group"] in (str(XFRMID_LINK_GROUP), "xfrmid")
        assert ("UP" in shown["flags"]) == (i != 55) and shown["mtu"] == (1400 if i == 54 else 1500)
    states = {s.name: s for s in await kernel.xfrm_links(netns)}
    assert all(states[f"ipsec{i}"].owned for i in range(54, 64)) and not states["ipsec51"].owned


async def test_raw_listing_matches_pyroute2_decoding(kernel, netns):
    from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from xfrmid.kernel import links, xfrm_kind
    from xfrmid.kernel.connection import NetnsConnection
    from xfrmid.kernel.objects import LinkState

    ip_run("link", "add", "eth42", "type", "veth", "peer", "name", "eth42p", netns=netns)
    await kernel.create_link(netns, LinkSpec(name="ipsec42", if_id=42, link="eth42", mtu=1300))
    await kernel.create_link(netns, LinkSpec(name="ipsec43", if_id=43, up=False))
    await kernel.create_link(netns, LinkSpec(name="ipsec44", if_id=44, external=True))
    ip_run("link", "add", "ipsec45", "type", "xfrm", "if_id", "0x45", netns=netns)
    conn = NetnsConnection.open(netns)
    try:
        msgs = [m for m in await conn.dump(links._query_xfrm(), RTM_GETLINK) if m["header"]["type"] == RTM_NEWLINK]
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in await conn.dump(ifinfmsg(), RTM_GETLINK)
                 if m["header"]["type"] == RTM_NEWLINK}
    finally:
        conn.close()

    def decoded_state(msg) -> LinkState:  # what pyroute2's full decoding says
        info = msg.get_attr("IFLA_LINKINFO")
        kind = xfrm_kind.parse(info.get_attr("IFLA_INFO_DATA"))
        return LinkState(
            name=msg.get_attr("IFLA_IFNAME"), if_id=kind.if_id, ifindex=msg["index"],
            link=names.get(kind.link_index) if kind.link_index else None, mtu=msg.get_attr("IFLA_MTU"),
            up=bool(msg["flags"] & 1), operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"), external=kind.external,
            owned=msg.get_attr("IFLA_GROUP") == 120 and msg.get_attr("IFLA_IFALIAS") == "xfrmid")

    decoded = [decoded_state(m) for m in msgs]
    raw = await kernel.xfrm_links(netns)
    assert sorted(raw, key=lambda s: s.name) == sorted(decoded, key=lambda s: s.name)
    by_name = {s.name: s for s in raw}
    assert by_name["ipsec42"].link == "eth42" and by_name["ipsec42"].mtu == 1300
    assert by_name["ipsec43"].up is False and by_name["ipsec44"].external is True
    assert by_name["ipsec45"].if_id == 0x45 and by_name["ipsec45"].owned is False


async def test_round_trips_per_operation(kernel, netns, monkeypatch):
    """A create sends create, mark and one get (no dump); change and delete one get each."""
    from xfrmid.kernel.connection import NetnsConnection

    sent = []
    real_transact = NetnsConnection.transact

    async def counting(conn, msg_type, body, *args):
        sent.append(msg_type)
        return await real_transact(conn, msg_type, body, *args)

    async def no_dump(*args, **kwargs):
        raise AssertionError("no dump expected")

    await kernel.xfrm_links(netns)  # the namespace's socket, opened before counting
    monkeypatch.setattr(NetnsConnection, "transact", counting)  # every link request of a call goes through it
    monkeypatch.setattr(NetnsConnection, "raw_dump", no_dump)
    state = await kernel.create_link(netns, LinkSpec(name="ipsec46", if_id=46, mtu=1400))
    assert len(sent) == 3 and state.owned and state.up and state.mtu == 1400
    sent.clear()
    changed = await kernel.change_link(netns, "ipsec46", mtu=1280)
    assert len(sent) == 2 and changed.mtu == 1280 and changed == await kernel.link(netns, "ipsec46")
    sent.clear()
    down = await kernel.change_link(netns, "ipsec46", up=False)
    assert len(sent) == 2 and down == await kernel.link(netns, "ipsec46")
    sent.clear()
    await kernel.delete_link(netns, "ipsec46")
    assert len(sent) == 2 and not link_exists("ipsec46", netns)
