"""xfrmid.service under a real systemd: the unit as shipped, with its sandbox.

A systemd-nspawn container boots the VM's own root file system (through an
overlay) with systemd as PID 1 and the project's unit, D-Bus activation file,
bus policy and sysusers file installed where the package puts them (Debian 12's
systemd is 252: no systemd/notify-reload.conf, which the package installs only
for systemd 253 or newer, so the unit runs as Type=notify). Its
default unit, service_unit/check.sh, drives xfrmid.service through D-Bus
activation, systemctl and xfrmctl and writes what it saw to /out; the tests
below read that. The container shares the VM's kernel, so the interfaces are
real, but runs in a network namespace of its own: two xfrmid daemons in one
namespace would each remove the other's marked interfaces as crash leftovers
(the other kernel tests' shared daemon runs in the VM's root namespace).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "service_unit"
BIN = TOP / ".venv" / "bin"
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


def _install(root: Path, source: Path, target: str, mode: int = 0o644) -> None:
    path = root / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    path.chmod(mode)


@pytest.fixture(scope="module")
def run():
    nspawn = shutil.which("systemd-nspawn")
    assert nspawn, "systemd-nspawn is missing: run 'make deps' (Debian package systemd-container)"
    base = Path(tempfile.mkdtemp(prefix="xfrmid-unit-", dir="/tmp"))
    # The guest's /tmp is itself an overlay, which cannot hold an overlay's
    # upper layer: give the container's writable layer a tmpfs of its own.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "xfrmid-unit", str(base)], check=True, timeout=60)
    root = base / "root"
    netns = f"xfrmid-unit-{base.name[-8:]}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=60)
    for name in ("upper", "work", "root"):
        (base / name).mkdir()
    # Results and the container's console where the host can read them.
    out = TOP / "build" / "service-unit"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir=/,upperdir={base / 'upper'},workdir={base / 'work'}", str(root)],
        check=True, timeout=60,
    )
    try:
        _install(root, TOP / "systemd/xfrmid.service", "/etc/systemd/system/xfrmid.service")
        _install(root, HERE / "test-env.conf", "/etc/systemd/system/xfrmid.service.d/test-env.conf")
        binds = []
        if TOP.is_relative_to("/tmp"):
            # A checkout under /tmp (a CI clone, say) holds the venv the console
            # scripts run from. systemd-nspawn mounts an empty tmpfs on the
            # container's /tmp, so bind the checkout back in; and PrivateTmp=yes
            # would hide it from the service again.
            binds.append(f"--bind-ro={TOP}")
            (root / "etc/systemd/system/xfrmid.service.d/tmp-checkout.conf").write_text(
                "[Service]\nPrivateTmp=no\n"
            )
        _install(root, HERE / "xfrmid-check.service", "/etc/systemd/system/xfrmid-check.service")
        _install(root, HERE / "check.sh", "/xfrmid-test/check.sh", 0o755)
        _install(root, TOP / "dbus/org.xfrmid1.conf", "/usr/share/dbus-1/system.d/org.xfrmid1.conf")
        _install(root, TOP / "dbus/org.xfrmid1.service", "/usr/share/dbus-1/system-services/org.xfrmid1.service")
        _install(root, TOP / "systemd/xfrmid.sysusers", "/usr/lib/sysusers.d/xfrmid.conf")
        _install(root, TOP / "packaging/iproute2/rt_protos.d/xfrmid.conf", "/etc/iproute2/rt_protos.d/xfrmid.conf")
        # The console scripts pip installed from this tree stand in for the package's.
        _install(root, BIN / "xfrmid", "/usr/bin/xfrmid", 0o755)
        _install(root, BIN / "xfrmctl", "/usr/bin/xfrmctl", 0o755)
        (root / "etc/xfrmid/xfrmid.conf").unlink(missing_ok=True)
        # Emulated CPU: xfrmid takes minutes to start, longer than dbus-daemon
        # waits for an activated service by default (25 s).
        (root / "etc/dbus-1/system-local.conf").write_text(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
            '<busconfig><limit name="service_start_timeout">900000</limit></busconfig>\n'
        )
        started = time.monotonic()
        with open(out / "console.log", "w") as console:
            proc = subprocess.run(
                [nspawn, "-q", "-D", str(root), "--register=no", "--keep-unit",
                 "--capability=CAP_NET_ADMIN", f"--network-namespace-path=/run/netns/{netns}",
                 f"--bind={out}:/out", *binds,
                 "-b", "--", "--unit=xfrmid-check.service"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, timeout=1500,
            )
        seconds = time.monotonic() - started
        facts = {}
        if (out / "facts").exists():
            for line in (out / "facts").read_text().splitlines():
                key, _, value = line.partition("=")
                facts[key] = value
        files = {p.name: p.read_text(errors="replace") for p in out.iterdir() if p.is_file()}
        if "done" not in facts:
            pytest.fail(
                f"the container checks did not finish (nspawn exit {proc.returncode}, {seconds:.0f} s); "
                f"see {out}\n{files.get('check.log', '')[-4000:]}\n{files.get('status.txt', '')[-3000:]}\n"
                f"{files.get('journal.txt', '')[-3000:]}\n{files.get('console.log', '')[-3000:]}"
            )
        yield facts, files
    finally:
        subprocess.run(["umount", "-l", str(root)], timeout=60)
        subprocess.run(["umount", "-l", str(base)], timeout=60)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def test_dbus_activation_starts_the_notify_unit(run):
    facts, files = run
    assert facts["enable_rc"] == "0", files["enable.txt"]
    assert facts["alias"].endswith("/xfrmid.service")
    assert facts["before_activation"] == "inactive"
    assert facts["activation_rc"] == "0", files["activation.txt"]
    assert facts["active"] == "active/running"
    assert facts["type"] == "notify"
    assert facts["main_pid_nonzero"] == "yes"
    assert facts["status"], "no STATUS= reached systemd"


def test_sandbox_is_in_force(run):
    _, files = run
    status = dict(line.split(":\t") for line in files["caps.txt"].splitlines())
    assert int(status["CapBnd"], 16) == (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # SystemCallFilter= is a seccomp filter


def test_interfaces_work_inside_the_sandbox(run):
    facts, files = run
    assert facts["create_rc"] == "0", files["create.txt"]
    # A namespace created after the daemon started: setns works and the
    # /run/netns mount reaches the service's own mount namespace.
    assert facts["create_netns_rc"] == "0", files["create_netns.txt"]
    assert facts["netns_link"].split("@")[0] == "ipsec732"
    assert facts["state_file"] == "yes"
    assert '"ipsec731"' in files["list.txt"] and '"ipsec732"' in files["list.txt"]


def test_watchdog_pings_reach_systemd(run):
    facts, _ = run
    assert facts["watchdog_usec"] == "30s"
    assert facts["watchdog_seen"] == "yes"


def test_reload_and_a_bad_file_keep_the_daemon(run):
    facts, files = run
    assert facts["reload_rc"] == "0" and facts["reload_logged"] == "0"
    assert facts["bad_reload_rc"] == "0" and facts["bad_reload_logged"] == "0"
    assert facts["bad_reload_active"] == "active"
    assert facts["same_pid_after_reloads"] == "yes"
    journal = files["journal.txt"]
    assert "configuration reloaded" in journal
    assert "line 6: unknown key 'mtuu' in [[interface]] 'ipsec733'; did you mean 'mtu'?" in journal
    assert "keeping the previous configuration" in journal


def test_stop_keeps_the_desired_state_for_the_next_start(run):
    facts, files = run
    assert facts["state_kept"] == "yes", files.get("state.json")


def test_journal_has_structured_fields(run):
    _, files = run
    entries = [json.loads(line) for line in files["journal.json"].splitlines() if line.strip()]
    assert any(e.get("SYSLOG_IDENTIFIER") == "xfrmid" for e in entries)
    assert any(e.get("INTERFACE") == "ipsec731" for e in entries), "no entry carries INTERFACE=ipsec731"


def test_a_disabled_unit_is_not_activated(run):
    facts, files = run
    assert facts["disable_rc"] == "0", files["disable.txt"]
    assert facts["disabled_activation_rc"] != "0", files["disabled_activation.txt"]
    assert facts["disabled_state"] == "inactive"


def test_stop_is_clean(run):
    facts, files = run
    assert facts["delete_rc"] == "0", files["delete.txt"]
    assert facts["stop_result"] == "success"
    assert "stopped" in files["journal.txt"]
