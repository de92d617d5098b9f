"""Who may change things: uid 0 and members of group ``xfrmid``.

The bus policy file says the same, but the daemon checks again from the
caller's credentials as the bus daemon reports them, so a missing or wrong
policy file never opens the door. Credentials of a unique name never change,
so they are cached until the name leaves the bus.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import time

from dbus_fast.aio import MessageBus

from ..errors import AccessDenied
from .busdaemon import bus_daemon_call

log = logging.getLogger("xfrmid.bus")

ADMIN_GROUP = "xfrmid"


def admin_gid(group: str = ADMIN_GROUP) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


# getgrnam reads /etc/group (or asks NSS) on every call: ~0.3 ms, more than the
# rest of the access check. The gid is looked up again after this many seconds,
# so a group created or renumbered while the daemon runs is seen soon.
ADMIN_GID_TTL = 30.0


def may_modify(uid: int, gids: set[int], admin: int | None) -> bool:
    """The contract's rule, as a pure function."""
    return uid == 0 or (admin is not None and admin in gids)


def _proc_groups(pid: int) -> set[int] | None:
    """Real supplementary groups of a process (setpriv --clear-groups shows up here)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        return None
    return None


def _account_groups(uid: int) -> set[int]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(entry.pw_name, entry.pw_gid))


class AccessControl:
    def __init__(self, bus: MessageBus, group: str = ADMIN_GROUP) -> None:
        self._bus = bus
        self._group = group
        self._cache: dict[str, tuple[int, frozenset[int]]] = {}
        self._gid: int | None = None
        self._gid_until = 0.0

    def _admin_gid(self) -> int | None:
        now = time.monotonic()
        if now >= self._gid_until:
            self._gid = admin_gid(self._group)
            self._gid_until = now + ADMIN_GID_TTL
        return self._gid

    def forget(self, unique_name: str) -> None:
        self._cache.pop(unique_name, None)

    async def credentials(self, sender: str) -> tuple[int, frozenset[int]]:
        cached = self._cache.get(sender)
        if cached is not None:
            return cached
        creds = await bus_daemon_call(self._bus, "GetConnectionCredentials", "s", [sender])
        if creds is None:
            raise AccessDenied(f"The bus did not report the credentials of {sender}, so the call is refused.")
        if "UnixUserID" not in creds:
            raise AccessDenied(f"The bus reported no user id for {sender}, so the call is refused.")
        uid = int(creds["UnixUserID"].value)
        if "UnixGroupIDs" in creds:  # dbus-daemon >= 1.11 reports the real groups
            gids = set(creds["UnixGroupIDs"].value)
        else:
            pid = creds.get("ProcessID")
            gids = _proc_groups(int(pid.value)) if pid is not None else None
            if gids is None:
                gids = _account_groups(uid)
        result = (uid, frozenset(gids))
        self._cache[sender] = result
        return result

    async def require_admin(self, sender: str | None, method: str) -> None:
        if not sender:
            raise AccessDenied(f"{method} needs a caller identity, which this connection does not provide.")
        uid, gids = await self.credentials(sender)
        if not may_modify(uid, gids, self._admin_gid()):
            log.info("refused %s to %s (uid %d, not root and not in group %s)", method, sender, uid, self._group)
            raise AccessDenied(
                f"Only root and members of group '{self._group}' may call {method}; uid {uid} is neither."
            )
