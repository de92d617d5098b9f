"""The listeners and the views last published to them.

After every change or repair the core publishes the interfaces it touched:
each listener (the bus adapter, the drift watcher) hears interface_added,
interface_changed or interface_removed with the new view, only when the view
differs from the one it heard last, and ``repaired`` with what a reconcile
put back. The views published last are kept: the bus exports them and the
watcher judges events against them, without each building every view again.
"""

from __future__ import annotations

import logging

from .desired import Key
from .seen import KernelSeen
from .state import CoreState
from .views import InterfaceInfo, ManagerListener, build_info

log = logging.getLogger("xfrmid.core")


def _order(key: Key) -> tuple[str, str]:
    return (key[0] or "", key[1])


class Publisher:
    def __init__(self, state: CoreState, seen: KernelSeen) -> None:
        self._state = state
        self._seen = seen
        self._listeners: list[ManagerListener] = []
        self._published: dict[Key, InterfaceInfo] = {}

    def subscribe(self, listener: ManagerListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: ManagerListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def info(self, key: Key) -> InterfaceInfo:
        """The view of ``key`` built now (KeyError when it is not desired)."""
        state = self._state
        return build_info(state.desired.interfaces[key], self._seen.link(key), state.mask, state.peer)

    def view(self, key: Key) -> InterfaceInfo:
        """``info(key)`` right after a change of ``key``, which published it (not built again)."""
        published = self._published.get(key)
        return published if published is not None else self.info(key)

    def published(self) -> list[InterfaceInfo]:
        """The views last published, sorted by namespace and name."""
        return [self._published[key] for key in sorted(self._published, key=_order)]

    def publish(self, key: Key) -> None:
        """Tell listeners what changed for ``key`` since the last time."""
        old = self._published.get(key)
        new = self.info(key) if key in self._state.desired.interfaces else None
        if new == old:
            return
        if new is None:
            del self._published[key]
            self._notify("interface_removed", old)
        else:
            self._published[key] = new
            self._notify("interface_added" if old is None else "interface_changed", new)

    def publish_all(self) -> None:
        """``publish`` every interface desired or published (after a full reconcile)."""
        for key in set(self._state.desired.interfaces) | set(self._published):
            self.publish(key)

    def repaired(self, key: Key, what: str) -> None:
        """Tell listeners a reconcile put back ``what`` on ``key``."""
        if key in self._state.desired.interfaces:
            self._notify("repaired", self.info(key), what)

    def _notify(self, event: str, *args: object) -> None:
        for listener in list(self._listeners):
            try:
                getattr(listener, event)(*args)
            except Exception:  # a broken listener must not break the core
                log.exception("listener %r failed on %s", listener, event)
