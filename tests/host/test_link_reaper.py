"""The link reaper's coalescing and result routing, over a scripted rtnetlink (pure logic).

What the real kernel does with the requests (group deletion, foreign links
untouched) is tested in the VM: tests/kernel/test_link_reaper.py.
"""

from __future__ import annotations

import asyncio

import pytest

from xfrmid.errors import Busy, NotFound
from xfrmid.kernel import link_reaper, nlattrs
from xfrmid.kernel.netlink import IFINFO, IFLA_GROUP
from xfrmid.kernel.link_reaper import LinkReaper
from xfrmid.kernel.objects import XFRMID_DELETING_GROUP, XFRMID_LINK_GROUP
from pyroute2.netlink.exceptions import NetlinkError

ENODEV, EBUSY = 19, 16


class ScriptedRtnl:
    """A namespace's connection whose ``transact`` answers like the kernel:
    ifindex -> [name, group]; moves and deletions (ENODEV for none)."""

    def __init__(self, count: int, netns: str | None = None) -> None:
        self.netns = netns
        self.links = {i: [f"x{i}", XFRMID_LINK_GROUP] for i in range(1, count + 1)}
        self.sent: list[tuple[str, object]] = []
        self.busy: set[int] = set()  # deleting these fails with EBUSY
        self.group_fails = False

    async def transact(self, msg_type, body, flags=0):
        await asyncio.sleep(0)
        index = IFINFO.unpack_from(body, 0)[2]
        attrs = {"IFLA_GROUP": g} if (g := nlattrs.pick(body, IFINFO.size, len(body), {IFLA_GROUP: nlattrs.u32}).get(
            IFLA_GROUP)) is not None else {}
        if msg_type == link_reaper.RTM_NEWLINK:
            self.sent.append(("move", attrs["IFLA_GROUP"]))
            if index not in self.links:
                raise NetlinkError(ENODEV, "No such device")
            self.links[index][1] = attrs["IFLA_GROUP"]
        elif index:
            self.sent.append(("delete", index))
            if index in self.busy:
                raise NetlinkError(EBUSY, "Device or resource busy")
            if self.links.pop(index, None) is None:
                raise NetlinkError(ENODEV, "No such device")
        else:
            self.sent.append(("delete group", attrs["IFLA_GROUP"]))
            if self.group_fails:
                raise NetlinkError(EBUSY, "Device or resource busy")
            doomed = [i for i, (_, group) in self.links.items() if group == attrs["IFLA_GROUP"]]
            if not doomed:
                raise NetlinkError(ENODEV, "No such device")
            for i in doomed:
                del self.links[i]
        return []


@pytest.fixture
def rtnl():
    return ScriptedRtnl(50)


def deletions(rtnl: ScriptedRtnl) -> list:
    return [s for s in rtnl.sent if s[0] != "move"]


async def test_a_delete_alone_is_one_plain_request(rtnl):
    await LinkReaper(rtnl).delete("x3", 3, XFRMID_LINK_GROUP)
    assert rtnl.sent == [("delete", 3)] and 3 not in rtnl.links


async def test_concurrent_deletes_become_one_group_deletion(rtnl):
    rtnl.links[99] = ["foreign", 0]
    rtnl.netns = "blue"
    reaper = LinkReaper(rtnl)
    await asyncio.gather(*(reaper.delete(f"x{i}", i, XFRMID_LINK_GROUP) for i in range(1, 51)))
    assert list(rtnl.links) == [99]
    assert deletions(rtnl) == [("delete group", XFRMID_DELETING_GROUP)]
    assert reaper.stats.group_deletions == 1 and reaper.stats.links == 50


async def test_deletes_arriving_during_a_batch_form_the_next_one(rtnl):
    reaper = LinkReaper(rtnl)
    first = asyncio.ensure_future(reaper.delete("x1", 1, XFRMID_LINK_GROUP))
    await asyncio.sleep(0)  # the batch of one is in flight
    await asyncio.gather(first, *(reaper.delete(f"x{i}", i, XFRMID_LINK_GROUP) for i in range(2, 51)))
    assert deletions(rtnl) == [("delete", 1), ("delete group", XFRMID_DELETING_GROUP)]
    assert not rtnl.links


async def test_each_caller_gets_its_own_result(rtnl):
    del rtnl.links[7]  # vanished before the move
    rtnl.netns = "blue"
    reaper = LinkReaper(rtnl)
    results = await asyncio.gather(*(reaper.delete(f"x{i}", i, XFRMID_LINK_GROUP) for i in range(1, 11)),
                                   return_exceptions=True)
    assert isinstance(results[6], NotFound) and "'x7'" in str(results[6]) and "'blue'" in str(results[6])
    assert results[:6] + results[7:] == [None] * 9
    assert all(i not in rtnl.links for i in range(1, 11))


async def test_a_failed_group_deletion_falls_back_to_one_by_one(rtnl):
    rtnl.group_fails = True
    rtnl.busy = {4}
    reaper = LinkReaper(rtnl)
    results = await asyncio.gather(*(reaper.delete(f"x{i}", i, XFRMID_LINK_GROUP) for i in range(1, 6)),
                                   return_exceptions=True)
    assert results[:3] + results[4:] == [None] * 4
    assert isinstance(results[3], Busy) and "'x4'" in str(results[3])
    # the one that could not go is back in its group, not left for the next batch
    assert rtnl.links[4] == ["x4", XFRMID_LINK_GROUP]


async def test_a_cancelled_caller_does_not_stop_the_batch(rtnl):
    reaper = LinkReaper(rtnl)
    tasks = [asyncio.ensure_future(reaper.delete(f"x{i}", i, XFRMID_LINK_GROUP)) for i in range(1, 6)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(i not in rtnl.links for i in range(1, 6))
