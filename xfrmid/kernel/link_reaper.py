"""Deleting many xfrm links of one namespace at the cost of one unregister batch.

Each RTM_DELLINK of one link waits in the kernel for RCU grace periods
(``unregister_netdevice``, then ``netdev_run_todo``) while holding the RTNL
lock, so a thousand deletions cost a thousand of those waits, one after the
other. One RTM_DELLINK carrying IFLA_GROUP unregisters every link of that
group in one batch, paying the waits once. The reaper of a namespace
coalesces the deletions asked for while a batch is in flight (or in the same
loop turn): it moves each link into ``XFRMID_DELETING_GROUP`` (an
RTM_NEWLINK by ifindex carrying only IFLA_GROUP), then deletes the group with
one RTM_DELLINK. A deletion alone is one plain RTM_DELLINK by ifindex, as
before.

Why a group deletion cannot hit a link it should not:

- The group is xfrmid's own, a constant no administrator uses by accident
  (0x7864656C, "xdel"), and the only links moved into it are the ones a
  caller asked to delete, after ``links.delete_link`` checked by a get that
  the name is an xfrm link. The move is addressed by the ifindex that get
  returned: the kernel never gives an ifindex to a second device of the
  namespace while it counts up (``dev_new_index``), and a link's kind never
  changes, so the move reaches that xfrm link or nothing (ENODEV, NotFound).
  (An IFLA_INFO_KIND alone in the move would not make the kernel refuse other
  kinds: Linux 6.1 compares the kind with the device only when
  IFLA_INFO_DATA is given too, and xfrm's changelink then insists on a full
  if_id, and waits for a grace period. A veth moved that way is accepted.)
- One reaper per namespace connection (connection.py) runs one batch at a
  time, so no move of the next batch can join a group deletion in flight.
- A link the batch could not delete goes back to the group it came from, so
  none lingers in the deleting group to be taken by the next batch.
- A crash between a move and the deletion leaves links in the deleting group
  with alias "xfrmid": ``links`` and ``events`` count them as xfrmid's own
  (``XFRMID_LINK_GROUPS``), so the start-up reconcile removes them as
  leftovers (their interfaces were already dropped from the desired state,
  which is persisted before the kernel is touched).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import NotFound, XfrmidError, where
from .netlink import RTM_DELLINK, RTM_NEWLINK, ifinfo, link_attrs
from .nlerrors import code_of, translate
from .objects import XFRMID_DELETING_GROUP

if TYPE_CHECKING:
    from .connection import NetnsConnection

log = logging.getLogger("xfrmid.kernel")

ENODEV = 19
MOVES_IN_FLIGHT = 64  # requests sent before their answers are read (bounded: the socket's buffer)


@dataclass
class _Doomed:
    name: str
    ifindex: int
    group: int  # where it was: it goes back there if the batch cannot delete it
    done: asyncio.Future = field(repr=False)


@dataclass
class ReaperStats:
    """Requests sent, for tests and benchmarks."""

    deletions: int = 0  # RTM_DELLINK requests (plain or by group)
    group_deletions: int = 0
    moves: int = 0
    links: int = 0  # links asked to delete


class LinkReaper:
    """Deletes the xfrm links of one namespace (one rtnetlink connection), in batches."""

    def __init__(self, conn: NetnsConnection) -> None:
        self._conn = conn
        self._netns = conn.netns
        self._pending: list[_Doomed] = []
        self._worker: asyncio.Task | None = None
        self.stats = ReaperStats()

    async def delete(self, name: str, ifindex: int, group: int) -> None:
        """Delete the xfrm link ``name`` at ``ifindex`` (the caller checked its kind).

        NotFound if it vanished before it could be deleted; other errors as
        ``links.delete_link`` raises them.
        """
        done = asyncio.get_running_loop().create_future()
        self._pending.append(_Doomed(name, ifindex, group, done))
        self.stats.links += 1
        if self._worker is None or self._worker.done():
            # starts on the next loop turn: deletions asked for in this one join it
            self._worker = asyncio.create_task(self._run(), name=f"xfrmid-reaper{where(self._netns)}")
        await asyncio.shield(done)  # a cancelled caller does not cancel the others' batch

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._reap(batch)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                for doomed in batch:
                    _fail(doomed, self._error(doomed, exc))
            except BaseException:  # cancelled (the daemon stops): so are the waiters
                for doomed in batch + self._pending:
                    doomed.done.cancel()
                raise

    async def _reap(self, batch: list[_Doomed]) -> None:
        if len(batch) == 1:
            await self._delete_one(batch[0])
            return
        moved: list[_Doomed] = []
        for start in range(0, len(batch), MOVES_IN_FLIGHT):
            chunk = batch[start:start + MOVES_IN_FLIGHT]
            moved += [d for d, ok in zip(chunk, await asyncio.gather(*(self._move(d) for d in chunk))) if ok]
        if not moved:
            return
        msg = ifinfo() + link_attrs(group=XFRMID_DELETING_GROUP)
        self.stats.deletions += 1
        self.stats.group_deletions += 1
        try:
            await self._conn.transact(RTM_DELLINK, msg)
        except Exception as exc:  # noqa: BLE001 - each caller gets its own result below
            if code_of(exc) == ENODEV:  # none left in the group: others deleted them meanwhile
                for doomed in moved:
                    _fail(doomed, self._gone(doomed))
                return
            # Not as a batch, then: one by one, each caller with its own result.
            log.warning("deleting %d interfaces at once%s failed (%s); deleting them one by one",
                        len(moved), where(self._netns), exc)
            for doomed in moved:
                await self._delete_one(doomed, restore=True)
            return
        log.debug("deleted %d interfaces%s in one batch", len(moved), where(self._netns))
        for doomed in moved:
            _succeed(doomed)

    async def _move(self, doomed: _Doomed) -> bool:
        """Move one link into the deleting group; False (the caller told why) if that failed."""
        msg = ifinfo(index=doomed.ifindex) + link_attrs(group=XFRMID_DELETING_GROUP)
        self.stats.moves += 1
        try:
            await self._conn.transact(RTM_NEWLINK, msg)
        except Exception as exc:  # noqa: BLE001 - this caller's result; the batch goes on
            _fail(doomed, self._error(doomed, exc))
            return False
        return True

    async def _delete_one(self, doomed: _Doomed, restore: bool = False) -> None:
        self.stats.deletions += 1
        try:
            await self._conn.transact(RTM_DELLINK, ifinfo(index=doomed.ifindex))
        except Exception as exc:  # noqa: BLE001 - this caller's result
            error = self._error(doomed, exc)
            if restore and not isinstance(error, NotFound):
                await self._restore(doomed)
            _fail(doomed, error)
            return
        _succeed(doomed)

    async def _restore(self, doomed: _Doomed) -> None:
        """Put a link the batch could not delete back in its group (else the next batch takes it)."""
        msg = ifinfo(index=doomed.ifindex) + link_attrs(group=doomed.group)
        try:
            await self._conn.transact(RTM_NEWLINK, msg)
        except Exception as exc:  # noqa: BLE001 - best effort: the caller hears of the deletion's error
            if code_of(exc) != ENODEV:
                log.warning("interface %s%s stays in the deleting group %d: %s",
                            doomed.name, where(self._netns), XFRMID_DELETING_GROUP, exc)

    def _gone(self, doomed: _Doomed) -> NotFound:
        return NotFound(f"Interface {doomed.name!r} does not exist{where(self._netns)}.")

    def _error(self, doomed: _Doomed, exc: Exception) -> XfrmidError:
        if code_of(exc) == ENODEV:  # someone deleted it meanwhile
            return self._gone(doomed)
        return translate(exc, f"Deleting interface {doomed.name!r}{where(self._netns)}")


def _succeed(doomed: _Doomed) -> None:
    if not doomed.done.done():
        doomed.done.set_result(None)


def _fail(doomed: _Doomed, exc: BaseException) -> None:
    if not doomed.done.done():
        doomed.done.set_exception(exc)
