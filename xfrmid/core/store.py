"""The persisted desired state: one JSON file under the runtime directory.

``/run/xfrmid/state.json`` holds the runtime promises (on-demand and
explicitly created interfaces, attachments, addresses, routes), so a daemon
restart keeps them and a reboot forgets them, as /run is. Every write is
atomic and durable before the call that changed the state returns: write a
temporary file in the same directory, fsync it, rename it over the old one,
fsync the directory. A crash leaves either the old or the new file, never a
mix. Concurrent saves are grouped: a save that finds its changes already
written by a later snapshot returns at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import Failed

log = logging.getLogger("xfrmid.core")

STATE_FILE = "state.json"
FORMAT_VERSION = 1


class StateStore:
    """Atomic JSON state file. ``path`` is the file (its directory is created 0700)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._requested = 0  # bumped by every save() call
        self._written = 0  # the highest request number on disk
        self.writes = 0  # how many files were actually written (for tests and stats)

    @classmethod
    def in_dir(cls, state_dir: str | os.PathLike) -> "StateStore":
        return cls(Path(state_dir) / STATE_FILE)

    def load(self) -> dict | None:
        """The saved state, or None when there is none.

        A file that cannot be parsed is moved aside (``state.json.corrupt-<time>``) and
        None returned: a daemon that refuses to start helps nobody, and the kernel's
        marked objects are then cleaned up by reconcile.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Failed(f"Cannot read state file {str(self.path)!r}: {exc.strerror}.") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError("unknown format")
        except ValueError:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("state file %s is not valid; moved it to %s and starting empty", self.path, aside)
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            return None
        return data

    async def save(self, snapshot: Callable[[], dict]) -> None:
        """Persist the state ``snapshot()`` returns; durable when this returns."""
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._written >= mine:
                return  # a later snapshot, taken after our change, is already on disk
            upto = self._requested
            data = snapshot()
            await asyncio.to_thread(self.write, data)
            self._written = upto

    def write(self, data: dict) -> None:
        """Synchronous atomic write (temp file, fsync, rename, fsync directory)."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
            payload = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise Failed(f"Cannot write state file {str(self.path)!r}: {exc.strerror}.") from None
        self.writes += 1
