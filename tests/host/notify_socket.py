"""A NOTIFY_SOCKET the tests listen on, as systemd does for a Type=notify service.

Use the ``notify_socket`` fixture (import it into a test module, or into
conftest.py) to check what a daemon tells systemd::

    from notify_socket import notify_socket  # noqa: F401  (fixture)

    def test_ready(notify_socket):
        proc = subprocess.Popen([...], env={**os.environ, **notify_socket.env(watchdog_usec=2_000_000)})
        assert notify_socket.wait_for("READY")["READY"] == "1"

The fixture also sets NOTIFY_SOCKET in this process's environment, for
in-process tests of xfrmid.notify.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

Message = dict[str, str]


def parse(datagram: bytes) -> Message:
    """``b"READY=1\\nSTATUS=x"`` -> ``{"READY": "1", "STATUS": "x"}``."""
    message: Message = {}
    for line in datagram.decode().split("\n"):
        if line:
            key, _, value = line.partition("=")
            message[key] = value
    return message


class NotifySocket:
    """A bound AF_UNIX datagram socket that records every notification in order."""

    def __init__(self) -> None:
        # A short path: sun_path holds 107 bytes and pytest's tmp_path can be longer.
        self._dir = tempfile.mkdtemp(prefix="xfrmid-notify-")
        self.path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.messages: list[Message] = []

    def env(self, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> dict[str, str]:
        """Environment for a child process started the way systemd starts the service."""
        env = {"NOTIFY_SOCKET": self.path}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        return env

    def receive(self, timeout: float = 5.0) -> Message | None:
        """The next notification, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return None
        message = parse(data)
        self.messages.append(message)
        return message

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> Message:
        """Read until a notification sets ``key`` (to ``value`` if given); fail the test on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and key in message and value in (None, message[key]):
                return message
        seen = [m for m in self.messages]
        pytest.fail(f"no {key}={value or '*'} within {timeout}s on NOTIFY_SOCKET; received {seen}")

    async def wait_for_async(self, key: str, value: str | None = None, timeout: float = 10.0) -> Message:
        """wait_for() for async tests: the event loop keeps running while we wait."""
        return await asyncio.to_thread(self.wait_for, key, value, timeout)

    def keys(self) -> list[str]:
        """Every assignment's name in arrival order, e.g. ["READY", "STATUS", "WATCHDOG"]."""
        return [key for message in self.messages for key in message]

    def close(self) -> None:
        self.sock.close()
        for name in (self.path, self._dir):
            try:
                os.unlink(name) if name == self.path else os.rmdir(name)
            except OSError:
                pass


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield listener
    finally:
        listener.close()
