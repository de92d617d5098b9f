"""The running core: the manager and its drift watcher, built and wired in one place.

``build_core`` is the composition root: the daemon and the test fixtures get
the same object graph from it, so tests take the path production takes. The
watcher is the manager's drift guard (it holds what the manager changes and
vouches for quiet interfaces), listens to the manager to learn which
interfaces and namespaces to watch, and repairs through the manager: one
interface with ``reconcile_interface``, everything with ``reconcile`` (the
D-Bus Reconcile method's own). Which monitors it runs is the caller's choice:
the daemon passes the kernel's netlink monitors, host tests the fake kernel's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..settings import Settings
from .manager import Manager
from .store import StateStore
from .watch import MAX_DELAY, QUIET, MonitorFactory, Watcher

if TYPE_CHECKING:
    from ..kernel.backend import KernelBackend

log = logging.getLogger("xfrmid.core")


@dataclass(frozen=True)
class RunningCore:
    manager: Manager
    watcher: Watcher

    async def start(self) -> dict[str, int]:
        """The start-up reconcile, then the watcher: drift from then on is repaired, and
        none slips in between (the daemon takes its bus name only after this)."""
        counts = await self.manager.start()
        self.watcher.set_interfaces(self.manager.published())
        await self.watcher.start()
        return counts

    async def stop(self) -> None:
        """Stop repairing first (the manager's last calls must not look like drift), then
        the manager. The kernel objects stay: they are promises."""
        await self.watcher.stop()
        log.info("drift repair: %s", ", ".join(f"{k} {v}" for k, v in self.watcher.stats().items()))
        await self.manager.stop()


def build_core(kernel: "KernelBackend", settings: Settings, monitors: MonitorFactory, *,
               store: StateStore | None = None, quiet: float = QUIET, max_delay: float = MAX_DELAY) -> RunningCore:
    """The manager over ``kernel`` with its drift watcher, whose namespace monitors
    ``monitors`` makes; not started. ``store``: the state file (default: in the
    settings' state_dir)."""

    # The watcher repairs through the manager, which is built after it (it needs the
    # watcher as its guard): these look the manager up when a repair runs.
    async def reconcile() -> dict[str, int]:
        return await manager.reconcile()

    async def reconcile_one(name: str, netns: str | None) -> dict[str, int]:
        return await manager.reconcile_interface(name, netns)

    watcher = Watcher(reconcile, reconcile_one=reconcile_one, quiet=quiet, max_delay=max_delay,
                      monitor_factory=monitors)
    manager = Manager(kernel, settings, store, guard=watcher)
    manager.subscribe(watcher)
    return RunningCore(manager, watcher)
