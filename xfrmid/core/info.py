"""InterfaceInfo views built from the desired state and the last kernel state seen."""

from __future__ import annotations

from functools import lru_cache

from ..errors import InvalidArgument
from ..kernel.objects import LinkState
from ..naming import output_mark
from ..settings import Settings
from .desired import DesiredInterface
from .routes_policy import PeerPolicy
from .views import InterfaceInfo

ABSENT = "absent"  # OperState of an interface whose link is missing (until reconcile recreates it)


def where(netns: str | None) -> str:
    """' in namespace 'blue'' or '' for the daemon's own, for messages."""
    return f" in namespace {netns!r}" if netns else ""


def peer_policy(settings: Settings) -> PeerPolicy:
    return _peer_policy(settings.peer_table, settings.peer_rule_priority)


@lru_cache(maxsize=4)
def _peer_policy(table: int, priority: int) -> PeerPolicy:
    # one object per setting: asked several times per call, and kernel_routes' cache
    # compares it (identity first)
    return PeerPolicy(table=table, priority=priority)


def build_info(iface: DesiredInterface, link: LinkState | None, settings: Settings) -> InterfaceInfo:
    mask = settings.name_policy.mark_mask
    try:
        mark, mask = output_mark(iface.if_id, mask)
    except InvalidArgument:  # the mask was narrowed by a reload: show it as it is
        mark = iface.if_id & mask
    routes, _ = iface.kernel_routes(settings.name_policy.mark_mask, peer_policy(settings)) \
        if mark == iface.if_id else (set(), set())
    return InterfaceInfo(
        name=iface.name,
        if_id=iface.if_id,
        netns=iface.netns or "",
        ifindex=link.ifindex if link else 0,
        link=(iface.link or (link.link if link else None)) or "",
        mtu=link.mtu if link else (iface.mtu or 0),
        external=iface.external,
        operstate=link.operstate if link else ABSENT,
        owned=iface.owned,
        owners=tuple(sorted(iface.owners)),
        addresses=tuple(sorted(iface.addresses())),
        routes=tuple(sorted((r.dst, r.table, r.src or "") for r in routes)),
        mark=mark,
        mask=mask,
    )

