"""One change of many interfaces of a namespace: one journal write, one kernel read, one plan.

``Syncer.change`` costs a journal write, a kernel read, a plan and an apply per
interface; for a caller deleting a thousand interfaces at once that per-call
work, not the kernel's, is most of the time. Here the same steps run once for
all of them, and the kernel deletes the links in one batch (link_reaper.py).
The undo on failure is the same as ``change``'s: every interface back to its
save point, persisted and synced again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import XfrmidError
from .desired import Key

if TYPE_CHECKING:
    from .sync import Syncer

log = logging.getLogger("xfrmid.core")


async def change_many(syncer: "Syncer", netns: str | None, names: list[str], mutate: Callable[[], object],
                      *, why: str | None = None) -> None:
    """``Syncer.change`` for ``names`` of one namespace at once (the caller holds their locks)."""
    desired = syncer.m.desired
    keys = [(netns, name) for name in names]
    saved = [syncer.savepoint(key) for key in keys]
    marks = frozenset().union(*(s.marks for s in saved))
    before = {key: syncer.objects(key) for key in keys}
    parts: frozenset[str] = frozenset({"address", "route", "rule"})
    try:
        mutate()
        after = {}
        for key in keys:
            syncer.slots.update(desired, key)
            after[key] = syncer.objects(key)
        parts = frozenset(tag[0] for key in keys for tag in before[key] | after[key]) | (
            {"address"} if any(desired.retired.get(key) for key in keys) else set()
        )
        await syncer.m.persist(set(keys))
        released = {key[1]: why for key in keys if key not in desired.interfaces} if why else None
        delta = frozenset().union(*(after[key] - before[key] for key in keys))
        await syncer.sync_names(netns, frozenset(names), marks, delta=delta, parts=parts, released=released)
    except XfrmidError:
        for save in saved:
            syncer.restore(save)
            syncer.slots.update(desired, save.key)
        try:
            await syncer.m.persist(set(keys))
            await syncer.sync_names(netns, frozenset(names), marks, delta=frozenset(), parts=parts)
        except XfrmidError as exc:
            log.warning("could not undo a failed change of %s: %s", ", ".join(names), exc)
        for key in keys:
            syncer.m.publish(key)
        raise
    for key in keys:
        syncer.m.publish(key)
