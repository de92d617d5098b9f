"""Real libreswan pluto pairs in network namespaces, keyed by xfrmid-updown.

Three namespaces per pair, the peers not on-link::

    west (eth0 192.1.2.45, 2001:db8:1:2::45) -- rtr -- (eth0 192.1.3.23, 2001:db8:1:3::23) east

``rtr`` forwards between its two links; each side's default route points at
it. Each side has a dummy ``lan0`` with its inside addresses (the subnets the
connections protect). A pluto runs in west and one in east, each with its own
configuration, secrets, NSS database, run directory and log; their
connections name ``xfrmid-updown`` as ``leftupdown=``/``rightupdown=``
against one xfrmid on a private bus, so each side's ipsec interface is made
in the namespace that side's pluto runs in, which the helper finds itself.

libreswan 4.10 is Debian's package; 5.4 is built from its source by ``make
libreswan`` into build/libreswan-5.4 for the prefix named in its PREFIX file,
which is linked here to the build (the VM's root is read-only; /run is not).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .bus_fixtures import TOP, Daemon, start_bus, start_daemon, wait_for
from .conftest import add_netns, del_netns, ip_run, new_netns_name

BUILD = TOP / "build" / "libreswan-5.4"
# What pluto keeps in its bounding set, so all its children (updown) get as root
# (libreswan's plutomain.c; 5.x added CAP_SETPCAP). test_pluto_devices checks it
# against the running plutos; test_updown runs the helper with it.
PLUTO_CHILD_CAPS = {4: ("net_admin", "net_raw", "dac_read_search"),
                    5: ("net_admin", "net_raw", "dac_read_search", "setpcap")}
PSK = "xfrmid-pluto-test-secret-0123456789"


@dataclass(frozen=True)
class Libreswan:
    """One libreswan: where its programs are, and what its configuration needs."""

    version: str
    libexec: Path

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def program(self, name: str) -> str:
        return str(self.libexec / name)

    def setup_lines(self) -> list[str]:
        """``config setup``: libreswan 5 leaves the ipsec device to xfrmid."""
        return ["plutodebug=none", "logtime=yes"] + (["ipsec-interface-managed=no"] if self.major >= 5 else [])

    def conn_defaults(self) -> list[str]:
        version = "keyexchange=ikev2" if self.major >= 5 else "ikev2=insist"
        # retransmit-timeout: the responder waits for its updown calls, slow under emulation
        return [version, "authby=secret", "retransmit-timeout=120s"]

    def pluto_args(self) -> list[str]:
        return ["--no-dnssec"] if self.major < 5 else []


def debian_libreswan() -> Libreswan:
    found = Libreswan("4.10", Path("/usr/libexec/ipsec"))
    assert Path(found.program("pluto")).exists(), "Debian's libreswan is missing: run 'make deps'"
    version = subprocess.run([found.program("pluto"), "--version"], capture_output=True, text=True).stdout
    assert "4.10" in version, version
    return found


def built_libreswan() -> Libreswan:
    """libreswan 5.4 from build/libreswan-5.4, reachable at the prefix it was compiled for."""
    assert (BUILD / "prefix/libexec/ipsec/pluto").exists() and (BUILD / "PREFIX").exists(), (
        "libreswan 5.4 is not built: run 'make libreswan' (make test does)"
    )
    prefix = Path((BUILD / "PREFIX").read_text().strip())
    if not (prefix / "libexec/ipsec/pluto").exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        if prefix.is_symlink():
            prefix.unlink()
        prefix.symlink_to(BUILD / "prefix")
    found = Libreswan("5.4", prefix / "libexec/ipsec")
    version = subprocess.run([found.program("pluto"), "--version"], capture_output=True, text=True).stdout
    assert "5.4" in version, version
    return found


# ---- the namespaces ----------------------------------------------------------

@dataclass(frozen=True)
class Side:
    name: str  # "west" or "east"
    netns: str
    v4: str
    v6: str
    gw4: str
    gw6: str


WEST_INSIDE = ("192.0.1.254/24", "192.0.11.254/24", "192.0.21.254/24", "2001:db8:0:1::254/64")
EAST_INSIDE = ("192.0.2.254/24", "192.0.12.254/24", "192.0.22.254/24", "2001:db8:0:2::254/64")


@dataclass
class Sites:
    west: Side
    east: Side
    rtr: str

    def all(self) -> tuple[str, str, str]:
        return self.west.netns, self.east.netns, self.rtr


def make_sites(tag: str) -> Sites:
    """west -- rtr -- east as in the module docstring; ``tag`` keeps the names apart."""
    west, east, rtr = (new_netns_name(f"{p}{tag}") for p in ("w", "e", "r"))
    for name in (west, east, rtr):
        add_netns(name)
    subprocess.run(["modprobe", "dummy"], capture_output=True)
    sites = Sites(
        Side("west", west, "192.1.2.45", "2001:db8:1:2::45", "192.1.2.254", "2001:db8:1:2::254"),
        Side("east", east, "192.1.3.23", "2001:db8:1:3::23", "192.1.3.254", "2001:db8:1:3::254"),
        rtr,
    )
    for side, port, inside in ((sites.west, "rw", WEST_INSIDE), (sites.east, "re", EAST_INSIDE)):
        ip_run("link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", rtr, netns=side.netns)
        ip_run("addr", "add", f"{side.v4}/24", "dev", "eth0", netns=side.netns)
        ip_run("addr", "add", f"{side.v6}/64", "dev", "eth0", "nodad", netns=side.netns)
        ip_run("link", "set", "eth0", "up", netns=side.netns)
        ip_run("route", "add", "default", "via", side.gw4, netns=side.netns)
        ip_run("-6", "route", "add", "default", "via", side.gw6, netns=side.netns)
        ip_run("addr", "add", f"{side.gw4}/24", "dev", port, netns=rtr)
        ip_run("addr", "add", f"{side.gw6}/64", "dev", port, "nodad", netns=rtr)
        ip_run("link", "set", port, "up", netns=rtr)
        ip_run("link", "add", "lan0", "type", "dummy", netns=side.netns)
        for cidr in inside:
            ip_run("addr", "add", cidr, "dev", "lan0", *(["nodad"] if ":" in cidr else []), netns=side.netns)
        ip_run("link", "set", "lan0", "up", netns=side.netns)
    for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        sysctl(rtr, key)
    for side in (sites.west, sites.east):
        # The SPI pluto reserves for a Child SA is a larval SA the kernel drops after
        # xfrm_acq_expires (30 s). Under emulation the responder's updown calls (a
        # Python start each, several seconds in the VM) can outlast that before the
        # initiator installs the SA; a real host takes a fraction of a second.
        sysctl(side.netns, "net.core.xfrm_acq_expires=600")
    return sites


def sysctl(netns: str, setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", setting], check=True, capture_output=True)


def drop_sites(sites: Sites) -> None:
    for name in sites.all():
        del_netns(name)


# ---- pluto -------------------------------------------------------------------

def updown_command(bus_address: str) -> str:
    """leftupdown= for the helper: ``python -m xfrmid.integrations.updown --bus ADDRESS``.

    pluto 5 runs it with an environment of its own making (PATH and PLUTO_*), so the
    VM's Python paths (tests/vm/guest: the standard library, site-packages and xfrmid
    on tmpfs) are passed along; when they hold everything the helper imports, ``-S``
    skips the site initialisation, a second of each of pluto's many updown calls in
    the emulated VM.
    """
    path = os.environ.get("PYTHONPATH", "")
    flags = ["-S"] if path and _importable_from(path.split(os.pathsep), ("xfrmid", "dbus_fast")) else []
    env = ["env", f"PYTHONPATH={path}"] if path else []
    parts = [*env, sys.executable, *flags, "-m", "xfrmid.integrations.updown", "--bus", bus_address]
    return " ".join(shlex.quote(p) for p in parts)


def _importable_from(entries: list[str], packages: tuple[str, ...]) -> bool:
    return all(any(e and (Path(e) / package / "__init__.py").exists() for e in entries) for package in packages)


@dataclass
class Pluto:
    """One pluto: its side, files and process."""

    side: Side
    libreswan: Libreswan
    directory: Path
    process: subprocess.Popen | None = None
    conns: dict[str, str] = field(default_factory=dict)  # name -> conn text

    @property
    def run_dir(self) -> Path:
        return self.directory / "run"

    @property
    def config(self) -> Path:
        return self.directory / "ipsec.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "pluto.log"

    def log(self, since: int = 0) -> str:
        """pluto's log (from offset ``since``: see ``log_mark``; the pairs serve many tests)."""
        return self.log_path.read_text(errors="replace")[since:] if self.log_path.exists() else ""

    def log_mark(self) -> int:
        return len(self.log())

    def write_config(self) -> None:
        setup = "\n".join(f"\t{line}" for line in self.libreswan.setup_lines())
        defaults = "\n".join(f"\t{line}" for line in self.libreswan.conn_defaults())
        body = "".join(self.conns.values())
        self.config.write_text(f"config setup\n{setup}\n\nconn %default\n{defaults}\n\n{body}")

    def start(self, timeout: float = 600) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "pluto.pid").unlink(missing_ok=True)
        self.write_config()
        cmd = ["ip", "netns", "exec", self.side.netns, self.libreswan.program("pluto"), "--nofork",
               "--config", str(self.config), "--secretsfile", str(self.directory / "ipsec.secrets"),
               "--nssdir", str(self.directory / "nss"), "--rundir", str(self.run_dir),
               "--logfile", str(self.log_path), *self.libreswan.pluto_args()]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=open(self.directory / "pluto.stderr", "ab"))
        ctl = self.run_dir / "pluto.ctl"
        if not wait_for(lambda: ctl.exists() or self.process.poll() is not None, timeout, 0.2) or not ctl.exists():
            raise AssertionError(f"{self.side.name} pluto {self.libreswan.version} did not start:\n{self.log()[-3000:]}")
        # pluto answers whack only once it listens; a status round trip says so
        self.whack("--status", timeout=timeout)

    def whack(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.side.netns, self.libreswan.program("whack"), "--rundir", str(self.run_dir), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode not in (0, 3):  # 3: whack's "not found"-style answers
            raise AssertionError(f"{self.side.name}: whack {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}{proc.stderr}\n--- pluto log ---\n{self.log()[-4000:]}")
        return proc

    def add(self, name: str, text: str) -> None:
        """Load connection ``name`` (its ``conn`` section) into the running pluto."""
        self.conns[name] = text
        self.write_config()
        cmd = ["ip", "netns", "exec", self.side.netns, self.libreswan.program("addconn"), "--config", str(self.config),
               "--ctlsocket", str(self.run_dir / "pluto.ctl"), name]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"{self.side.name}: addconn {name} failed:\n{proc.stdout}{proc.stderr}\n{self.log()[-3000:]}")

    def delete(self, name: str) -> None:
        self.whack("--delete", "--name", name)
        self.conns.pop(name, None)

    def shutdown(self, timeout: float = 300) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.whack("--shutdown", check=False, timeout=timeout)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            return self.process.wait()

    def capability_bounding_set(self) -> int:
        """CapBnd of the running pluto: what every program it runs keeps at most."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^CapBnd:\s*([0-9a-f]+)", status, re.M).group(1), 16)


def new_pluto(side: Side, libreswan: Libreswan, root: Path) -> Pluto:
    directory = root / side.name
    (directory / "nss").mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{directory / 'nss'}", "--empty-password"],
                   check=True, capture_output=True, timeout=300)
    (directory / "ipsec.secrets").write_text(f'%any %any : PSK "{PSK}"\n')
    (directory / "ipsec.secrets").chmod(0o600)
    return Pluto(side, libreswan, directory)


@dataclass
class Pair:
    """west's and east's plutos over ``sites``."""

    sites: Sites
    west: Pluto
    east: Pluto
    updown: str
    root: Path

    @property
    def libreswan(self) -> Libreswan:
        return self.west.libreswan

    def plutos(self) -> tuple[Pluto, Pluto]:
        return self.west, self.east

    def conn(self, name: str, *, ipsec_interface: int, left_subnet: str, right_subnet: str,
             family: int = 4, left_source: str | None = None, right_source: str | None = None,
             extra: tuple[str, ...] = ()) -> str:
        """A conn section both sides load (libreswan orients it by its own addresses)."""
        w, e = self.sites.west, self.sites.east
        # IDs of its own: pluto would otherwise carry every connection between the two over
        # one IKE SA, and deleting one connection takes the others' Child SAs down with it
        lines = [f"conn {name}",
                 f"left={w.v4 if family == 4 else w.v6}", f"right={e.v4 if family == 4 else e.v6}",
                 f"leftid=@west-{name}", f"rightid=@east-{name}",
                 f"leftsubnet={left_subnet}", f"rightsubnet={right_subnet}",
                 f"ipsec-interface={ipsec_interface}",
                 f'leftupdown="{self.updown}"', f'rightupdown="{self.updown}"', "auto=add"]
        if left_source:
            lines.append(f"leftsourceip={left_source}")
        if right_source:
            lines.append(f"rightsourceip={right_source}")
        lines += list(extra)
        return "\n\t".join(lines) + "\n\n"

    def up(self, name: str, text: str, timeout: float = 600) -> str:
        """Load ``name`` on both sides and bring it up from west; pluto's answer."""
        self.east.add(name, text)
        self.west.add(name, text)
        out = self.west.whack("--initiate", "--name", name, timeout=timeout)
        answer = out.stdout + out.stderr
        assert re.search(r"(IPsec SA established|established Child SA)", answer), (
            f"{name} did not come up:\n{answer}\n--- west ---\n{self.west.log()[-4000:]}\n"
            f"--- east ---\n{self.east.log()[-4000:]}"
        )
        return answer

    def delete(self, name: str) -> None:
        self.west.delete(name)
        self.east.delete(name)

    def stop(self) -> None:
        for pluto in self.plutos():
            pluto.shutdown()


def start_pair(libreswan: Libreswan, bus_address: str, tag: str) -> Pair:
    sites = make_sites(tag)
    root = Path(tempfile.mkdtemp(prefix=f"xfrmid-pluto-{tag}-"))
    pair = Pair(sites, new_pluto(sites.west, libreswan, root), new_pluto(sites.east, libreswan, root),
                updown_command(bus_address), root)
    for pluto in pair.plutos():
        pluto.start()
    return pair


def stop_pair(pair: Pair, keep_logs: Path | None = None) -> None:
    pair.stop()
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for pluto in pair.plutos():
            if pluto.log_path.exists():
                shutil.copyfile(pluto.log_path, keep_logs / f"{pluto.side.name}.log")
    drop_sites(pair.sites)
    shutil.rmtree(pair.root, ignore_errors=True)


# ---- xfrmid for the plutos, and the pairs ------------------------------------------

@dataclass
class PlutoXfrmid:
    """xfrmid on a private bus, in a namespace of its own (the VM's is the shared
    test daemon's: two daemons in one namespace take each other's interfaces for
    crash leftovers); it manages the pairs' namespaces by name."""

    daemon: Daemon
    netns: str

    @property
    def address(self) -> str:
        return self.daemon.address

    def configure(self, text: str) -> None:
        """Replace xfrmid.conf and have the daemon read it (Reload)."""
        self.daemon.config.write_text(text)
        call(self.address, lambda c: c.reload())

    def kill_and_restart(self, timeout: float = 600) -> tuple[float, float]:
        """SIGKILL, then the same daemon again (state directory, config); when each happened."""
        killed = time.time()
        self.daemon.process.send_signal(signal.SIGKILL)
        self.daemon.process.wait(60)
        self.daemon = start_daemon(self.daemon.bus, state_dir=self.daemon.state_dir, netns=self.netns,
                                   timeout=timeout)
        return killed, time.time()


def call(address: str, what):
    """Run ``what(client)`` against xfrmid on ``address`` and return its result."""
    from xfrmid.client import Client

    async def run():
        client = await Client.connect(address)
        try:
            return await what(client)
        finally:
            client.close()

    return asyncio.run(run())


def interfaces(address: str, netns: str) -> dict[str, dict]:
    """xfrmid's interfaces in ``netns``: name -> the properties that matter here."""
    keep = ("IfId", "Owned", "Owners", "Addresses", "Routes", "Mark", "MarkMask")
    found = call(address, lambda c: c.managed_objects())
    return {p["Name"]: {k: p[k] for k in keep} for p in found.values() if p.get("Netns") == netns}


_XFRMID: dict[str, PlutoXfrmid] = {}
_PAIRS: dict[str, "Pair"] = {}
LOGS = TOP / "build" / "reports" / "pluto"


@pytest.fixture(scope="session")
def pluto_xfrmid():
    if "daemon" not in _XFRMID:
        bus = start_bus(policy=True)
        own = new_netns_name("xdp")
        add_netns(own)
        _XFRMID["daemon"] = PlutoXfrmid(start_daemon(bus, netns=own), own)
    yield _XFRMID["daemon"]
    found = _XFRMID.pop("daemon", None)
    for pair in list(_PAIRS.values()):
        stop_pair(pair, LOGS / pair.libreswan.version)
    _PAIRS.clear()
    if found is not None:
        rc = found.daemon.stop()
        found.daemon.bus.stop()
        del_netns(found.netns)
        if LOGS.is_dir():
            shutil.copyfile(found.daemon.log, LOGS / "xfrmid.log")
        assert rc == 0, f"xfrmid stopped with {rc}:\n{found.daemon.log_text()[-3000:]}"


@pytest.fixture(scope="session", params=["4.10", "5.4"])
def pluto_pair(request, pluto_xfrmid) -> "Pair":
    """The west/east pluto pair of that libreswan version: one per session and version
    (parametrize ``pluto_pair`` indirectly for one version only)."""
    version = request.param
    if version not in _PAIRS:
        libreswan = debian_libreswan() if version == "4.10" else built_libreswan()
        _PAIRS[version] = start_pair(libreswan, pluto_xfrmid.address, version.replace(".", ""))
    return _PAIRS[version]


@pytest.fixture
def pair(pluto_pair) -> "Pair":
    """``pluto_pair``, both plutos running (a test that shut them down left them so)."""
    return running(pluto_pair)


def running(pair: "Pair") -> "Pair":
    for pluto in pair.plutos():
        if pluto.process is None or pluto.process.poll() is not None:
            pluto.conns.clear()
            pluto.start()
    return pair
