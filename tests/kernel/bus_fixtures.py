"""A real private dbus-daemon and the real xfrmid daemon, for the bus tests.

Imported by tests/kernel/test_bus_*.py (``from bus_fixtures import ...``);
the fixtures are module-scoped so a test file boots one bus and one daemon
and its tests use distinct interface names and clean up after themselves.

``policy=True`` starts a system-bus-like configuration (deny by default,
private-bus.conf) that includes the project's dbus/org.xfrmid1.conf, as a
distribution would; ``policy=False`` opens the bus to everything
(private-bus-open.conf), so only the daemon's own check stands between a
user and a mutating call.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
POLICY = TOP / "dbus" / "org.xfrmid1.conf"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

# The bus configurations (shared with examples/demo.sh); each run gets its own socket.
BUS_CONF = TOP / "tests" / "kernel" / "private-bus.conf"  # system-like, includes POLICY
OPEN_BUS_CONF = TOP / "tests" / "kernel" / "private-bus-open.conf"


@dataclass
class PrivateBus:
    address: str
    directory: Path
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_bus(policy: bool = True) -> PrivateBus:
    directory = Path(tempfile.mkdtemp(prefix="xfrmid-bus-"))
    directory.chmod(0o755)  # unprivileged clients must reach the socket
    socket = directory / "bus"
    config = BUS_CONF if policy else OPEN_BUS_CONF
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", f"--address=unix:path={socket}", "--nofork",
         "--print-address=1", "--nopidfile"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"dbus-daemon did not start with {config}")
    return PrivateBus(line.split(",guid=")[0], directory, proc)


def busctl(address: str, *args: str, user: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """busctl (sd-bus, what pluto would link) against the private bus; user=True runs it as nobody."""
    cmd = (NOBODY if user else []) + ["busctl", f"--address={address}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc


def busctl_json(address: str, *args: str, user: bool = False):
    """busctl --json=short output; several values (get-property A B) come one per line."""
    lines = [json.loads(line) for line in busctl(address, "--json=short", *args, user=user).stdout.splitlines()
             if line.strip()]
    return lines[0] if len(lines) == 1 else lines


def manager_call(address: str, method: str, signature: str, *args: str, user: bool = False, check: bool = True):
    return busctl(address, "call", "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager", method,
                  *( [signature] if signature else []), *args, user=user, check=check)


def xfrmctl(address: str, *args: str, user: bool = False, check: bool = False) -> subprocess.CompletedProcess:
    cmd = (NOBODY if user else []) + [sys.executable, "-m", "xfrmid.cli.main", "--bus", address, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=TOP)
    if check and proc.returncode != 0:
        raise AssertionError(f"xfrmctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def gdbus(address: str, method: str, *args: str, path: str = "/org/xfrmid1") -> subprocess.CompletedProcess:
    """gdbus (GLib's implementation): prints the D-Bus error name on failure."""
    return subprocess.run(
        ["gdbus", "call", "--address", address, "--dest", "org.xfrmid1", "--object-path", path,
         "--method", method, *args],
        capture_output=True, text=True, timeout=120,
    )


def gdbus_failure(address: str, method: str, *args: str) -> tuple[str, str]:
    """(error name, message) of a Manager call through gdbus that must fail, without a traceback."""
    proc = gdbus(address, f"org.xfrmid1.Manager.{method}", *args)
    assert proc.returncode != 0, f"{method} {args} unexpectedly succeeded: {proc.stdout}"
    assert "Traceback" not in proc.stderr
    # "Error: GDBus.Error:org.xfrmid1.Error.NotFound: Interface 'x' ..."
    name, _, text = proc.stderr.strip().split("GDBus.Error:", 1)[1].partition(": ")
    return name, text


def gdbus_error(address: str, method: str, *args: str) -> str:
    """The D-Bus error name of a Manager call through gdbus that must fail."""
    return gdbus_failure(address, method, *args)[0]


def props(address: str, path: str) -> dict:
    """An interface object's org.xfrmid1.Interface properties, read by busctl."""
    data = busctl_json(address, "call", "org.xfrmid1", path, "org.freedesktop.DBus.Properties",
                       "GetAll", "s", "org.xfrmid1.Interface")
    return {k: v["data"] for k, v in data["data"][0].items()}


def xfrmctl_here(capsys, address: str, *args: str) -> tuple[int, str, str]:
    """xfrmctl in this process (a Python start-up costs much in the VM): (rc, stdout, stderr)."""
    from xfrmid.cli.main import main

    capsys.readouterr()
    rc = main(["--bus", address, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@dataclass
class Daemon:
    bus: PrivateBus
    process: subprocess.Popen
    log: Path
    state_dir: Path
    config: Path

    @property
    def address(self) -> str:
        return self.bus.address

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_daemon(bus: PrivateBus, config_text: str | None = None, state_dir: Path | None = None,
                 timeout: float = 600, args: tuple[str, ...] = (), netns: str | None = None) -> Daemon:
    """The daemon on ``bus``; with ``netns`` it runs inside that namespace (``nsenter`` execs
    it, so the process is the daemon itself) and its own namespace is private to the test.
    nsenter enters the network namespace only: ``ip netns exec`` would also give the daemon
    a mount namespace of its own, where namespaces named after its start are not seen."""
    state_dir = state_dir or Path(tempfile.mkdtemp(prefix="xfrmid-state-"))
    config = state_dir.parent / (state_dir.name + ".conf")
    if config_text is not None:
        config.write_text(config_text)
    log = state_dir.parent / (state_dir.name + ".log")
    out = open(log, "ab")
    proc = subprocess.Popen(
        (["nsenter", f"--net=/run/netns/{netns}"] if netns else [])
        + [sys.executable, "-X", "faulthandler", "-m", "xfrmid.daemon", "--bus", bus.address, "--config", str(config),
         "--state-dir", str(state_dir), "--log-level", "debug", *args],
        stdout=out, stderr=subprocess.STDOUT, cwd=TOP,
    )
    daemon = Daemon(bus, proc, log, state_dir, config)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"xfrmid exited with {proc.returncode}:\n{daemon.log_text()}")
        probe = busctl(bus.address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus", "NameHasOwner", "s", "org.xfrmid1", check=False)
        if probe.stdout.strip() == "b true":
            return daemon
        time.sleep(0.5)
    proc.send_signal(signal.SIGABRT)  # faulthandler writes where it is stuck into the log
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    raise RuntimeError(f"xfrmid did not take its bus name in {timeout}s:\n{daemon.log_text()}")


# One bus and one daemon for all bus test modules of a run: the VM is slow to
# start Python, and the tests use distinct names and clean up after themselves.
_SHARED: dict[str, object] = {}


@pytest.fixture(scope="session")
def private_bus():
    if "bus" not in _SHARED:
        _SHARED["bus"] = start_bus(policy=True)
    yield _SHARED["bus"]
    bus = _SHARED.pop("bus", None)
    if bus is not None:
        bus.stop()


@pytest.fixture(scope="session")
def xfrmid(private_bus):
    if "daemon" not in _SHARED:
        _SHARED["daemon"] = start_daemon(private_bus)
    daemon = _SHARED["daemon"]
    yield daemon
    if _SHARED.pop("daemon", None) is not None:
        rc = daemon.stop()
        assert rc == 0, f"xfrmid stopped with {rc}:\n{daemon.log_text()[-3000:]}"


@pytest.fixture
async def client(xfrmid):
    from xfrmid.client import Client

    c = await Client.connect(xfrmid.address)
    yield c
    c.close()



async def delivered(listener) -> None:
    """Return once every signal xfrmid emitted before reached ``listener`` (an xfrmid.client.Client):
    a Ping xfrmid answers after them travels the same way, and the bus keeps one sender's order."""
    from dbus_fast import Message, MessageType

    reply = await listener.bus.call(Message(destination="org.xfrmid1", path="/org/xfrmid1",
                                            interface="org.freedesktop.DBus.Peer", member="Ping"))
    assert reply.message_type == MessageType.METHOD_RETURN, reply.body


def ip_json(*args: str, netns: str | None = None):
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def link_present(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
