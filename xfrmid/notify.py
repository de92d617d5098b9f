"""sd_notify for xfrmid.service (Type=notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Every call is a no-op when NOTIFY_SOCKET is unset (xfrmid started by hand, in
tests, or in the VM), so the daemon calls them unconditionally. The watchdog
ping is sent from a task on the daemon's own event loop: if the loop is stuck,
the pings stop and systemd restarts the service (WatchdogSec= in the unit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("xfrmid.notify")

Sender = Callable[[str], bool]


def _systemd_sender(message: str) -> bool:
    from systemd.daemon import notify

    return bool(notify(message))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when disabled.

    Follows sd_watchdog_enabled(): WATCHDOG_PID, when set, must be our pid.
    """
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the notify datagram.
    return " ".join(text.split())


class Notifier:
    """Talks to the service manager; every method returns False when nobody listens."""

    def __init__(self, environ: Mapping[str, str] | None = None, sender: Sender | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._send = sender or _systemd_sender
        self._watchdog_task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._environ.get("NOTIFY_SOCKET"))

    def send(self, *assignments: str) -> bool:
        """Send VAR=value lines as one datagram."""
        if not self.enabled:
            return False
        try:
            return self._send("\n".join(assignments))
        except OSError as exc:  # the manager went away: keep serving
            log.warning("Could not notify the service manager: %s", exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self, status: str | None = "Reloading the configuration") -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the
        # reload to its request; older managers ignore it.
        lines = ["RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def stopping(self, status: str | None = "Shutting down") -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def errno(self, number: int) -> bool:
        """ERRNO= before a failing exit, shown by systemctl status."""
        return self.send(f"ERRNO={int(number)}")

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Start pinging from the running loop at half WATCHDOG_USEC; None when disabled."""
        interval = watchdog_interval(self._environ)
        if interval is None or not self.enabled:
            return None
        if self._watchdog_task is None or self._watchdog_task.done():
            self._watchdog_task = asyncio.get_running_loop().create_task(
                self._watchdog_loop(interval), name="xfrmid-watchdog"
            )
        return self._watchdog_task

    async def stop_watchdog(self) -> None:
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval)


def notify(*assignments: str) -> bool:
    """Send raw ``VAR=value`` lines in one datagram; False when NOTIFY_SOCKET is unset.

    Prefer a Notifier (ready(), reloading() with MONOTONIC_USEC, the watchdog task).
    """
    return Notifier().send(*assignments)
