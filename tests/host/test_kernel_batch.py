"""Batches of rtnetlink requests (kernel/batch.py) on the host's own kernel.

The host has no xfrm links; changing veth devices in a throwaway namespace
exercises the same mechanism: requests without acks in one datagram, only
failures answered, each answer matched to its request, batches larger than
one datagram. Creating xfrm links this way is tested in the VM
(tests/kernel/test_links.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import pytest

from xfrmid.kernel.batch import PER_SEND, THREAD, BatchSocket, exchange
from xfrmid.kernel.links import ENODEV
from xfrmid.kernel.connection import NetnsConnection
from xfrmid.kernel.netlink import F_REQ, ifinfo, link_attrs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")

RTM_NEWLINK = 16


@pytest.fixture
def netns():
    name = f"xbatch-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "e0"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def alias_of(netns: str, dev: str) -> str:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", dev], check=True, capture_output=True, text=True)
    return out.stdout.split(" alias ")[1].split()[0] if " alias " in out.stdout else ""


def set_alias(dev: str, alias: str) -> tuple[int, int, bytes]:
    return (RTM_NEWLINK, F_REQ, ifinfo() + link_attrs(name=dev, alias=alias))


async def test_each_request_gets_its_own_answer_in_order_across_datagrams(netns):
    conn = NetnsConnection.open(netns)
    try:
        bsock = conn.batch_socket()
        n = 2 * PER_SEND + 7  # three datagrams
        requests = [set_alias("d0" if i % 3 else f"missing{i}", f"a{i}") for i in range(n)]
        codes = await exchange(bsock, requests)
        assert codes == [0 if i % 3 else ENODEV for i in range(n)]
        last = max(i for i in range(n) if i % 3)
        assert alias_of(netns, "d0") == f"a{last}"  # applied in order
        assert await exchange(bsock, []) == []
        assert await exchange(bsock, [set_alias("e0", "peer")]) == [0]
        assert alias_of(netns, "e0") == "peer"
    finally:
        conn.close()


async def test_the_loop_runs_while_the_thread_waits_for_the_kernel(netns):
    conn = NetnsConnection.open(netns)
    try:
        bsock = conn.batch_socket()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        codes = await exchange(bsock, [set_alias("d0", f"b{i}") for i in range(3 * PER_SEND)])
        ticker.cancel()
        assert codes == [0] * (3 * PER_SEND)
        assert ticks > 1
        assert THREAD.name == "xfrmid-netlink-batch"
    finally:
        conn.close()


def test_a_closed_socket_fails_the_batch_with_a_typed_error(netns):
    from xfrmid.errors import Failed
    from xfrmid.kernel.namespace import open_netns_fd

    bsock = BatchSocket(open_netns_fd(netns))
    bsock.close()
    with pytest.raises(Failed, match="batch of 1 rtnetlink requests"):
        bsock.exchange([set_alias("d0", "x")])


async def test_sequence_numbers_wrap_before_32_bits(netns):
    conn = NetnsConnection.open(netns)
    try:
        bsock = conn.batch_socket()
        bsock._seq = (1 << 32) - 3
        codes = await exchange(bsock, [set_alias("d0", "w1"), set_alias("missing", "w2")])
        assert codes == [0, ENODEV] and bsock._seq == 3
    finally:
        conn.close()
