"""The daemon's drift-repair wiring, without a kernel: the watcher listens to the
manager and holds what the manager changes; the testing-only receive buffer
option; the Repaired signal as xfrmctl monitor shows it."""

from __future__ import annotations

import asyncio

import pytest
from dbus_fast import Message

from fake_kernel import FakeKernel

from xfrmid.cli import show
from xfrmid.core.manager import Manager
from xfrmid.core.watch import Watcher
from xfrmid.daemon import _watcher, build_parser
from xfrmid.kernel.events import Interest
from xfrmid.settings import Settings


def test_monitor_rcvbuf_is_hidden_and_checked(capsys):
    parser = build_parser()
    assert "--monitor-rcvbuf" not in parser.format_help()
    assert parser.parse_args(["--monitor-rcvbuf", "4096"]).monitor_rcvbuf == 4096
    assert parser.parse_args([]).monitor_rcvbuf is None
    for bad in ("0", "-1", "lots"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--monitor-rcvbuf", bad])
        assert exc.value.code == 2
        assert repr(bad) in capsys.readouterr().err


def test_watcher_listens_and_holds(tmp_path):
    manager = Manager(FakeKernel(), Settings(state_dir=str(tmp_path)))
    watcher = _watcher(manager, None)
    assert isinstance(watcher, Watcher)
    assert watcher in manager._listeners
    assert manager.hold == watcher.hold
    # the full repair is the very method D-Bus Reconcile calls; one interface at a time otherwise
    assert watcher.reconcile == manager.reconcile
    assert watcher.reconcile_one == manager.reconcile_interface
    with manager.hold((None, "ipsec1")):
        assert watcher._held[(None, "ipsec1")] == 1
    assert not watcher._held


def test_watcher_monitors_get_the_testing_buffer(tmp_path):
    manager = Manager(FakeKernel(), Settings(state_dir=str(tmp_path)))
    watcher = _watcher(manager, 8192)
    monitor = watcher._factory("blue", lambda ev: None, Interest())
    assert monitor.rcvbuf == 8192 and monitor.netns == "blue"


async def test_runtime_netns_gets_a_monitor(tmp_path):
    """An interface in a namespace the daemon did not use before: the watcher starts its monitor."""
    started: list[str | None] = []

    class Mon:
        def __init__(self, netns, on_event, interest) -> None:
            self.netns = netns

        async def start(self) -> None:
            started.append(self.netns)

        async def close(self) -> None:
            pass

    kernel = FakeKernel()
    kernel.add_netns("blue")
    manager = Manager(kernel, Settings(state_dir=str(tmp_path)))
    watcher = Watcher(manager.reconcile, reconcile_one=manager.reconcile_interface, monitor_factory=Mon)
    manager.subscribe(watcher)
    manager.hold = watcher.hold
    await manager.start()
    watcher.set_interfaces(manager.interfaces())
    await watcher.start()
    try:
        assert started == [None]
        await manager.attach("ipsec5", "conn", netns="blue")
        for _ in range(100):
            if "blue" in started:
                break
            await asyncio.sleep(0.01)
        assert started == [None, "blue"]
    finally:
        await watcher.stop()
        await manager.stop()


def test_xfrmctl_monitor_shows_repairs():
    msg = Message.new_signal("/org/xfrmid1/interface/ipsec1", "org.xfrmid1.Interface", "Repaired", "s",
                             ["added address 10.0.0.1/24 to ipsec1"])
    event = show.signal_event(msg)
    assert event == {"event": "repaired", "path": "/org/xfrmid1/interface/ipsec1",
                     "what": "added address 10.0.0.1/24 to ipsec1"}
    assert show.event_line(event) == "repaired /org/xfrmid1/interface/ipsec1 added address 10.0.0.1/24 to ipsec1"
