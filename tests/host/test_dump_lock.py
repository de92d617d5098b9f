"""Concurrent dumps on one rtnetlink socket queue instead of failing with EBUSY.

The kernel runs one dump per netlink socket at a time; the daemon shares one
socket per namespace between concurrent D-Bus calls (a pipelining client made
CreateInterface fail with EBUSY before). Plain link dumps work on any Linux,
so this runs on the host.
"""

from __future__ import annotations

import asyncio

from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from xfrmid.kernel.connection import NetnsConnection
from xfrmid.kernel.namespace import netlink_fd


async def test_concurrent_dumps_on_one_socket_all_answer():
    conn = NetnsConnection(netlink_fd(), None)
    try:
        results = await asyncio.gather(*(conn.dump(ifinfmsg(), RTM_GETLINK) for _ in range(20)))
    finally:
        conn.close()
    names = [sorted(m.get_attr("IFLA_IFNAME") for m in r if m["header"]["type"] == RTM_NEWLINK) for r in results]
    assert names[0] and "lo" in names[0]
    assert all(n == names[0] for n in names)
