"""Read-only views the core hands to its adapters (D-Bus, CLI, tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    owners: tuple[str, ...]
    addresses: tuple[str, ...]
    routes: tuple[tuple[str, int, str], ...]  # (destination, table, src or "")
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
