"""Concurrent deletions on a real kernel: one unregister batch, each caller its own result.

The reaper moves the links into xfrmid's deleting group and deletes the group
with one RTM_DELLINK; a foreign link of any kind, in any other group, must
survive that, and a link a crash left in the deleting group is a leftover the
next start removes.
"""

from __future__ import annotations

import asyncio
import subprocess

from xfrmid.core.manager import Manager
from xfrmid.errors import InvalidArgument, NotFound
from xfrmid.kernel import link_reaper
from xfrmid.kernel.connection import NetnsConnection
from xfrmid.kernel.netlink import RTM_GETLINK
from xfrmid.kernel.objects import XFRMID_ALIAS, XFRMID_DELETING_GROUP, XFRMID_LINK_GROUP

from .conftest import ip, ip_run, link_exists, link_json

MANY = 200


def ip_batch(netns: str, lines: list[str]) -> None:
    proc = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


async def test_concurrent_deletes_are_one_batch(kernel, netns, monkeypatch):
    ip_batch(netns, [f"link add xr{i} group {XFRMID_LINK_GROUP} type xfrm if_id {1000 + i}" for i in range(MANY)]
             + [f"link set xr{i} alias {XFRMID_ALIAS}" for i in range(MANY)])
    # foreign links: a veth pair, and an xfrm link of someone else's in xfrmid's group
    ip_run("link", "add", "fv0", "type", "veth", "peer", "name", "fv1", netns=netns)
    ip_run("link", "add", "fx", "group", str(XFRMID_LINK_GROUP), "type", "xfrm", "if_id", "7", netns=netns)
    sent = []
    real = NetnsConnection.transact

    async def counting(conn, msg_type, body, *args):
        if msg_type != RTM_GETLINK:  # the reaper's requests only, not the gets of delete_link
            sent.append(msg_type)
        return await real(conn, msg_type, body, *args)

    monkeypatch.setattr(NetnsConnection, "transact", counting)
    names = [f"xr{i}" for i in range(MANY)]
    results = await asyncio.wait_for(asyncio.gather(
        *(kernel.delete_link(netns, name) for name in names[:100]),
        kernel.delete_link(netns, "missing0"),
        kernel.delete_link(netns, "fv0"),
        *(kernel.delete_link(netns, name) for name in names[100:]),
        return_exceptions=True,
    ), 240)
    assert results[:100] + results[102:] == [None] * MANY, [r for r in results if r is not None]
    assert isinstance(results[100], NotFound) and "'missing0'" in str(results[100])
    assert isinstance(results[101], InvalidArgument) and "veth" in str(results[101])
    deletions = sent.count(link_reaper.RTM_DELLINK)
    assert 1 <= deletions <= 5, f"{deletions} RTM_DELLINK for {MANY} links: not batched"
    assert sent.count(link_reaper.RTM_NEWLINK) >= MANY - 2  # the moves (the first link may go alone)
    left = {link["ifname"] for link in ip("link", "show", netns=netns)}
    assert left == {"lo", "fv0", "fv1", "fx"}
    assert str(link_json("fx", netns)["group"]) in (str(XFRMID_LINK_GROUP), "xfrmid")
    # nothing is left in the deleting group, and a delete alone still works
    # (iproute2's JSON has an empty object for each link the group filter skips)
    assert not [link for link in ip("link", "show", "group", str(XFRMID_DELETING_GROUP), netns=netns) if link]
    ip_run("link", "add", "xr0", "type", "xfrm", "if_id", "1000", netns=netns)
    sent.clear()
    await kernel.delete_link(netns, "xr0")
    assert sent == [link_reaper.RTM_DELLINK] and not link_exists("xr0", netns)


async def test_leftover_in_deleting_group_is_removed_at_start(kernel, settings, netns):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.create_interface("ipsec20", netns=netns)
    await m1.stop()
    # a crash between the move and the group deletion: alias kept, group "deleting"
    ip_run("link", "add", "ipsec21", "group", str(XFRMID_DELETING_GROUP), "type", "xfrm", "if_id", "21",
           netns=netns)
    ip_run("link", "set", "ipsec21", "alias", XFRMID_ALIAS, netns=netns)
    # the group alone is not ownership: someone else's link there is left alone
    ip_run("link", "add", "ipsec22", "group", str(XFRMID_DELETING_GROUP), "type", "xfrm", "if_id", "22",
           netns=netns)
    owned = {s.name: s.owned for s in await kernel.xfrm_links(netns)}
    assert owned == {"ipsec20": True, "ipsec21": True, "ipsec22": False}

    m2 = Manager(kernel, settings)  # the restarted daemon, same state file
    counts = await m2.start()
    assert counts["removed"] == 1
    assert not link_exists("ipsec21", netns)
    assert link_exists("ipsec20", netns) and link_exists("ipsec22", netns)
    await m2.stop()
