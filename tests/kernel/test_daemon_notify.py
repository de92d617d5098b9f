"""The daemon under a NOTIFY_SOCKET this test listens on, as systemd runs it.

READY=1 (with STATUS=) once the start-up reconcile is done and the bus name
is taken; WATCHDOG=1 from the event loop at half WATCHDOG_USEC; RELOADING=1
(with MONOTONIC_USEC=) then READY=1 on SIGHUP; STOPPING=1 on SIGTERM and a
clean exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .bus_fixtures import TOP, busctl, start_bus

sys.path.insert(0, str(TOP / "tests" / "host"))
from notify_socket import NotifySocket  # noqa: E402

START_TIMEOUT = 600  # Python starts ~10x slower in the emulated VM


@pytest.fixture(scope="module")
def daemon():
    bus = start_bus(policy=False)
    listener = NotifySocket()
    state_dir = Path(tempfile.mkdtemp(prefix="xfrmid-notify-state-"))
    log = open(state_dir.parent / (state_dir.name + ".log"), "ab")
    env = {**os.environ, **listener.env(watchdog_usec=2_000_000)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xfrmid.daemon", "--bus", bus.address, "--config", "/nonexistent/xfrmid.conf",
         "--state-dir", str(state_dir), "--log-level", "debug"],
        stdout=log, stderr=subprocess.STDOUT, cwd=TOP, env=env,
    )
    try:
        yield bus, listener, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
        bus.stop()


def _name_owned(address: str) -> bool:
    probe = busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "NameHasOwner", "s", "org.xfrmid1", check=False)
    return probe.stdout.strip() == "b true"


def test_notify_sequence(daemon):
    bus, listener, proc = daemon
    ready = listener.wait_for("READY", "1", timeout=START_TIMEOUT)
    assert _name_owned(bus.address), "READY=1 came before the bus name was taken"
    assert ready.get("STATUS", "").startswith("Serving"), ready
    assert not any("READY" in m for m in listener.messages[:-1]), "READY=1 sent twice at start"

    for _ in range(2):  # WATCHDOG_USEC=2 s: a ping every second
        assert listener.wait_for("WATCHDOG", "1", timeout=60) == {"WATCHDOG": "1"}

    proc.send_signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", "1", timeout=120)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    listener.wait_for("READY", "1", timeout=300)
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    listener.wait_for("STOPPING", "1", timeout=120)
    assert proc.wait(120) == 0
