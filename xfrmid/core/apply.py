"""Side effects of a plan: run its actions through the KernelBackend, and take kernel snapshots.

``adopt`` and ``conflict`` actions are decisions the reconciler takes, and
``keep_address`` a removal the plan holds back: not kernel operations, so they
are skipped here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from ..errors import InvalidArgument, NotFound, XfrmidError, where
from ..journal import fields
from .plan import Action, KernelView

if TYPE_CHECKING:
    from ..kernel.backend import KernelBackend
    from ..kernel.objects import LinkState, RouteSpec

log = logging.getLogger("xfrmid.core")


@dataclass
class ApplyResult:
    done: list[Action] = field(default_factory=list)
    failed: list[tuple[Action, XfrmidError]] = field(default_factory=list)
    links: dict[str, LinkState] = field(default_factory=dict)  # states returned by create/change

    @property
    def removed_addresses(self) -> bool:
        return any(a.op == "remove_address" for a in self.done)


# Up to this many interfaces, addresses are read per interface (a dump the kernel
# filters by ifindex each); beyond, one dump of the namespace's addresses is cheaper.
ADDRESS_READS_MAX = 3
# Up to this many links created by one plan are created one request each; more go to
# the kernel in batches (create_links), are read back by one dump and logged in one line.
SINGLE_CREATES_MAX = 3


async def snapshot(
    kernel: KernelBackend,
    netns: str | None,
    names: set[str] | None = None,
    parts: frozenset[str] = frozenset({"address", "route", "rule"}),
    *,
    whole: bool = True,
) -> KernelView:
    """Dump one namespace: xfrm links, plus the ``parts`` asked for (each dump costs).

    Addresses are read for ``names`` (all links if None); routes and rules are
    xfrmid's own only. A part left out reads as empty.

    ``whole=False`` (with ``names``): read only the named links (a get each) and
    the routes through them (dumps the kernel filters by device), so the cost
    does not grow with the namespace; other links are then absent from the view
    (an if_id clash with one of them surfaces as the create's Conflict). Rules
    are always dumped whole: the kernel filters no rule dump.
    """
    if whole or names is None:
        return await _whole(kernel, netns, names, parts)
    links: dict[str, LinkState] = {}
    for name in sorted(names):
        try:
            links[name] = await kernel.link(netns, name)
        except (NotFound, InvalidArgument):
            pass  # absent, or another kind of device holds the name: not ours to read
    addresses: dict[str, frozenset[str]] = {}
    routes: set[RouteSpec] = set()
    for name, state in list(links.items()):
        try:
            if "address" in parts:
                addresses[name] = frozenset(await kernel.addresses(netns, name, state.ifindex))
            if "route" in parts:
                routes |= await kernel.own_routes(netns, name, state.ifindex)
        except NotFound:  # deleted meanwhile: the plan treats it as absent
            del links[name]
            addresses.pop(name, None)
    return KernelView(
        links=links,
        addresses=addresses,
        routes=frozenset(routes),
        rules=frozenset(await kernel.own_rules(netns)) if "rule" in parts else frozenset(),
    )


async def _whole(
    kernel: KernelBackend, netns: str | None, names: set[str] | None, parts: frozenset[str]
) -> KernelView:
    links = {state.name: state for state in await kernel.xfrm_links(netns)}
    addresses: dict[str, frozenset[str]] = {}
    if "address" in parts:
        wanted = set(links) if names is None else names & set(links)
        if len(wanted) > ADDRESS_READS_MAX:
            by_index = await kernel.addresses_by_index(netns)
            for name in wanted:
                addresses[name] = frozenset(by_index.get(links[name].ifindex, ()))
        else:
            for name in sorted(wanted):
                try:
                    addresses[name] = frozenset(await kernel.addresses(netns, name, links[name].ifindex))
                except NotFound:
                    pass  # deleted between the two dumps: the plan treats it as absent
    return KernelView(
        links=links,
        addresses=addresses,
        # the links just read name the routes' devices: no second link dump for their names
        routes=frozenset(await kernel.own_routes(netns, names={s.ifindex: n for n, s in links.items()}))
        if "route" in parts else frozenset(),
        rules=frozenset(await kernel.own_rules(netns)) if "rule" in parts else frozenset(),
    )


_SIDE_BY_SIDE = frozenset({"delete_link", "create_link"})  # run concurrently when a plan has several


# Actions that hand one spec (the Action field after the verb) to the backend method of the same name.
_OBJECT_OPS = {
    op: op.split("_", 1)[1]
    for op in ("add_address", "remove_address", "add_rule", "remove_rule")
}


async def run_action(kernel: KernelBackend, action: Action) -> LinkState | None:
    """Run one action; the link's state for link actions."""
    netns = action.netns
    op = action.op
    if op == "create_link":
        return await kernel.create_link(netns, action.link)
    if op == "recreate_link":
        try:
            await kernel.delete_link(netns, action.link.name)
        except NotFound:
            pass
        return await kernel.create_link(netns, action.link)
    if op == "change_link":
        if action.mark:
            return await kernel.change_link(netns, action.ifname, mtu=action.mtu, up=action.up, mark=True)
        return await kernel.change_link(netns, action.ifname, mtu=action.mtu, up=action.up)
    if op == "delete_link":
        try:
            await kernel.delete_link(netns, action.ifname, action.ifindex)
        except NotFound:
            pass  # already gone: that is what we wanted
        return None
    if op == "remove_route":
        await kernel.remove_route(netns, action.route, sole=action.sole, ifindex=action.ifindex)
        return None
    if op == "add_route":
        await kernel.add_route(netns, action.route, ifindex=action.ifindex)
        return None
    await getattr(kernel, op)(netns, getattr(action, _OBJECT_OPS[op]))
    return None


async def _read_created(kernel: KernelBackend, batch: list[Action], outcomes: list) -> None:
    """Fill in the states of the links a batch created (None in ``outcomes``) from one dump."""
    if not any(outcome is None for outcome in outcomes):
        return
    try:
        states = {state.name: state for state in await kernel.xfrm_links(batch[0].netns)}
    except XfrmidError as exc:
        outcomes[:] = [exc if outcome is None else outcome for outcome in outcomes]
        return
    for i, (action, outcome) in enumerate(zip(batch, outcomes)):
        if outcome is None:
            state = states.get(action.link.name)
            outcomes[i] = state if state is not None else NotFound(
                f"Creating interface {action.link.name!r}{where(action.netns)} failed: "
                "it vanished right after creation, or another kind of device took its name.")


def _fields(action: Action) -> dict:
    """Journal fields (INTERFACE=, IF_ID=, NETNS=) of the interface an action concerns."""
    return fields(
        interface=action.ifname, if_id=action.link.if_id if action.link else None, netns=action.netns
    )


async def apply(
    kernel: KernelBackend, actions: list[Action], *, strict: bool | Callable[[Action], bool]
) -> ApplyResult:
    """Run the kernel actions in order.

    A failure of a strict action stops the run and is raised (what the caller asked
    for cannot be done); any other failure is logged and the run goes on (a reconcile
    repairs what it can, and a caller is not failed for an unrelated repair).
    """
    result = ApplyResult()
    pos = 0
    while pos < len(actions):
        action = actions[pos]
        created: list[Action] = []  # of a large batch of creations, logged in one line
        if action.op in ("adopt", "conflict", "keep_address"):
            if action.op == "keep_address":
                log.debug("%s", action.detail, extra=_fields(action))
            pos += 1
            continue
        if action.op in _SIDE_BY_SIDE:
            # Deletions side by side: the backend deletes concurrent ones in one batch.
            end = pos
            while end < len(actions) and actions[end].op == action.op:
                end += 1
            batch = actions[pos:end]
            if action.op == "create_link" and len(batch) > SINGLE_CREATES_MAX:
                # many creations: sent to the kernel in batches from a thread, and the
                # new links read by one dump, not a get after each
                try:
                    outcomes = await kernel.create_links(action.netns, [a.link for a in batch])
                except XfrmidError as exc:
                    outcomes = [exc] * len(batch)
                await _read_created(kernel, batch, outcomes)
            else:  # deletions (the reaper bounds its own requests), or a few creations
                outcomes = await asyncio.gather(*(run_action(kernel, a) for a in batch), return_exceptions=True)
            pos = end
        else:
            batch = [action]
            try:
                outcomes = [await run_action(kernel, action)]
            except XfrmidError as exc:
                outcomes = [exc]
            pos += 1
        for done, outcome in zip(batch, outcomes):
            if isinstance(outcome, XfrmidError):
                if strict is True or (callable(strict) and strict(done)):
                    _log_created(created)  # what the undo then removes again
                    raise outcome
                log.warning("failed (%s): %s", done.detail, outcome, extra=_fields(done))
                result.failed.append((done, outcome))
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            result.done.append(done)
            if outcome is not None:
                result.links[outcome.name] = outcome
            if done.op == "create_link" and len(batch) > SINGLE_CREATES_MAX:
                created.append(done)
            else:
                log_done(done)
        _log_created(created)
    return result


def _log_created(created: list[Action]) -> None:
    """One line naming every interface a batch created (a line each cost a third of a
    CreateInterfaces of a thousand)."""
    if created:
        netns = created[0].netns
        log.info("created %d interfaces%s: %s", len(created), f" in netns {netns}" if netns else "",
                 ", ".join(a.ifname for a in created), extra=fields(netns=netns))


def log_done(action: Action) -> None:
    """Log an action done that changed something, with its journal fields."""
    if action.category is not None:
        log.info("%s%s", action.detail, f" in netns {action.netns}" if action.netns else "", extra=_fields(action))
