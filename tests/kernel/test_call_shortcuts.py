"""The call shortcuts (core/transaction.py, core/reconcile.py) against the real kernel, with
the watcher wired as the daemon wires it (build_core): an Attach of another owner on a healthy interface sends nothing to
the kernel and still persists; a link deleted by hand just before is back within 2 s;
a fresh create whose name is taken meanwhile still adopts an identical foreign link and
still raises Conflict for a different one."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from xfrmid.core.manager import Manager
from xfrmid.core.watch import Watcher
from xfrmid.errors import Conflict, NotFound

from .conftest import ip_run, link_json

BACKEND = ("xfrm_links", "link", "create_link", "change_link", "delete_link", "addresses",
           "addresses_by_index", "add_address", "remove_address", "own_routes", "add_route",
           "remove_route", "own_rules", "add_rule", "remove_rule")


def count_calls(kernel) -> list[str]:
    """Record every backend call (each is one or more netlink requests)."""
    calls: list[str] = []
    for name in BACKEND:
        method = getattr(kernel, name)

        async def wrapper(*args, _method=method, _name=name, **kw):
            calls.append(_name)
            return await _method(*args, **kw)

        setattr(kernel, name, wrapper)
    return calls


@pytest.fixture
async def wired(core, settings, netns):
    """The manager and its watcher as the daemon builds them (tests/conftest.py's ``core``)."""
    return core.manager, core.watcher, settings, netns


async def healthy(manager: Manager, watcher: Watcher, monitors, name: str, netns: str) -> None:
    """An interface with one owner and an address, read after its namespace's monitor
    subscribed, whose events the watcher has all judged."""
    await manager.attach(name, "conn-a", netns=netns)
    await manager.add_address(name, "conn-a", "198.51.100.1/24", netns=netns)
    await watcher.monitors_started()  # the namespace's monitor subscribes in a task of its own
    assert watcher._since.get(netns) is not None
    await manager.reconcile_interface(name, netns)  # a read after the subscription
    await monitors.barrier(netns)
    await watcher.idle()


async def test_attach_of_another_owner_sends_nothing_and_persists(wired, kernel, monitors):
    manager, watcher, settings, netns = wired
    await healthy(manager, watcher, monitors, "ipsec1", netns)
    calls = count_calls(kernel)
    result = await manager.attach("ipsec1", "conn-b", netns=netns)
    assert calls == []
    assert result.info.owners == ("conn-a", "conn-b")
    assert manager.shortcuts["unchanged"] == 1
    # the Detach of one of two owners whose objects stay: nothing either
    assert await manager.detach("ipsec1", "conn-b", netns=netns) is False
    assert calls == []
    await manager.attach("ipsec1", "conn-b", netns=netns)
    # persisted: a restart over the same state keeps the owner
    again = Manager(kernel, settings)
    await again.start()
    try:
        assert again.get("ipsec1", netns).owners == ("conn-a", "conn-b")
    finally:
        await again.stop()


async def test_link_deleted_just_before_the_attach_is_back_within_2s(wired, monitors):
    manager, watcher, _settings, netns = wired
    await healthy(manager, watcher, monitors, "ipsec2", netns)
    ip_run("link", "del", "ipsec2", netns=netns)
    await manager.attach("ipsec2", "conn-b", netns=netns)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and await addresses("ipsec2", netns) != ["198.51.100.1"]:
        await asyncio.sleep(0.05)
    assert await addresses("ipsec2", netns) == ["198.51.100.1"]  # the link and its address are back
    await watcher.idle()
    assert manager.get("ipsec2", netns).owners == ("conn-a", "conn-b")


async def addresses(name: str, netns: str) -> list[str] | None:
    """The link's IPv4 addresses as iproute2 shows them (None: no such link), read without
    blocking the loop: the watcher repairs meanwhile."""
    proc = await asyncio.create_subprocess_exec("ip", "-j", "-4", "-n", netns, "addr", "show", "dev", name,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    return [a["local"] for entry in json.loads(out or b"[]") for a in entry["addr_info"]]


def name_free_at_first(kernel, name: str) -> None:
    """The get before the create finds nothing: the link comes right after it (a race)."""
    plain = kernel.link

    async def link(netns, ifname):
        if ifname == name:
            kernel.link = plain
            raise NotFound(f"Interface {ifname!r} does not exist.")
        return await plain(netns, ifname)

    kernel.link = link


async def test_fresh_create_without_a_read(wired, kernel):
    manager, _watcher, _settings, netns = wired
    calls = count_calls(kernel)
    info = await manager.create_interface("ipsec3", netns=netns, addresses=["198.51.100.3/24"])
    assert calls == ["link", "create_link", "add_address"]
    assert info.owned and info.ifindex == link_json("ipsec3", netns)["ifindex"]
    assert manager.shortcuts["created"] == 1


@pytest.mark.parametrize("race", [False, True], ids=["seen", "race"])
@pytest.mark.parametrize("if_id", [4, 55], ids=["identical", "different"])
async def test_fresh_create_of_a_name_held_by_a_foreign_link(wired, kernel, race, if_id):
    """Identical: adopted (owned False, left unmarked); different if_id: Conflict, left alone.
    ``race``: the get before the create finds the name free, the create finds it taken."""
    manager, _watcher, _settings, netns = wired
    ip_run("link", "add", "ipsec4", "type", "xfrm", "if_id", str(if_id), netns=netns)
    if race:
        name_free_at_first(kernel, "ipsec4")
    if if_id == 4:
        info = await manager.create_interface("ipsec4", netns=netns)
        assert info.owned is False
        assert link_json("ipsec4", netns).get("ifalias") in (None, "")
    else:
        with pytest.raises(Conflict, match="ipsec4"):
            await manager.attach("ipsec4", "conn-a", netns=netns)
        assert int(str(link_json("ipsec4", netns)["linkinfo"]["info_data"]["if_id"]), 0) == if_id
        with pytest.raises(NotFound):
            manager.get("ipsec4", netns)
    assert manager.shortcuts["created"] == 0
