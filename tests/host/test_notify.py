"""xfrmid.notify against a real NOTIFY_SOCKET (systemd.daemon.notify sends the datagrams)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from notify_socket import NotifySocket, notify_socket  # noqa: F401  (fixture)
from xfrmid.notify import Notifier, watchdog_interval


def test_disabled_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sent = []
    notifier = Notifier(sender=lambda m: sent.append(m) or True)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.stopping() is False
    assert sent == []


def test_ready_with_status(notify_socket: NotifySocket):
    assert Notifier().ready("Managing 2 interfaces")
    assert notify_socket.receive() == {"READY": "1", "STATUS": "Managing 2 interfaces"}


def test_status_is_one_line(notify_socket: NotifySocket):
    Notifier().status("two\nlines")
    assert notify_socket.receive() == {"STATUS": "two lines"}


def test_reloading_carries_monotonic_usec(notify_socket: NotifySocket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    message = notify_socket.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_reload_then_ready_then_stopping(notify_socket: NotifySocket):
    notifier = Notifier()
    notifier.reloading()
    notifier.ready()
    notifier.stopping()
    for _ in range(3):
        notify_socket.receive()
    assert [k for k in notify_socket.keys() if k in ("RELOADING", "READY", "STOPPING")] == [
        "RELOADING",
        "READY",
        "STOPPING",
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env) == expected


async def test_watchdog_pings_from_the_loop(notify_socket: NotifySocket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    notifier = Notifier()
    task = notifier.start_watchdog()
    assert task is not None
    assert notifier.start_watchdog() is task  # idempotent
    for _ in range(3):
        assert await notify_socket.wait_for_async("WATCHDOG", "1", timeout=2) == {"WATCHDOG": "1"}
    await notifier.stop_watchdog()
    assert task.done()


async def test_watchdog_stops_when_the_loop_is_stuck(notify_socket: NotifySocket, monkeypatch):
    # The point of pinging from the loop: a blocked loop sends nothing, so systemd restarts us.
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    notifier = Notifier()
    notifier.start_watchdog()
    await asyncio.sleep(0)  # first ping
    assert notify_socket.receive(1) == {"WATCHDOG": "1"}
    time.sleep(0.3)  # the loop is blocked
    notify_socket.sock.setblocking(False)
    try:
        late = notify_socket.sock.recv(100)
    except BlockingIOError:
        late = None
    assert late is None
    await notifier.stop_watchdog()


async def test_no_watchdog_without_watchdog_usec(notify_socket: NotifySocket):
    assert Notifier().start_watchdog() is None


def test_send_failure_is_logged_not_raised(notify_socket: NotifySocket, caplog):
    def broken(message: str) -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    assert Notifier(sender=broken).ready() is False
    assert "Could not notify" in caplog.text


def test_child_process_notifies(notify_socket: NotifySocket):
    # The shape of the daemon-level test: a child started with the socket's environment.
    import subprocess
    import sys

    code = "from xfrmid.notify import Notifier; n = Notifier(); n.ready('up'); n.stopping()"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **notify_socket.env()}, check=True, timeout=30)
    assert notify_socket.wait_for("READY") == {"READY": "1", "STATUS": "up"}
    assert notify_socket.wait_for("STOPPING")["STOPPING"] == "1"


def test_module_level_notify(notify_socket: NotifySocket, monkeypatch):
    from xfrmid.notify import notify

    assert notify("READY=1", "STATUS=Serving 0 interfaces")
    assert notify_socket.receive() == {"READY": "1", "STATUS": "Serving 0 interfaces"}
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False
