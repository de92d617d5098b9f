"""A change of the desired state, all or nothing: save, change, persist, apply, undo, publish.

Every mutating call runs through ``Transaction.run`` with the interfaces it
changes (one, or many of one namespace for the bulk calls) and a function
that changes the desired state:

1. save: a save point of each interface (``DesiredState.savepoint``);
2. change: the function runs; the route slot index takes the new routes in;
3. persist: the changed interfaces go to the state file (one journal write);
4. apply: one sync of the kernel for all of them (``Reconciler.sync``), in
   which only what the change adds must succeed; or a shortcut: nothing at all
   when nothing changes in the kernel and the drift guard vouches for it, a
   create without a read before for one fresh interface whose name was free;
5. on a typed failure, undo: every interface back to its save point, persisted
   and synced again, and the error goes to the caller;
6. publish: listeners hear the views of what changed (after an undo too).

The caller holds the interfaces' locks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection

from ..errors import XfrmidError
from .desired import Key
from .publish import Publisher
from .reconcile import ALL_PARTS, Reconciler
from .state import CoreState
from .store import StateStore

log = logging.getLogger("xfrmid.core")


class Transaction:
    def __init__(self, state: CoreState, store: StateStore, reconciler: Reconciler, publisher: Publisher) -> None:
        self._state = state
        self._store = store
        self._reconciler = reconciler
        self._publisher = publisher
        self.shortcuts: Counter[str] = Counter()  # "unchanged", "created": changes that took a shortcut

    async def run(self, netns: str | None, names: Collection[str], change: Callable[[], object], *,
                  free: Collection[str] = (), why: str | None = None) -> None:
        """Apply ``change`` to the desired state of ``names`` in ``netns``, persist it and make
        the kernel match; undo all of it when a typed error is raised.

        ``free``: names new to the desired state that the kernel reported free during
        this call. ``why``: the reason an interface goes, when the change
        removes it (for the log).
        """
        state = self._state
        desired = state.desired
        names = sorted(set(names))
        keys = [(netns, name) for name in names]
        saved = [desired.savepoint(key) for key in keys]
        marks = frozenset(s.iface.if_id for s in saved if s.iface is not None)
        before = {key: state.objects(key) for key in keys}
        parts = ALL_PARTS
        try:
            change()
            for key in keys:
                state.routes_changed(key)
            after = {key: state.objects(key) for key in keys}
            # Only dump what these interfaces have or had: a plain Attach reads links only.
            parts = frozenset(tag[0] for key in keys for tag in before[key] | after[key]) | (
                {"address"} if any(desired.retired.get(key) for key in keys) else set()
            )
            await self._store.commit(desired, set(keys))
            if all(before[key] == after[key] for key in keys) and all(map(self._reconciler.vouched, keys)):
                self.shortcuts["unchanged"] += 1
            elif len(keys) == 1 and names[0] in free and await self._reconciler.create_unread(keys[0], after[keys[0]]):
                self.shortcuts["created"] += 1
            else:
                released = {key[1]: why for key in keys if key not in desired.interfaces} if why else None
                delta = frozenset().union(*(after[key] - before[key] for key in keys))
                await self._reconciler.sync(netns, frozenset(names), marks, delta=delta, parts=parts,
                                            released=released)
        except XfrmidError:
            for save in saved:
                desired.restore(save)
                state.routes_changed(save.key)
            try:
                await self._store.commit(desired, set(keys))
                await self._reconciler.sync(netns, frozenset(names), marks, delta=frozenset(), parts=parts)
            except XfrmidError as exc:
                log.warning("could not undo a failed change of %s: %s", ", ".join(names), exc)
            self._publish(keys)
            raise
        self._publish(keys)

    def _publish(self, keys: list[Key]) -> None:
        for key in keys:
            self._publisher.publish(key)
