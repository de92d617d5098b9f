"""The drift guard: what the core asks of whoever repairs drift while it runs.

The manager hands every change it makes to the guard (``hold``), so the
events xfrmid's own changes cause are judged only once the change is done and
published, never "repaired" halfway. A call that changes nothing in the
kernel may skip its kernel read when the guard ``vouches`` that any drift of
the interface since that read is in its hands (see ``Reconciler.vouched``).

The drift watcher (``watch.Watcher``) is the guard the daemon runs with;
``NoGuard`` is the core alone (tests, tools): it holds nothing and vouches
for nothing, so every call reads the kernel.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from .desired import Key


class DriftGuard(Protocol):
    def hold(self, key: Key | None = None) -> AbstractContextManager[object]:
        """xfrmid is changing ``key`` (every interface when None) until the context ends."""
        ...

    def vouches(self, key: Key, ifindex: int, since: float | None) -> bool:
        """Drift of ``key`` (link ``ifindex``) since loop time ``since`` would be seen and repaired."""
        ...


class NoGuard:
    """No drift watcher: nothing held, nothing vouched for."""

    def hold(self, key: Key | None = None) -> AbstractContextManager[object]:
        return nullcontext()

    def vouches(self, key: Key, ifindex: int, since: float | None) -> bool:
        return False


NO_GUARD = NoGuard()
