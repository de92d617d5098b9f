"""A change of the desired state, all or nothing: save, change, persist, apply, undo, publish.

Every mutating call runs through ``Transaction.run`` with the interfaces it
changes (one, or many of one namespace for the bulk calls) and a function
that changes the desired state:

1. save: a save point of each interface (``CoreState.savepoint``: O(1), the
   owners a change replaces are kept as they go);
2. change: the function runs; what it changed in the kernel is worked out
   (``changes.change_of``: O(the change)) and the route slot index takes the
   new routes in (Conflict when one collides with another interface's);
3. persist: the changed interfaces go to the state file (one journal write
   of the owners the call replaced);
4. apply: one sync of the kernel for all of them (``Reconciler.sync``), in
   which only what the change adds must succeed; or a shortcut: nothing at all
   when nothing changes in the kernel and the drift guard vouches for the
   interface, only the objects the change adds and removes when it vouches and
   the link stays as it is (``Reconciler.apply_change``), a create without a
   read before for one fresh interface whose name was free;
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
from .changes import Change, change_of
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
        # "unchanged", "changed", "created": changes that took a shortcut
        self.shortcuts: Counter[str] = Counter()

    async def run(self, netns: str | None, names: Collection[str], change: Callable[[], object], *,
                  free: Collection[str] = (), why: "str | Callable[[], str | None] | None" = None) -> None:
        """Apply ``change`` to the desired state of ``names`` in ``netns``, persist it and make
        the kernel match; undo all of it when a typed error is raised.

        ``free``: names new to the desired state that the kernel reported free during
        this call. ``why``: the reason an interface goes, when the change
        removes it (for the log); a function is asked after the change (a group of
        calls knows only then which of them removed it).
        """
        state = self._state
        desired = state.desired
        names = sorted(set(names))
        keys = [(netns, name) for name in names]
        saved = [state.savepoint(key) for key in keys]
        marks = frozenset(s.iface.if_id for s in saved if s.iface is not None)
        parts = ALL_PARTS
        taken: list[Change] = []  # changes the slot index took in
        try:
            change()
            if callable(why):
                why = why()
            changes = [change_of(state, s) for s in saved]
            for one in changes:
                state.take_change(one)
                taken.append(one)
            # Only dump what these interfaces have or had: a plain Attach reads links only.
            parts = frozenset().union(*(c.kinds for c in changes))
            await self._store.commit(desired, set(keys), owners={c.key: c.owners for c in changes})
            await self._apply(netns, names, changes, marks, parts, free, why)
        except XfrmidError:
            for save in saved:
                desired.restore(save)
            for one in taken:
                state.routes_changed(one.key)
            try:
                await self._store.commit(desired, set(keys))
                await self._reconciler.sync(netns, frozenset(names), marks, delta=frozenset(), parts=parts)
            except XfrmidError as exc:
                log.warning("could not undo a failed change of %s: %s", ", ".join(names), exc)
            self._publish(keys)
            raise
        finally:
            for save in saved:
                desired.release(save)
        self._publish(keys)

    async def _apply(self, netns: str | None, names: list[str], changes: list[Change], marks: frozenset[int],
                     parts: frozenset[str], free: Collection[str], why: str | None) -> None:
        """Make the kernel match the change: a shortcut when one applies, else a sync."""
        reconciler = self._reconciler
        desired = self._state.desired
        keys = [c.key for c in changes]
        if all(c.unchanged for c in changes) and all(map(reconciler.vouched, keys)):
            self.shortcuts["unchanged"] += 1
        elif len(changes) == 1 and not changes[0].whole and await reconciler.apply_change(changes[0]):
            self.shortcuts["changed"] += 1
        elif (len(keys) == 1 and names[0] in free
              and await reconciler.create_unread(keys[0], changes[0].added())):
            self.shortcuts["created"] += 1
        else:
            released = {key[1]: why for key in keys if key not in desired.interfaces} if why else None
            delta = frozenset().union(*(c.added() for c in changes))
            await reconciler.sync(netns, frozenset(names), marks, delta=delta, parts=parts, released=released)

    def _publish(self, keys: list[Key]) -> None:
        for key in keys:
            self._publisher.publish(key)
