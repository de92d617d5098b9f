"""What the core shows of an interface: the read-only views it hands to its adapters
(D-Bus, CLI, tests), how one is built, and the listener protocol adapters implement
to hear about changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidArgument
from ..naming import output_mark

if TYPE_CHECKING:
    from ..kernel.objects import LinkState
    from .desired import DesiredInterface
    from .routes_policy import PeerPolicy

ABSENT = "absent"  # OperState of an interface whose link is missing (until reconcile recreates it)


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """One managed or adopted interface, as the contract's Interface object shows it."""

    name: str
    if_id: int
    netns: str  # "" for the daemon's own namespace
    ifindex: int
    link: str  # "" when there is no underlying device
    mtu: int
    external: bool
    operstate: str
    owned: bool  # xfrmid created it (and may delete it)
    # sorted; a tuple, or beyond a few dozen items a SortedItems (compares equal to the tuple),
    # which the next view shares but for the part that changed (core/sorted_items.py)
    owners: Sequence[str]
    addresses: Sequence[str]
    routes: Sequence[tuple[str, int, str]]  # (destination, table, src or "")
    mark: int
    mask: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.netns, self.name)


@dataclass(frozen=True, slots=True)
class AttachResult:
    info: InterfaceInfo
    if_id: int
    mark: int
    mask: int


class ManagerListener(Protocol):
    """What adapters implement to hear about changes (signals on the bus)."""

    def interface_added(self, info: InterfaceInfo) -> None: ...
    def interface_changed(self, info: InterfaceInfo) -> None: ...
    def interface_removed(self, info: InterfaceInfo) -> None: ...
    def repaired(self, info: InterfaceInfo, what: str) -> None: ...


def build_info(iface: "DesiredInterface", link: "LinkState | None", mask: int, peer: "PeerPolicy") -> InterfaceInfo:
    """The view of a desired interface, with what the kernel was last seen to hold (``link``)."""
    try:
        mark, shown_mask = output_mark(iface.if_id, mask)
    except InvalidArgument:  # the mask was narrowed by a reload: show it as it is
        mark, shown_mask = iface.if_id & mask, mask
    if mark == iface.if_id:
        owners, addresses, routes = iface.listing(mask, peer)
    else:  # no routes outside the mask
        owners, addresses, routes = iface.listing(mask, peer, routes=False)
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
        owners=owners,
        addresses=addresses,
        routes=routes,
        mark=mark,
        mask=shown_mask,
    )
