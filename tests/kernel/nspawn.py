"""A systemd-nspawn container with xfrmid installed as the package installs it.

The container boots the VM's own root file system through an overlay (what is
installed on the host is what it has) with systemd as PID 1, in a network
namespace of its own: two xfrmid daemons in one namespace would each remove
the other's marked interfaces as crash leftovers, and the network managers
must not touch the VM's own links.

``prepare_root`` builds the overlay and installs xfrmid's unit, bus files and
console scripts into it; test_service_unit.py boots that once with a unit of
its own. ``Container`` boots it and keeps it up, and the tests drive it from
outside with ``nsenter`` (``run``): systemctl, networkctl, nmcli, journalctl
talk to the container's own systemd and bus.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
BIN = TOP / ".venv" / "bin"
UNIT_DROPINS = Path(__file__).resolve().parent / "service_unit"
# tests/vm/guest unpacks Python's libraries and the project onto the VM's tmpfs;
# the container sees the VM's root without its mounts, so they are bound in again.
GUEST_PYTHON = Path("/tmp/xfrmid-python")
GUEST_PROJECT = Path("/tmp/xfrmid-project/xfrmid")
CONTAINER_PYTHON = "/opt/xfrmid-test/python"
PYTHON_ENV = "/etc/xfrmid-test/python.env"


def install(root: Path, source: Path, target: str, mode: int = 0o644) -> None:
    path = root / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    path.chmod(mode)


def write(root: Path, target: str, text: str, mode: int = 0o644) -> None:
    path = root / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@dataclass
class Root:
    """The container's overlay root, its network namespace and nspawn's extra options."""

    base: Path
    root: Path
    netns: str
    options: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        remove_payload_cgroup()
        subprocess.run(["umount", "-l", str(self.root)], timeout=60)
        subprocess.run(["umount", "-l", str(self.base)], timeout=60)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)


def remove_payload_cgroup() -> None:
    """Remove the cgroup systemd-nspawn made for a container that has ended.

    Without a systemd on the VM's side to clean up after it, nspawn leaves
    ``payload`` (and the container's slices below it) in the cgroup it ran
    in, and the next container in the same VM fails with "Failed to create
    //payload subcgroup: Device or resource busy".
    """
    own = Path("/proc/self/cgroup").read_text().strip().rpartition("::")[2]
    payload = Path("/sys/fs/cgroup") / own.lstrip("/") / "payload"
    if not payload.is_dir():
        return
    try:
        (payload / "cgroup.kill").write_text("1")  # whatever of the container is left
    except OSError:
        pass
    for _ in range(50):
        for directory in sorted((d for d in payload.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            payload.rmdir()
            return
        except OSError:
            time.sleep(0.1)  # killed processes take a moment to leave


def prepare_root(prefix: str) -> Root:
    """A writable overlay over the VM's root, a network namespace, xfrmid installed."""
    assert shutil.which("systemd-nspawn"), "systemd-nspawn is missing: run 'make deps' (Debian package systemd-container)"
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
    # The guest's /tmp is itself an overlay, which cannot hold an overlay's
    # upper layer: give the container's writable layer a tmpfs of its own.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", prefix, str(base)], check=True, timeout=60)
    made = Root(base, base / "root", f"{prefix}-{base.name[-8:]}")
    try:
        for name in ("upper", "work", "root"):
            (base / name).mkdir()
        subprocess.run(["ip", "netns", "add", made.netns], check=True, timeout=60)
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/,upperdir={base / 'upper'},workdir={base / 'work'}", str(made.root)],
            check=True, timeout=60,
        )
        _install_xfrmid(made)
    except BaseException:
        made.cleanup()
        raise
    return made


def _install_xfrmid(made: Root) -> None:
    root = made.root
    install(root, TOP / "systemd/xfrmid.service", "/etc/systemd/system/xfrmid.service")
    install(root, UNIT_DROPINS / "test-env.conf", "/etc/systemd/system/xfrmid.service.d/test-env.conf")
    if TOP.is_relative_to("/tmp"):
        # A checkout under /tmp (a CI clone, say) holds the venv the console
        # scripts run from. systemd-nspawn mounts an empty tmpfs on the
        # container's /tmp, so bind the checkout back in; and PrivateTmp=yes
        # would hide it from the service again.
        made.options.append(f"--bind-ro={TOP}")
        write(root, "/etc/systemd/system/xfrmid.service.d/tmp-checkout.conf", "[Service]\nPrivateTmp=no\n")
    if TOP.is_relative_to("/root") or TOP.is_relative_to("/home"):
        # A root user's clone: ProtectHome= would hide the venv from the service too.
        write(root, "/etc/systemd/system/xfrmid.service.d/home-checkout.conf",
              f'[Service]\nBindReadOnlyPaths="{TOP}"\n')
    install(root, TOP / "dbus/org.xfrmid1.conf", "/usr/share/dbus-1/system.d/org.xfrmid1.conf")
    install(root, TOP / "dbus/org.xfrmid1.service", "/usr/share/dbus-1/system-services/org.xfrmid1.service")
    install(root, TOP / "systemd/xfrmid.sysusers", "/usr/lib/sysusers.d/xfrmid.conf")
    install(root, TOP / "packaging/iproute2/rt_protos.d/xfrmid.conf", "/etc/iproute2/rt_protos.d/xfrmid.conf")
    # The console scripts pip installed from this tree stand in for the package's.
    install(root, BIN / "xfrmid", "/usr/bin/xfrmid", 0o755)
    install(root, BIN / "xfrmctl", "/usr/bin/xfrmctl", 0o755)
    (root / "etc/xfrmid/xfrmid.conf").unlink(missing_ok=True)
    # Emulated CPU: xfrmid takes minutes to start, longer than dbus-daemon
    # waits for an activated service by default (25 s).
    write(root, "/etc/dbus-1/system-local.conf",
          '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
          ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
          '<busconfig><limit name="service_start_timeout">900000</limit></busconfig>\n')


def fast_python(made: Root, *units: str) -> bool:
    """Give ``units`` the guest's tmpfs copies of Python's libraries and of xfrmid.

    Python in the emulated VM imports from the uncached 9p root at about half
    a second per module; a program NetworkManager starts must own its bus name
    within 5 s. Only the test's speed changes: the same files, read from tmpfs.
    False (and nothing done) when the guest has no such copies.
    """
    if not (GUEST_PYTHON / "site").is_dir() or not (GUEST_PROJECT / "daemon.py").is_file():
        return False
    made.options += [f"--bind-ro={GUEST_PYTHON}:{CONTAINER_PYTHON}", f"--bind-ro={GUEST_PROJECT}:{TOP / 'xfrmid'}"]
    paths = [f"{CONTAINER_PYTHON}/stdlib", f"{CONTAINER_PYTHON}/stdlib/lib-dynload", f"{CONTAINER_PYTHON}/site"]
    write(made.root, PYTHON_ENV, f"PYTHONPATH={':'.join(paths)}\nPYTHONDONTWRITEBYTECODE=1\n")
    for unit in units:
        write(made.root, f"/etc/systemd/system/{unit}.d/test-python.conf",
              f"[Service]\nEnvironmentFile=-{PYTHON_ENV}\n")
    return True


def nspawn_command(made: Root, unit: str, *extra: str) -> list[str]:
    """systemd-nspawn booting ``made`` with ``unit`` as the goal, in its namespace."""
    return ["systemd-nspawn", "-q", "-D", str(made.root), "--register=no", "--keep-unit",
            "--capability=CAP_NET_ADMIN", f"--network-namespace-path=/run/netns/{made.netns}",
            *made.options, *extra, "-b", "--", f"--unit={unit}"]


class Container:
    """A booted container (``default_unit`` as its goal), driven with nsenter."""

    def __init__(self, made: Root, console: Path, default_unit: str = "basic.target") -> None:
        self.made = made
        self.console_path = console
        self.default_unit = default_unit
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.boot_seconds = 0.0

    @property
    def root(self) -> Path:
        return self.made.root

    @property
    def netns(self) -> str:
        return self.made.netns

    def boot(self, timeout: float = 900) -> None:
        started = time.monotonic()
        console = open(self.console_path, "w")
        self.proc = subprocess.Popen(
            nspawn_command(self.made, self.default_unit),
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
        )
        console.close()
        deadline = started + timeout
        while not self.pid:
            self._alive_or_fail()
            self.pid = self._init_pid()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the container's systemd did not appear within {timeout:.0f} s")
            time.sleep(0.5)
        # Until systemd listens on its private socket, systemctl cannot ask it.
        state = ""
        while state not in ("running", "degraded"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the container did not finish booting ({state!r}):\n{self.console()[-3000:]}")
            proc = self.run("systemctl is-system-running --wait", check=False, timeout=left)
            state = proc.stdout.strip() or proc.stderr.strip()
            if state not in ("running", "degraded"):
                time.sleep(1)
        self.boot_seconds = time.monotonic() - started

    def _init_pid(self) -> int:
        """PID (in the VM) of the container's systemd: a child of systemd-nspawn."""
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == self.proc.pid and comm == "systemd":
                return int(entry.name)
        return 0

    def _alive_or_fail(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited ({self.proc.returncode}):\n{self.console()[-3000:]}")

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def run(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a bash script inside the container (all its namespaces, its root)."""
        self._alive_or_fail()
        # timeout(1) inside: a hung command must not keep the pipes open past the limit
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", "timeout", "-k", "5", str(int(timeout)),
             "/bin/bash", "-c", script],
            capture_output=True, text=True, timeout=timeout + 30,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "TERM": "dumb"},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"in the container, failed ({proc.returncode}): {script}\n{proc.stdout}{proc.stderr}")
        return proc

    def journal(self, *units: str, lines: int = 400) -> str:
        """The container's journal (of ``units``, or all of it), last ``lines`` lines."""
        select = " ".join(f"-u {u}" for u in units)
        return self.run(f"journalctl -b --no-pager -o short-monotonic -n {lines} {select}",
                        check=False, timeout=120).stdout

    def wait_active(self, unit: str, timeout: float = 600) -> float:
        """Seconds until ``unit`` is active; raises with its journal if it fails or times out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.run(f"systemctl show -p ActiveState --value {unit}", check=False).stdout.strip()
            if state == "active":
                return time.monotonic() - started
            if state == "failed":
                break
            time.sleep(1)
        raise AssertionError(f"{unit} is not active after {time.monotonic() - started:.0f} s\n{self.journal(unit)}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # systemd-nspawn asks the container's systemd to power off
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.made.cleanup()

