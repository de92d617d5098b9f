"""What happened to a namespace's links, addresses, routes and rules, as `ip monitor` saw it.

``ChangeLog`` runs ``ip -ts -o monitor`` in a network namespace and keeps every
change with the time iproute2 stamped on it: an observer independent of
xfrmid and of the network managers. ``losses`` pairs each removal of a
watched object with the first time it is back and says how long that took;
a link set down counts as lost until it is up again.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\] (.*)$")
_LINK = re.compile(r"^\d+: ([^:@\s]+)(?:@\S+)?: <([^>]*)>")
_ADDRESS = re.compile(r"^\d+: (\S+)\s+(inet6?) (\S+)")
_RULE = re.compile(r"^(\d+):\t(.*?)\s*$")


@dataclass(frozen=True)
class Change:
    at: float  # seconds since the epoch (the VM's clock, as journalctl -o short-unix)
    deleted: bool
    key: str  # the object: "link NAME", "addr DEV ADDRESS", "rule PRIO: ...", "route ..."
    text: str

    @property
    def kind(self) -> str:
        return self.key.split(" ", 1)[0]


def parse(line: str) -> Change | None:
    """One line of ``ip -ts -o monitor link address route rule``; None if it is none of those."""
    match = _STAMP.match(line.rstrip("\n"))
    if not match:
        return None
    at = datetime.fromisoformat(match.group(1)).timestamp()
    text = match.group(2)
    deleted = text.startswith("Deleted ")
    body = text[len("Deleted "):] if deleted else text
    if link := _LINK.match(body):
        name, flags = link.groups()
        # a link that is not up is as good as gone for the routes through it
        return Change(at, deleted or "UP" not in flags.split(","), f"link {name}", text)
    if addr := _ADDRESS.match(body):
        dev, family, cidr = addr.groups()
        return Change(at, deleted, f"addr {dev} {cidr}", text)
    if rule := _RULE.match(body):
        return Change(at, deleted, f"rule {rule.group(1)}: {rule.group(2)}", text)
    return Change(at, deleted, "route " + " ".join(body.split()), text)


@dataclass(frozen=True)
class Loss:
    key: str
    removed_at: float
    back_after: float | None  # seconds; None: not back by the end of the window


class ChangeLog:
    """``ip -ts -o monitor`` in ``netns``, read by a thread."""

    def __init__(self, netns: str) -> None:
        self.changes: list[Change] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            ["ip", "-n", netns, "-ts", "-o", "monitor", "link", "address", "route", "rule"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            change = parse(line)
            if change is not None:
                with self._lock:
                    self.changes.append(change)

    def between(self, start: float, end: float | None = None) -> list[Change]:
        with self._lock:
            return [c for c in self.changes if c.at >= start and (end is None or c.at < end)]

    def settle(self, start: float, watched: Callable[[str], bool], quiet: float = 3.0, limit: float = 30.0) -> float:
        """Wait until no watched object changed for ``quiet`` s (at most ``limit`` s); the end time."""
        deadline = time.time() + limit
        while time.time() < deadline:
            now = time.time()
            recent = [c for c in self.between(start) if watched(c.key)]
            last = max((c.at for c in recent), default=start)
            if now - last >= quiet and now - start >= quiet:
                return now
            time.sleep(0.5)
        return time.time()

    def losses(self, start: float, end: float, watched: Callable[[str], bool]) -> list[Loss]:
        """Each removal of a watched object in [start, end) and how long until it was back."""
        changes = [c for c in self.between(start, end) if watched(c.key)]
        found = []
        cause = start  # the last removal seen: what a silent one went with
        for i, change in enumerate(changes):
            if not change.deleted:
                if change.kind == "route" and not any(c.key == change.key for c in changes[:i]):
                    # put back without having been seen to go: the kernel drops the routes
                    # through a link with its last IPv4 address (or the link's going down)
                    # and says nothing about them
                    found.append(Loss(change.key + " (removed silently by the kernel)", cause, change.at - cause))
                continue
            cause = change.at
            if i and changes[i - 1].key == change.key and changes[i - 1].deleted:
                continue  # the same loss reported twice (a link's down, then its deletion)
            back = next((c for c in changes[i + 1:] if c.key == change.key and not c.deleted), None)
            found.append(Loss(change.key, change.at, None if back is None else back.at - change.at))
        return found

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
