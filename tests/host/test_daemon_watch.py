"""The running core's drift-repair wiring, without a kernel (build_core over the fake
kernel, as the daemon builds it over the real one): the watcher holds what the manager
changes and repairs through it; the testing-only receive buffer option; the Repaired
signal as xfrmctl monitor shows it."""

from __future__ import annotations

import pytest
from dbus_fast import Message, Variant

from fake_kernel import FakeKernel

from xfrmid.cli import show
from xfrmid.daemon import _monitors, build_parser
from xfrmid.kernel.events import Interest
from xfrmid.settings import Settings, StaticInterface


@pytest.fixture
def kernel():
    return FakeKernel()


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


def test_watcher_monitors_get_the_testing_buffer():
    from xfrmid.kernel.monitor import NetnsMonitor

    monitor = _monitors(NetnsMonitor, 8192)("blue", lambda ev: None, Interest())
    assert monitor.rcvbuf == 8192 and monitor.netns == "blue"
    assert _monitors(NetnsMonitor, None) is NetnsMonitor


async def test_a_call_is_held_while_it_changes_the_kernel(core, kernel):
    held = []
    create = kernel.create_link

    async def create_link(netns, spec, **kw):
        held.append(dict(core.watcher._held))
        return await create(netns, spec, **kw)

    kernel.create_link = create_link
    await core.manager.attach("ipsec1", "conn")
    assert held == [{(None, "ipsec1"): 1}]
    assert not core.watcher._held


async def test_a_reload_is_held_as_a_whole(core, kernel, settings):
    held = []
    create = kernel.create_link

    async def create_link(netns, spec, **kw):
        held.append(core.watcher._held_all)
        return await create(netns, spec, **kw)

    kernel.create_link = create_link
    await core.manager.reload(Settings(state_dir=settings.state_dir,
                                       static_interfaces=(StaticInterface(name="ipsec9"),)))
    assert held == [1] and core.watcher._held_all == 0


async def test_drift_is_repaired_through_the_manager(core, kernel):
    await core.manager.attach("ipsec1", "conn")
    await core.watcher.idle()  # the create's own events: no drift
    assert core.watcher.repairs == core.watcher.reconciles == 0
    await kernel.delete_link(None, "ipsec1")  # drift: the fake kernel sends the event
    await core.watcher.idle()
    assert core.watcher.repairs == 1 and core.watcher.reconciles == 0
    assert "ipsec1" in kernel.ns[None].links
    assert core.manager.get("ipsec1").ifindex == kernel.ns[None].links["ipsec1"].ifindex


async def test_runtime_netns_gets_a_monitor(core, kernel):
    """An interface in a namespace the daemon did not use before: the watcher starts its monitor."""
    kernel.add_netns("blue")
    assert [m.netns for m in kernel.monitors] == [None]
    await core.manager.attach("ipsec5", "conn", netns="blue")
    await core.watcher.monitors_started()
    assert [m.netns for m in kernel.monitors] == [None, "blue"]


def test_xfrmctl_monitor_shows_repairs():
    msg = Message.new_signal("/org/xfrmid1/interface/ipsec1", "org.xfrmid1.Interface", "Repaired", "s",
                             ["added address 10.0.0.1/24 to ipsec1"])
    event = show.signal_event(msg)
    assert event == {"event": "repaired", "path": "/org/xfrmid1/interface/ipsec1",
                     "what": "added address 10.0.0.1/24 to ipsec1"}
    assert show.event_line(event) == "repaired /org/xfrmid1/interface/ipsec1 added address 10.0.0.1/24 to ipsec1"


def test_xfrmctl_monitor_names_invalidated_lists():
    msg = Message.new_signal("/org/xfrmid1/interface/ipsec1", "org.freedesktop.DBus.Properties",
                             "PropertiesChanged", "sa{sv}as",
                             ["org.xfrmid1.Interface", {"OperState": Variant("s", "up")}, ["Owners", "Routes"]])
    event = show.signal_event(msg)
    assert event == {"event": "changed", "path": "/org/xfrmid1/interface/ipsec1",
                     "properties": {"OperState": "up"}, "invalidated": ["Owners", "Routes"]}
    assert show.event_line(event) == "changed  /org/xfrmid1/interface/ipsec1 OperState=up Owners changed Routes changed"
