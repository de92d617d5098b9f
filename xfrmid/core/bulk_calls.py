"""The Manager's calls on many interfaces of one namespace at once (issue 6).

CreateInterfaces and DeleteInterfaces check every entry before anything
changes, then make one change (bulk.change_many): one journal write, one
kernel read, one plan. They reuse the single calls' checks (Manager's
``_create_args``, ``_create_change``, ``_check_deletable``); this mixin only
adds taking many interfaces' locks and the all-or-nothing framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from ..errors import InvalidArgument
from ..naming import check_ifname
from ..validate import check_netns
from .apply import FEW
from .bulk import change_many
from .desired import Key
from .views import InterfaceInfo


class BulkCalls:
    """Mixed into Manager, whose locks, checks and syncer it uses."""

    async def create_interfaces(self, entries: Sequence[tuple[str, int, dict]], *,
                                netns: str | None = None) -> list[InterfaceInfo]:
        """create_interface for many interfaces of one namespace in one change: each entry
        (name, if_id, {link, mtu, external, addresses}). All or nothing: every entry is
        checked first, and if the kernel refuses one, those this call created are removed."""
        if isinstance(entries, (str, bytes)) or not all(isinstance(e, (tuple, list)) and len(e) == 3 for e in entries):
            raise InvalidArgument(f"Interfaces {entries!r} must be a list of (name, if_id, options).")
        netns = check_netns(netns)
        wanted: dict[str, tuple] = {}
        for name, if_id, options in entries:
            name = check_ifname(name)
            unknown = set(options) - {"link", "mtu", "external", "addresses"}
            if unknown:
                raise InvalidArgument(f"Option {sorted(unknown)[0]!r} of interface {name!r} is not known to "
                                      "CreateInterfaces (known options: addresses, external, link, mtu).")
            args = self._create_args(name, if_id, options.get("link"), options.get("mtu"),
                                     options.get("external", False), options.get("addresses", ()))
            if wanted.setdefault(name, args) != args:
                raise InvalidArgument(f"Interface {name!r} is asked for twice, differently.")
        names = sorted(wanted)
        keys = [(netns, name) for name in names]
        if not keys:
            return []
        async with self._ops(keys):
            # Many new names: one dump of the namespace's xfrm links tells which exist
            # (to adopt) instead of a get each (sync_names dumps them the same way).
            known = None
            if sum(key not in self.desired.interfaces for key in keys) > FEW:
                known = {state.name: state for state in await self.kernel.xfrm_links(netns)}
            changes = await asyncio.gather(*(self._create_change(key, *wanted[key[1]], known=known)
                                             for key in keys))

            def change() -> None:
                for one in changes:
                    one()

            await change_many(self._sync, netns, names, change)
            return [self.view((netns, check_ifname(e[0]))) for e in entries]

    async def delete_interfaces(self, names: Sequence[str], *, netns: str | None = None, force: bool = False) -> None:
        """delete_interface for many interfaces of one namespace in one change (one journal
        write, one kernel read, the links deleted in one batch). Every interface is checked
        before any is deleted: one that may not be deleted fails the call and nothing changes."""
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"Names {names!r} must be a list of interface names.")
        netns = check_netns(netns)
        chosen = sorted({check_ifname(n) for n in names})
        keys = [(netns, name) for name in chosen]
        if not keys:
            return
        async with self._ops(keys):
            for key in keys:
                self._check_deletable(key, force)

            def drop() -> None:
                for key in keys:
                    self.desired.drop(key)
                    self._linger.cancel(key)

            await change_many(self._sync, netns, chosen, drop, why="requested by DeleteInterfaces")

    @asynccontextmanager
    async def _ops(self, keys: list[Key]):
        """_op for several interfaces; their locks taken in sorted order (no deadlock)."""
        async with self._gate.shared():
            async with AsyncExitStack() as stack:
                for key in sorted(keys, key=lambda k: (k[0] or "", k[1])):
                    await stack.enter_async_context(self._locks(key))
                    stack.enter_context(self.hold(key))
                try:
                    yield
                finally:
                    self._sync.absent.difference_update(keys)

