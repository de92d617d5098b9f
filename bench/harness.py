"""What the benchmarks stand on: a private bus, the daemon in a namespace of its own, ip -batch, timing.

Runs as root inside the test VM. Every benchmark works in network namespaces
it creates (``xfrmid-bench-*``), so it never touches links of other tests and
cleans up by deleting the namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.kernel.bus_fixtures import PrivateBus
from tests.kernel.bus_fixtures import start_bus as start_private_bus

TOP = Path(__file__).resolve().parents[1]


def netns_add(name: str, *, ipv6: bool = True) -> str:
    """A fresh namespace with lo up; ``ipv6=False``: IPv6 disabled on every device in it.

    With IPv6, each device set up adds three IPv6 routes, and the kernel's time to set
    one up grows with the IPv6 routes already there: measured in the VM, 1,000 links
    set up took 2.9 s at 1,000 links and 20.5 s at 6,000, against a flat 0.6 s without
    IPv6. ``make bench-scale`` (50,000) runs without it.
    """
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    if not ipv6:
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                        "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 && "
                        "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def ip_batch(netns: str, lines: list[str], *, force: bool = False) -> float:
    """Run ``ip -batch`` in ``netns``; the seconds it took. Raises on failure unless ``force``."""
    with tempfile.NamedTemporaryFile("w", prefix="xfrmid-bench-", suffix=".batch", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        cmd = ["ip", "-n", netns] + (["-force"] if force else []) + ["-batch", path]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        took = time.perf_counter() - start
    finally:
        os.unlink(path)
    if proc.returncode != 0 and not force:
        raise RuntimeError(f"ip -batch failed in {netns}: {proc.stderr.strip()[:500]}")
    return took


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def start_bus() -> PrivateBus:
    """A private dbus-daemon open to everyone, as the kernel tests use (the bench's caller is root)."""
    return start_private_bus(policy=False)


class Notify:
    """A NOTIFY_SOCKET like systemd's: the daemon's READY=1 ends the start-up measurement."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="xfrmid-bench-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)

    def wait_ready(self, proc: subprocess.Popen, timeout: float) -> float | None:
        """Monotonic time READY=1 arrived, or None (daemon died or timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            self.sock.settimeout(1.0)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic()
        return None

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class StampedLog:
    """The daemon's output, each line written to ``path`` with the seconds since the exec.

    The daemon logs without timestamps when not under journald; the stamps
    (taken when a line arrives through the pipe) say when each start-up
    phase ended.
    """

    def __init__(self, path: Path, pipe, started: float) -> None:
        self.path, self.started = path, started
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        with open(self.path, "a", encoding="utf-8", errors="replace") as out:
            for raw in pipe:
                at = time.monotonic() - self.started
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append((at, line))
                out.write(f"+{at:9.3f} {line}\n")
                out.flush()

    def when(self, needle: str) -> float | None:
        """Seconds from the exec to the first line containing ``needle``."""
        return next((at for at, line in list(self.lines) if needle in line), None)

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


@dataclass
class Daemon:
    process: subprocess.Popen
    log: Path
    state_dir: Path
    started: float  # monotonic time of the exec
    ready: float | None  # monotonic time of READY=1
    profiled: bool = False  # started under py-spy: the daemon is py-spy's child
    output: StampedLog | None = field(default=None, repr=False)

    def phases(self) -> dict[str, float | None]:
        """Seconds from the exec to the end of each start-up phase (from the log's stamps)."""
        out = self.output

        def get(needle: str) -> float | None:
            at = None if out is None else out.when(needle)
            return None if at is None else round(at, 3)

        return {
            "started_s": get(" starting (config "),  # Python start, the daemon module's imports
            "features_logged_s": get("supports XFRM interfaces"),  # pyroute2's import, kernel probe
            "reconciled_s": get("start-up reconcile"),  # dumps, state file, plan, repairs
            "bus_name_s": get("serving org.xfrmid1"),  # watcher, bus, objects exported, name taken
            "ready_s": None if self.ready is None else round(self.ready - self.started, 3),
        }

    def count(self, needle: str) -> int:
        """Lines of the daemon's output so far that contain ``needle``."""
        return 0 if self.output is None else sum(needle in line for _, line in list(self.output.lines))

    def cpu_s(self) -> tuple[float, float]:
        """(user, system) CPU seconds the daemon has used so far."""
        return process_cpu_s(daemon_pid(self))

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        values = {}
        for line in Path(f"/proc/{daemon_pid(self)}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def stop(self) -> int:
        if self.process.poll() is None:
            # the daemon itself, not a py-spy wrapping it (py-spy writes its profile when it exits)
            os.kill(daemon_pid(self), signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.output is not None:
            self.output.join()
        return self.process.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def start_daemon(bus: PrivateBus, netns: str, state_dir: Path, *, timeout: float,
                 profile: str | None = None) -> Daemon:
    """Start xfrmid inside ``netns`` (its own namespace there) and wait for READY=1.

    ``profile``: a file for py-spy's flame graph of this daemon (py-spy must be installed).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir.parent / (state_dir.name + ".conf")
    config.write_text("")
    log = state_dir.parent / (state_dir.name + ".log")
    notify = Notify()
    cmd = [sys.executable, "-m", "xfrmid.daemon", "--bus", bus.address, "--config", str(config),
           "--state-dir", str(state_dir), "--log-level", "info"]
    if profile:
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-o", profile, "-f", "raw",
               "-r", "50", "--nonblocking", "--"] + cmd
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_USEC", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = notify.path
    # TOP first, then what the environment had (in the test VM: the Python libraries
    # on tmpfs, which an installed daemon would read from a local disk)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TOP), os.environ.get("PYTHONPATH")) if p)
    started = time.monotonic()
    proc = subprocess.Popen(["ip", "netns", "exec", netns] + cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=TOP, env=env)
    output = StampedLog(log, proc.stdout, started)
    try:
        ready = notify.wait_ready(proc, timeout)
    finally:
        notify.close()
    daemon = Daemon(proc, log, state_dir, started, ready, profiled=bool(profile), output=output)
    if ready is None:
        daemon.stop()
        raise RuntimeError(f"xfrmid did not become ready within {timeout:.0f}s:\n{daemon.tail()}")
    return daemon


def process_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def daemon_pid(daemon: Daemon) -> int:
    """The daemon's own pid (``ip netns exec`` execs it, py-spy forks it)."""
    if not daemon.profiled:
        return daemon.process.pid
    try:
        children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children").read_text().split()
    except OSError:
        children = []
    return int(children[0]) if children else daemon.process.pid
