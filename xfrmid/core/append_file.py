"""The state file held open for its journal appends, checked by name before each one.

An append used to open the file, fstat it, write, fsync and close it: five
system calls, of which only write and fsync are the work. Under emulation a
system call of the daemon costs 0.05-0.25 ms (bench/README.md), so every
Attach paid about 0.4 ms for the open, fstat and close. The file is now
opened once and, before each append, looked up by name (one stat): a file
that was removed, replaced or changed behind the store's back is still
noticed, as before, and the store then writes it again whole.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


class AppendFile:
    """Appends to one path; ``append`` says why not when the file is not the one expected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file

    def append(self, payload: bytes, expected_size: int) -> str | None:
        """Write ``payload`` at the end and fsync; None when done, else the reason it was not
        ("disappeared", "changed"). Raises OSError from the writes (the file is closed then)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            return "disappeared"
        if st.st_size != expected_size:
            return "changed"
        if self._fd < 0 or (st.st_dev, st.st_ino) != self._identity:
            self.close()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or opened.st_size != expected_size:
                os.close(fd)  # replaced between the stat and the open
                return "changed"
            self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        try:
            write_all(self._fd, payload)
            os.fsync(self._fd)
        except OSError:
            self.close()  # how much reached the file is unknown: the next write starts afresh
            raise
        return None

    def close(self) -> None:
        fd, self._fd, self._identity = self._fd, -1, None
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass
