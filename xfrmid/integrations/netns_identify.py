"""Which network namespace this process runs in, as a name xfrmid can enter.

xfrmid's calls name a namespace by its entry under /run/netns (none: xfrmid's
own). pluto drops its capabilities before it runs an updown program (its
children keep CAP_NET_ADMIN, CAP_NET_RAW, CAP_DAC_READ_SEARCH and, from
libreswan 5, CAP_SETPCAP), so the helper cannot open /proc/PID/ns/net of a
process with more capabilities than its own (the kernel asks for ptrace access
there): neither pid 1's nor xfrmid's. What it can always do:

- compare its own /proc/self/ns/net with the bind mounts under /run/netns,
  as ``ip netns identify`` does (a stat of a mount point needs no access to
  any process);
- tell whether another process shares its namespace from /proc/PID/net, which
  every user may read: each namespace has its own /proc/net entries, so
  /proc/PID/net/dev is the same inode exactly when PID is in this namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidArgument

NETNS_DIR = Path("/run/netns")


def _identity(path: str | Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def name_of(namespace: tuple[int, int], directory: Path = NETNS_DIR) -> str | None:
    """The first name under ``directory`` bound to ``namespace`` (device, inode), or None."""
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            if _identity(entry) == namespace:
                return entry.name
        except OSError:
            continue  # an entry being removed, or a plain file left behind
    return None


def shares_namespace_with(pid: int, proc: Path = Path("/proc")) -> bool | None:
    """Whether process ``pid`` runs in this process's network namespace (None: cannot tell)."""
    try:
        return _identity(proc / str(pid) / "ns/net") == _identity(proc / "self/ns/net")
    except PermissionError:
        pass  # a process with capabilities we lack: the ptrace check refuses it
    except OSError:
        return None
    try:
        return _identity(proc / str(pid) / "net/dev") == _identity(proc / "self/net/dev")
    except OSError:
        return None  # no such process, or /proc mounted with hidepid


def own_netns(daemon_pid: int | None, directory: Path = NETNS_DIR) -> str | None:
    """The name to give xfrmid for this process's namespace: its /run/netns name,
    or None when the namespace has no name and is xfrmid's own (``daemon_pid``'s).

    A namespace without a name that is not xfrmid's cannot be reached by xfrmid:
    that is InvalidArgument. When nothing tells (no daemon pid, /proc hidden),
    a namespace without a name is taken to be xfrmid's, as ``ip netns identify``
    printing nothing means the default namespace.
    """
    mine = _identity("/proc/self/ns/net")
    name = name_of(mine, directory)
    if name is not None:
        return name
    if daemon_pid is not None and shares_namespace_with(daemon_pid) is False:
        raise InvalidArgument(
            f"This network namespace (net:[{mine[1]}]) has no name under {directory} and is not "
            "xfrmid's; name it (ip netns attach NAME PID) or give --netns."
        )
    return None
