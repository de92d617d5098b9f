"""What xfrmid relies on inside pyroute2 that pyroute2 does not promise.

Each check fails with one sentence naming the file of xfrmid to review when
a new pyroute2 changes that part; none fails on what pyroute2 merely adds
(a new public class, a new plugin). dbus-fast's writer, which
xfrmid/bus/connection.py works on, is checked the same way over a real bus
daemon in tests/host/test_bus_connection.py. The supported versions are
pyproject.toml's; CI runs these against the oldest and the newest.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import selectors
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import xfrmid.kernel

xfrmid.kernel.prepare()  # as the daemon does before it imports pyroute2

from pyroute2 import AsyncIPRoute  # noqa: E402
from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg.plugins.xfrm import xfrm as pyroute2_xfrm  # noqa: E402

from xfrmid import pyroute2_import  # noqa: E402
from xfrmid.kernel import connection, monitor, xfrm_kind  # noqa: E402
from xfrmid.kernel.namespace import netlink_fd  # noqa: E402
from xfrmid.kernel.netlink import RTM_GETLINK, RTM_NEWLINK, ifinfo, link_attrs  # noqa: E402

REVIEW = "pyroute2 changed what {what}: review {file}"
LOOP_REVIEW = "asyncio's selector loop changed _remove_reader: review xfrmid/kernel/monitor.py"


def _package_init() -> Path:
    spec = importlib.util.find_spec("pyroute2")
    return Path(spec.origin)


def _is_name_list(node: ast.expr) -> bool:
    return isinstance(node, ast.List) and all(isinstance(item, ast.Name) for item in node.elts)


def _only_imports_names(statement: ast.stmt) -> bool:
    """What pyroute2's package __init__ may do for pyroute2_import.py to stand in for it:
    import names from its submodules, list them, and set __version__ (the Windows-only
    import aside)."""
    if isinstance(statement, ast.ImportFrom):
        return (statement.module or "").startswith("pyroute2.") and statement.level == 0
    if isinstance(statement, ast.Import):
        return all(alias.name in ("sys", "win_inet_pton") for alias in statement.names)
    if isinstance(statement, ast.Try):
        return all(_only_imports_names(s) for s in statement.body) and all(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError"
            and all(isinstance(s, ast.Assign) and [t.id for t in s.targets] == ["__version__"] for s in h.body)
            for h in statement.handlers)
    if isinstance(statement, ast.If):  # if sys.platform.startswith('win'): import win_inet_pton
        return "win" in ast.unparse(statement.test) and all(_only_imports_names(s) for s in statement.body)
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target = statement.targets[0]
        return isinstance(target, ast.Name) and target.id in ("modules", "__all__") and _is_name_list(statement.value)
    if isinstance(statement, ast.Expr):  # __all__.extend(modules), a docstring
        text = ast.unparse(statement.value)
        return text.startswith("__all__.extend(") or isinstance(statement.value, ast.Constant)
    return False


def test_the_package_init_only_imports_names():
    tree = ast.parse(_package_init().read_text())
    extra = [ast.unparse(s).splitlines()[0] for s in tree.body if not _only_imports_names(s)]
    assert not extra, REVIEW.format(
        what=f"its package __init__ does (now also: {extra})", file="xfrmid/pyroute2_import.py")
    imported = {alias.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported.get("log") == "pyroute2.config" and imported.get("__version__") == "pyroute2.config.version", \
        REVIEW.format(what="its package __init__ sets up (logging, version)", file="xfrmid/pyroute2_import.py")


def test_the_names_xfrmid_takes_from_submodules_are_the_packages():
    names = sorted(pyroute2_import._LIGHT)
    code = textwrap.dedent(f"""
        import importlib, pyroute2
        light = {pyroute2_import._LIGHT!r}
        print(all(getattr(pyroute2, n) is getattr(importlib.import_module(light[n]), n) for n in {names!r}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", REVIEW.format(
        what=f"its package exports as {names} ({done.stderr.strip()[-300:]})", file="xfrmid/pyroute2_import.py")


def test_the_tc_plugins_are_deferred_where_pyroute2_keeps_them():
    assert importlib.util.find_spec(pyroute2_import._DEFERRED_UNDER.rstrip(".")) is not None, REVIEW.format(
        what="holds its traffic-control plugins", file="xfrmid/pyroute2_import.py")


async def test_the_sequence_numbers_of_raw_requests_are_outside_pyroute2s_pool():
    ipr = AsyncIPRoute(fileno=netlink_fd())
    try:
        top = ipr.addr_pool.maxaddr
    except AttributeError:
        top = None
    finally:
        ipr.close()
    assert top is not None and top < connection.FIRST_SEQ, REVIEW.format(
        what="sequence numbers it allocates", file="xfrmid/kernel/connection.py")


async def test_requests_and_raw_replies_share_the_sockets_queue():
    conn = connection.NetnsConnection(netlink_fd(), None)
    try:
        got = await asyncio.wait_for(asyncio.gather(
            conn.transact(RTM_GETLINK, ifinfo() + link_attrs(name="lo")),
            conn.raw_dump(ifinfmsg(), RTM_GETLINK),
            conn.dump(ifinfmsg(), RTM_GETLINK),  # queued behind the raw dump: one dump at a time
        ), 30)
    except Exception as exc:  # noqa: BLE001 - any failure here is the same finding
        pytest.fail(REVIEW.format(what=f"its sockets' request queue does ({exc!r})",
                                  file="xfrmid/kernel/connection.py"))
    finally:
        conn.close()
    single, raw, decoded = got
    assert [m[0] for m in single] == [RTM_NEWLINK] and len(raw) == len(decoded) >= 1, REVIEW.format(
        what="its sockets' request queue answers", file="xfrmid/kernel/connection.py")


async def test_received_datagrams_reach_the_monitors_enqueue():
    ipr = monitor._EventSocket(fileno=netlink_fd(), groups=RTMGRP_LINK)
    try:
        await ipr.bind(groups=RTMGRP_LINK)
        transport = getattr(ipr.local, "transport", None)
        protocol = getattr(ipr.local, "protocol", None)
        hands_to = getattr(getattr(protocol, "enqueue", None), "__func__", None)
    finally:
        ipr.close()
    assert hands_to is monitor._EventSocket.enqueue, REVIEW.format(
        what="its datagram protocol hands datagrams to", file="xfrmid/kernel/monitor.py")
    assert hasattr(transport, "pause_reading"), REVIEW.format(
        what="its socket keeps as local.transport", file="xfrmid/kernel/monitor.py")
    assert list(inspect.signature(AsyncIPRoute.enqueue).parameters) == ["self", "data", "addr"], REVIEW.format(
        what="its enqueue takes", file="xfrmid/kernel/monitor.py")


@pytest.mark.parametrize("can_pause", [True, False])
async def test_the_monitor_reads_in_batches_whether_or_not_the_transport_can_pause(can_pause):
    """Python 3.11.2's datagram transport cannot pause its reading (3.11.7's can): the monitor then
    stops the transport's reader with the loop's private _remove_reader, and reads in batches either way."""
    ipr = monitor._EventSocket(fileno=netlink_fd(), groups=RTMGRP_LINK)
    try:
        await ipr.bind(groups=RTMGRP_LINK)
        transport = ipr.local.transport
        if not can_pause:
            transport.pause_reading = _cannot_pause
        loop = asyncio.get_running_loop()
        assert hasattr(loop, "_remove_reader"), LOOP_REVIEW
        monitor.NetnsMonitor(None, lambda event: None)._read_in_batches(ipr)
        assert ipr.reader is not None
        key = loop._selector.get_map().get(ipr.socket.fileno())
        assert key is None or not key.events & selectors.EVENT_READ, LOOP_REVIEW
    finally:
        monitor._close(ipr)


def _cannot_pause() -> None:
    raise NotImplementedError  # asyncio.ReadTransport's, what 3.11.2's datagram transport inherits


def test_the_xfrm_link_kind_extends_pyroute2s_own():
    names = [entry[0] for entry in pyroute2_xfrm.nla_map]
    assert names == ["IFLA_XFRM_UNSPEC", "IFLA_XFRM_LINK", "IFLA_XFRM_IF_ID"], REVIEW.format(
        what=f"its xfrm link kind decodes ({names})", file="xfrmid/kernel/xfrm_kind.py")
    xfrm_kind.register()
    assert ifinfmsg.ifinfo.data_map.get("xfrm") is xfrm_kind.xfrm, REVIEW.format(
        what="its link kind plugins are registered with", file="xfrmid/kernel/xfrm_kind.py")
