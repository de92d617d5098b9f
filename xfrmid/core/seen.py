"""What the kernel was last seen to hold for each desired interface.

The reconciler writes it after every pass (``remember``); the published views
show its link states (ifindex, MTU, operstate), and a call may skip its kernel
read only when the link last seen is the desired one, nothing was left undone
and the drift guard vouches for the time since (``Reconciler.vouched``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .desired import Key
from .desired_state import DesiredState

if TYPE_CHECKING:
    from ..kernel.objects import LinkState
    from .apply import ApplyResult
    from .plan import KernelView


class KernelSeen:
    def __init__(self) -> None:
        self._links: dict[Key, LinkState] = {}  # last link state seen per desired interface
        self._at: dict[Key, float] = {}  # when (loop time) it was read or set
        self._unsure: set[Key] = set()  # the last sync of these left something undone

    def link(self, key: Key) -> "LinkState | None":
        return self._links.get(key)

    def seen_at(self, key: Key) -> float | None:
        return self._at.get(key)

    def is_unsure(self, key: Key) -> bool:
        return key in self._unsure

    def names_in(self, netns: str | None) -> set[str]:
        """The interfaces of ``netns`` whose link was seen."""
        return {k[1] for k in self._links if k[0] == netns}

    def doubt(self, keys: list[Key]) -> None:
        """A sync of ``keys`` begins: until a pass is remembered, an error leaves them unsure."""
        self._unsure.update(keys)

    def settle(self, key: Key) -> None:
        """A change of ``key`` was made as planned without reading the kernel: sure again."""
        self._unsure.discard(key)

    def remember(self, netns: str | None, names: set[str], view: "KernelView", result: "ApplyResult",
                 desired: DesiredState) -> None:
        """What one pass over ``names`` read (``view``) and did (``result``)."""
        deleted = {a.ifname for a in result.done if a.op == "delete_link"}
        failed = {a.ifname for a, _ in result.failed}
        now = asyncio.get_running_loop().time()
        for name in names:
            key = (netns, name)
            state = result.links.get(name) or (None if name in deleted else view.links.get(name))
            if state is None or key not in desired.interfaces:
                self._links.pop(key, None)
                self._at.pop(key, None)
                self._unsure.discard(key)
            else:
                self._links[key] = state
                self._at[key] = now
                if name in failed:
                    self._unsure.add(key)
                else:
                    self._unsure.discard(key)
