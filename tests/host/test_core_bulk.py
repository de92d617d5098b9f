"""The Manager's bulk calls (CreateInterfaces, DeleteInterfaces) over the fake kernel: checks
before any change, one change for all, all or nothing."""

from __future__ import annotations

import pytest

from xfrmid.errors import Busy, Conflict, InvalidArgument, NotFound, NotOwned

from fake_kernel import FakeKernel, ns


@pytest.fixture
def kernel():
    return FakeKernel()


async def test_delete_interfaces_in_one_change(manager, kernel):
    for i in range(20, 26):
        await manager.create_interface(f"ipsec{i}", addresses=[f"192.0.2.{i}/32"])
    await manager.attach("ipsec25", "a")
    kernel.foreign_link("ipsec26", 26)
    await manager.attach("ipsec26", "b")
    # every name is checked before any is deleted: one refusal and nothing changes
    for names, error, words in ((["ipsec20", "ipsec25"], Busy, "'ipsec25' is still attached"),
                                (["ipsec20", "ipsec26"], NotOwned, "'ipsec26'"),
                                (["ipsec20", "ipsec99"], NotFound, "'ipsec99'"),
                                (["ipsec20", "ipsec 1"], InvalidArgument, "ipsec 1"),
                                ("ipsec20", InvalidArgument, "list")):
        with pytest.raises(error, match=words):
            await manager.delete_interfaces(names)
        assert {f"ipsec{i}" for i in range(20, 27)} <= set(ns(kernel).links)
    kernel.calls.clear()
    await manager.delete_interfaces(["ipsec21", "ipsec20", "ipsec22", "ipsec21", "ipsec23"])
    assert not {"ipsec20", "ipsec21", "ipsec22", "ipsec23"} & set(ns(kernel).links)
    assert [i.name for i in manager.interfaces()] == ["ipsec24", "ipsec25", "ipsec26"]
    # one read of the kernel for the four: a dump of the links, no get per interface
    ops = [op for op, _ in kernel.calls]
    assert ops.count("delete_link") == 4 and ops.count("xfrm_links") == 1 and "link" not in ops
    await manager.delete_interfaces(["ipsec25"], force=True)
    await manager.delete_interfaces([])
    assert [i.name for i in manager.interfaces()] == ["ipsec24", "ipsec26"]


async def test_create_interfaces_all_or_nothing(manager, kernel):
    await manager.create_interface("ipsec30")
    infos = await manager.create_interfaces([
        ("ipsec31", 0, {"addresses": ["192.0.2.31/32"]}),
        ("ipsec30", 0, {}),  # the identical existing one: fine
        ("ipsec77", 77, {"mtu": 1400}),
    ])
    assert [(i.name, i.if_id, i.owned) for i in infos] == [("ipsec31", 31, True), ("ipsec30", 30, True),
                                                           ("ipsec77", 77, True)]
    assert {"ipsec30", "ipsec31", "ipsec77"} <= set(ns(kernel).links) and ns(kernel).links["ipsec77"].mtu == 1400
    assert ns(kernel).addresses["ipsec31"] == {"192.0.2.31/32"}
    # checked before anything changes
    for entries, words in (([("ipsec32", 0, {}), ("bad name", 0, {})], "bad name"),
                           ([("ipsec32", 0, {"colour": "red"})], "'colour'"),
                           ([("ipsec32", 0, {}), ("ipsec32", 0, {"mtu": 1300})], "twice"),
                           ("ipsec32", "list")):
        with pytest.raises(InvalidArgument, match=words):
            await manager.create_interfaces(entries)
        assert "ipsec32" not in ns(kernel).links
    # the kernel refuses one: the others this call created are removed again
    kernel.fail["create_link"] = Conflict("Interface 'ipsec33' already exists with if_id 9.")
    with pytest.raises(Conflict):
        await manager.create_interfaces([("ipsec32", 0, {}), ("ipsec33", 0, {}), ("ipsec34", 0, {})])
    assert not {"ipsec32", "ipsec33", "ipsec34"} & set(ns(kernel).links)
    assert [i.name for i in manager.interfaces()] == ["ipsec30", "ipsec31", "ipsec77"]
    assert await manager.create_interfaces([]) == []


async def test_create_interfaces_many_read_by_dumps(manager, kernel, caplog):
    """More than FEW new names: one dump says which exist (a foreign one is adopted) and
    one dump reads the created links, no get per interface; one log line names them all."""
    kernel.foreign_link("ipsec33", 33)
    kernel.calls.clear()
    names = [f"ipsec{i}" for i in range(30, 36)]
    with caplog.at_level("INFO", logger="xfrmid.core"):
        views = await manager.create_interfaces([(n, 0, {}) for n in names])
    assert [v.name for v in views] == names
    assert {v.name: v.owned for v in views} == {n: n != "ipsec33" for n in names}
    assert all(v.ifindex == ns(kernel).links[v.name].ifindex for v in views)
    ops = [op for op, _ in kernel.calls]
    assert ops.count("create_link") == 5 and "link" not in ops and ops.count("xfrm_links") == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("created ")]
    assert lines == ["created 5 interfaces: ipsec30, ipsec31, ipsec32, ipsec34, ipsec35"]
