"""Shared fixtures for kernel tests (run as root inside the test VM).

- ``netns``: a fresh, uniquely named network namespace per test, deleted after.
- ``netns_factory``: more of them (``netns_factory()`` -> name).
- ``kernel``: the real kernel backend (``xfrmid.kernel.open_kernel()``), closed after the test.
- ``monitors``: the drift watcher's monitor factory the daemon uses (netlink monitors),
  tapped: ``await monitors.barrier(netns)`` returns once the watcher has been fed every
  event of that namespace caused before (monitor_util.TappedMonitors).
- ``ip(...)`` / ``sh(...)``: run iproute2 (``ip -j`` output parsed from JSON).
- ``two_netns``: two namespaces joined by a veth pair, addressed, up; see Topology.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import json
import os
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass

import pytest

from xfrmid.kernel import open_kernel

_counter = itertools.count(1)


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.kernel)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report (and so the JUnit report) also carries the logs of
    any fixture that offers them (``failure_logs()``: e.g. a network manager's journal)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not hasattr(report.longrepr, "addsection"):
        return
    for name, value in getattr(item, "funcargs", {}).items():
        logs = getattr(value, "failure_logs", None)
        if callable(logs):
            try:
                text = logs()
            except Exception as exc:  # the report must not fail for want of logs
                text = f"(could not read the logs: {exc})"
            report.longrepr.addsection(f"logs of {name}", text)


def sh(command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a shell command; fail the test with its output if it fails and check is set."""
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {command}\n{proc.stdout}{proc.stderr}")
    return proc


def ip(*args: str, netns: str | None = None, check: bool = True):
    """``ip -j [-n NETNS] ARGS`` parsed from JSON ([] for empty output)."""
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout) if proc.stdout.strip() else []


def ip_run(*args: str, netns: str | None = None) -> None:
    """``ip [-n NETNS] ARGS`` for side effects."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def link_json(name: str, netns: str | None = None) -> dict:
    """``ip -j -d link show NAME`` as one dict."""
    found = ip("-d", "link", "show", "dev", name, netns=netns)
    assert len(found) == 1, found
    return found[0]


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def new_netns_name(prefix: str = "xt") -> str:
    return f"{prefix}{os.getpid()}-{next(_counter)}"


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def add_netns(name: str) -> None:
    """What `ip netns add NAME && ip -n NAME link set lo up` does, without two forks.

    A thread unshares its network namespace, pins it with a bind mount on
    /run/netns/NAME and brings lo up; the subprocess calls cost ~0.3 s each in
    the emulated VM, this costs milliseconds.
    """
    os.makedirs("/run/netns", exist_ok=True)
    path = f"/run/netns/{name}"
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            _check(_libc.unshare(_CLONE_NEWNET), "unshare")
            own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
            _check(_libc.mount(own.encode(), path.encode(), b"none", _MS_BIND, None), "mount")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", _IFF_UP))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if errors:
        del_netns(name)
        raise errors[0]


def del_netns(name: str) -> None:
    """What `ip netns del NAME` does."""
    path = f"/run/netns/{name}"
    _libc.umount2(path.encode(), _MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@pytest.fixture
def netns_factory():
    made: list[str] = []

    def make(prefix: str = "xt") -> str:
        name = new_netns_name(prefix)
        add_netns(name)
        made.append(name)
        return name

    yield make
    for name in made:
        del_netns(name)


@pytest.fixture
def netns(netns_factory) -> str:
    return netns_factory()


@pytest.fixture
async def kernel():
    k = open_kernel()
    try:
        yield k
    finally:
        await k.close()


@pytest.fixture
def monitors():
    from .monitor_util import TappedMonitors  # it imports this module's helpers

    return TappedMonitors()


@dataclass(frozen=True)
class Topology:
    """Two namespaces joined by veth: ``left``/``right`` names, devices and addresses."""

    left: str
    right: str
    left_dev: str
    right_dev: str
    left_addr: str  # without prefix
    right_addr: str
    prefixlen: int


def make_two_netns(netns_factory, left_addr: str = "192.0.2.1", right_addr: str = "192.0.2.2",
                   prefixlen: int = 24) -> Topology:
    """Build two namespaces joined by a veth pair, addressed and up."""
    left, right = netns_factory("xl"), netns_factory("xr")
    ip_run("link", "add", "vleft", "type", "veth", "peer", "name", "vright", "netns", right, netns=left)
    ip_run("addr", "add", f"{left_addr}/{prefixlen}", "dev", "vleft", netns=left)
    ip_run("addr", "add", f"{right_addr}/{prefixlen}", "dev", "vright", netns=right)
    ip_run("link", "set", "vleft", "up", netns=left)
    ip_run("link", "set", "vright", "up", netns=right)
    return Topology(left, right, "vleft", "vright", left_addr, right_addr, prefixlen)


@pytest.fixture
def two_netns(netns_factory) -> Topology:
    return make_two_netns(netns_factory)
