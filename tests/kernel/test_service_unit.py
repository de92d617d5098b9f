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
import time
from pathlib import Path

import pytest

from .nspawn import TOP, install, nspawn_command, prepare_root

HERE = Path(__file__).resolve().parent / "service_unit"
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21


@pytest.fixture(scope="module")
def run():
    # Results and the container's console where the host can read them.
    out = TOP / "build" / "service-unit"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    made = prepare_root("xfrmid-unit")
    try:
        install(made.root, HERE / "xfrmid-check.service", "/etc/systemd/system/xfrmid-check.service")
        install(made.root, HERE / "check.sh", "/xfrmid-test/check.sh", 0o755)
        started = time.monotonic()
        with open(out / "console.log", "w") as console:
            proc = subprocess.run(
                nspawn_command(made, "xfrmid-check.service", f"--bind={out}:/out"),
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
        made.cleanup()


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
