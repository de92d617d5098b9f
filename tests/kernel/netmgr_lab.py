"""xfrmid beside a real network manager, in a container under real systemd.

``Lab`` boots a container (tests/kernel/nspawn.py) whose network namespace
holds one uplink, a veth pair's end named ``uplink0``; the other end sits in a
namespace of its own (``peer``) with the gateway's address. Inside, xfrmid
runs as the shipped unit (enabled, D-Bus activated) and gets the objects it promises:
``ipsec7`` with an address, a route and the peer pattern (a route in table 50
and a policy rule). The network manager (systemd-networkd or NetworkManager)
manages the uplink with an address, a route, a route in table 100 and a
policy rule of its own.

``act`` runs one of the manager's actions and reports, from ``ip monitor``
(netlink_changes), which of xfrmid's objects went away and how long each took
to come back. ``failure_logs`` gives both journals for a failing test's report.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field

from . import nspawn
from .netlink_changes import ChangeLog, Loss

UPLINK, PEER_DEV = "uplink0", "uplinkp"
LOCAL, GATEWAY = "198.51.100.2", "198.51.100.1"
IFACE, OWNER = "ipsec7", "conn7"
XFRMID_ADDRESS, XFRMID_ROUTE, XFRMID_PEER = "10.77.0.1/32", "10.77.1.0/24", "198.51.100.77"
# the manager's own objects on the uplink
MANAGER_ROUTE, MANAGER_TABLE_ROUTE, MANAGER_TABLE, MANAGER_RULE_PRIO = "203.0.113.0/24", "192.0.2.128/25", 100, 200
REPAIR_LIMIT = 2.0  # seconds within which xfrmid puts back what a manager removed
OUT = nspawn.TOP / "build" / "reports" / "network-managers"  # CI brings build/reports back
_BUS = "busctl --timeout=600 call org.xfrmid1 /org/xfrmid1 org.xfrmid1.Manager"


def xfrmid_object(key: str) -> bool:
    """Whether ``ip monitor``'s object key is one xfrmid made for the lab."""
    return (key == f"link {IFACE}" or key == f"addr {IFACE} {XFRMID_ADDRESS}"
            or (key.startswith(("route ", "rule ")) and "proto xfrmid" in key))


def manager_object(key: str) -> bool:
    """Whether the key is one of the network manager's own objects on the uplink."""
    return (key == f"addr {UPLINK} {LOCAL}/24" or key.startswith(f"rule {MANAGER_RULE_PRIO}:")
            or (key.startswith("route ") and f"dev {UPLINK}" in key and "proto static" in key))


@dataclass
class Outcome:
    """One action of the manager and what it did to xfrmid's objects."""

    action: str
    seconds: float
    losses: list[Loss]
    output: str

    def lost(self, kind: str | None = None) -> list[Loss]:
        return [loss for loss in self.losses if kind is None or loss.key.startswith(kind + " ")]

    def unrepaired(self) -> list[Loss]:
        return [loss for loss in self.losses if loss.back_after is None or loss.back_after > REPAIR_LIMIT]

    def summary(self) -> str:
        if not self.losses:
            return "nothing of xfrmid's removed"
        parts = []
        for loss in self.losses:
            back = "not back" if loss.back_after is None else f"back after {loss.back_after:.2f} s"
            parts.append(f"{loss.key} removed, {back}")
        return "; ".join(parts)


@dataclass
class Lab:
    manager: str  # the systemd unit: systemd-networkd.service or NetworkManager.service
    label: str
    outcomes: list[Outcome] = field(default_factory=list)
    container: nspawn.Container | None = None
    changes: ChangeLog | None = None
    peer: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    # -- set-up -----------------------------------------------------------------

    def prepare(self) -> nspawn.Root:
        """The container's root, ready for the test's own files (``install``/``write``)."""
        OUT.mkdir(parents=True, exist_ok=True)
        self.made = nspawn.prepare_root(f"xfrmid-{self.label}")
        nspawn.fast_python(self.made, "xfrmid.service", self.manager)
        self.peer = f"{self.made.netns}-peer"
        subprocess.run(["ip", "netns", "add", self.peer], check=True, timeout=60)
        for command in (
            f"ip -n {self.made.netns} link add {UPLINK} type veth peer name {PEER_DEV} netns {self.peer}",
            f"ip -n {self.peer} addr add {GATEWAY}/24 dev {PEER_DEV}",
            f"ip -n {self.peer} link set {PEER_DEV} up",
            f"ip -n {self.peer} link set lo up",
        ):
            subprocess.run(command.split(), check=True, timeout=60)
        return self.made

    def start(self) -> None:
        """Boot, start xfrmid through D-Bus activation, make its objects, watch."""
        started = time.monotonic()
        self.container = nspawn.Container(self.made, OUT / f"{self.label}-console.log")
        self.container.boot()
        self.timings["container boot"] = self.container.boot_seconds
        mark = time.monotonic()
        # D-Bus activation starts an enabled xfrmid (its Alias=dbus-org.xfrmid1.service)
        self.run("systemctl enable xfrmid.service")
        self.run(f"{_BUS} ListInterfaces", timeout=900)
        self.timings["xfrmid start (D-Bus activation)"] = time.monotonic() - mark
        self.run(f"{_BUS} Attach 'ssa{{sv}}' {IFACE} {OWNER} 0"
                 f" && {_BUS} AddAddress 'sssa{{sv}}' {IFACE} {OWNER} {XFRMID_ADDRESS} 0"
                 f" && {_BUS} AddRoute 'sssa{{sv}}' {IFACE} {OWNER} {XFRMID_ROUTE} 0"
                 f" && {_BUS} AddRoute 'sssa{{sv}}' {IFACE} {OWNER} {XFRMID_PEER}/32 1 peer s {XFRMID_PEER}")
        self.changes = ChangeLog(self.made.netns)
        time.sleep(1)  # the monitor is subscribed before the first action
        self.timings["set-up"] = time.monotonic() - started

    def close(self) -> None:
        if self.changes is not None:
            self.changes.close()
        if self.container is not None:
            try:
                (OUT / f"{self.label}-journal.txt").write_text(self.container.journal(lines=20000))
            except Exception:  # the container may be gone already
                pass
            self.container.close()
        elif hasattr(self, "made"):
            self.made.cleanup()
        if self.peer:
            subprocess.run(["ip", "netns", "del", self.peer], capture_output=True, timeout=30)
        self.write_report()

    # -- driving ----------------------------------------------------------------

    def run(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        assert self.container is not None
        return self.container.run(script, check=check, timeout=timeout)

    def act(self, action: str, script: str, check: bool = True) -> Outcome:
        """Run the manager's action, wait until xfrmid's objects are quiet, report."""
        assert self.changes is not None
        start = time.time()
        proc = self.run(script, check=check, timeout=600)
        seconds = time.time() - start
        end = self.changes.settle(start, lambda key: xfrmid_object(key) or manager_object(key))
        outcome = Outcome(action, seconds, self.changes.losses(start, end, xfrmid_object),
                          (proc.stdout + proc.stderr).strip())
        self.outcomes.append(outcome)
        return outcome

    def quiet(self, seconds: float) -> tuple[list[Loss], list[Loss], int]:
        """Leave both alone for ``seconds``: removals of xfrmid's and of the manager's
        objects meanwhile, and how many repairs xfrmid logged."""
        assert self.changes is not None
        start = time.time()
        time.sleep(seconds)
        end = time.time()
        repairs = self.journal_lines("xfrmid.service", "repaired after kernel changes", since=start)
        return (self.changes.losses(start, end, xfrmid_object), self.changes.losses(start, end, manager_object),
                len(repairs))

    # -- what the tests expect ------------------------------------------------------

    def expect_repaired(self, outcome: Outcome) -> None:
        """Whatever the action took is back within REPAIR_LIMIT; nothing of the manager's is missing."""
        assert not outcome.unrepaired(), (
            f"{outcome.action}: {outcome.summary()} (limit {REPAIR_LIMIT} s)\n{outcome.output}")
        self._expect_both_intact(outcome)

    def expect_untouched(self, outcome: Outcome) -> None:
        """The action removed nothing of xfrmid's at all."""
        assert not outcome.losses, f"{outcome.action}: {outcome.summary()}\n{outcome.output}"
        self._expect_both_intact(outcome)

    def _expect_both_intact(self, outcome: Outcome) -> None:
        assert not self.missing_xfrmid_objects(), f"after {outcome.action}: {outcome.summary()}"
        missing = self.missing_manager_objects()
        assert not missing, f"{self.manager}'s own objects are gone after {outcome.action}: {missing}"
        assert not self.xfrmid_removals(), "xfrmid removed something it did not make"

    def expect_no_fight(self, situation: str, seconds: float = 60.0) -> None:
        """Over ``seconds`` left alone: no removals of either's objects and no repairs."""
        xfrmid_losses, manager_losses, repairs = self.quiet(seconds)
        self.timings[f"{seconds:.0f} s left alone ({situation}): {len(xfrmid_losses)} removals of xfrmid's "
                     f"objects, {len(manager_losses)} of {self.manager}'s, {repairs} repairs"] = seconds
        assert not xfrmid_losses, [loss.key for loss in xfrmid_losses]
        assert not manager_losses, [loss.key for loss in manager_losses]
        assert repairs == 0

    # -- reading ----------------------------------------------------------------

    def journal_lines(self, unit: str, needle: str, since: float = 0.0) -> list[str]:
        text = self.run(f"journalctl -b --no-pager -o short-unix -u {unit}", check=False, timeout=120).stdout
        found = []
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            try:
                at = float(stamp)
            except ValueError:
                continue
            if at >= since and needle in rest:
                found.append(line)
        return found

    def xfrmid_removals(self) -> list[str]:
        """xfrmid's reconcile lines that removed something (it must never have to)."""
        lines = self.journal_lines("xfrmid.service", "reconcile")
        return [line for line in lines if re.search(r"\b[1-9]\d* removed", line)]

    def missing_manager_objects(self) -> list[str]:
        """The manager's objects on the uplink that are not there now."""
        ns = self.made.netns
        checks = {
            f"address {LOCAL}/24": f"ip -n {ns} -4 addr show dev {UPLINK} to {LOCAL}/32",
            f"route {MANAGER_ROUTE}": f"ip -n {ns} route show {MANAGER_ROUTE} dev {UPLINK}",
            f"route {MANAGER_TABLE_ROUTE} table {MANAGER_TABLE}":
                f"ip -n {ns} route show {MANAGER_TABLE_ROUTE} table {MANAGER_TABLE} dev {UPLINK}",
            f"rule {MANAGER_RULE_PRIO}": f"ip -n {ns} rule show priority {MANAGER_RULE_PRIO}",
        }
        return [what for what, cmd in checks.items()
                if not subprocess.run(cmd.split(), capture_output=True, text=True, timeout=60).stdout.strip()]

    def missing_xfrmid_objects(self) -> list[str]:
        ns = self.made.netns
        checks = {
            f"link {IFACE} up": f"ip -n {ns} link show dev {IFACE} up",
            f"address {XFRMID_ADDRESS}": f"ip -n {ns} addr show dev {IFACE} to {XFRMID_ADDRESS}",
            f"route {XFRMID_ROUTE}": f"ip -n {ns} route show {XFRMID_ROUTE} dev {IFACE} proto xfrmid",
            f"route {XFRMID_PEER} table 50": f"ip -n {ns} route show {XFRMID_PEER} table 50 proto xfrmid",
            "rule 100": f"ip -n {ns} rule show priority 100 proto xfrmid",
        }
        return [what for what, cmd in checks.items()
                if not subprocess.run(cmd.split(), capture_output=True, text=True, timeout=60).stdout.strip()]

    def failure_logs(self) -> str:
        """What a failing test's report carries: the actions so far and both journals."""
        parts = [self.table()]
        if self.container is not None:
            for unit in (self.manager, "xfrmid.service"):
                parts.append(f"--- journalctl -u {unit} (last 300 lines) ---\n"
                             + self.container.journal(unit, lines=300))
        return "\n".join(parts)

    def table(self) -> str:
        rows = [f"{self.manager}: action | took | what happened to xfrmid's objects"]
        rows += [f"{o.action} | {o.seconds:.1f} s | {o.summary()}" for o in self.outcomes]
        rows += [f"{what}: {seconds:.1f} s" for what, seconds in self.timings.items()]
        return "\n".join(rows)

    def write_report(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{self.label}-actions.txt").write_text(self.table() + "\n")
