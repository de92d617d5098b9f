"""What the core asks of the kernel: the one seam between policy and side effects.

The real implementation is ``xfrmid.kernel.rtnetlink.Kernel``, built by
``xfrmid.kernel.open_kernel()`` (rtnetlink through pyroute2's asyncio API). Unit tests of pure logic may use a fake with the same methods;
kernel-facing features are always tested against the real one in the VM.

``netns`` is a name under /run/netns, or None for the daemon's own namespace.
Every method raises only errors from ``xfrmid.errors``.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import XfrmidError
from .features import Features
from .objects import AddressSpec, LinkSpec, LinkState, RouteSpec, RuleSpec


class KernelBackend(Protocol):
    async def features(self) -> Features: ...

    # links of kind xfrm
    async def xfrm_links(self, netns: str | None) -> list[LinkState]: ...
    async def link(self, netns: str | None, name: str) -> LinkState: ...  # NotFound / InvalidArgument (not xfrm)
    async def create_link(self, netns: str | None, spec: LinkSpec) -> LinkState: ...
    async def create_links(
        self, netns: str | None, specs: list[LinkSpec]
    ) -> list[LinkState | XfrmidError | None]: ...  # each created (None: the caller dumps
    # the new links) or adopted (its state), or the error; in order
    async def change_link(
        self, netns: str | None, name: str, *, mtu: int | None = None, up: bool | None = None, mark: bool = False
    ) -> LinkState: ...  # ``mark``: put xfrmid's markers on it (finish a create cut short)
    async def delete_link(
        self, netns: str | None, name: str, ifindex: int | None = None
    ) -> None: ...  # ``ifindex`` from a LinkState just read saves a lookup

    # addresses (normalised "addr/prefix" strings): of one interface (``ifindex``, when
    # the caller knows it, saves a lookup), or of all interfaces by ifindex in one dump
    async def addresses(self, netns: str | None, ifname: str, ifindex: int | None = None) -> set[str]: ...
    async def addresses_by_index(self, netns: str | None) -> dict[int, set[str]]: ...
    async def add_address(self, netns: str | None, spec: AddressSpec) -> None: ...
    async def remove_address(self, netns: str | None, spec: AddressSpec) -> None: ...

    # routes and rules carrying xfrmid's protocol marker only
    async def own_routes(
        self, netns: str | None, dev: str | None = None, ifindex: int | None = None,
        names: dict[int, str] | None = None,
    ) -> set[RouteSpec]: ...  # only through ``dev`` if given; ``ifindex`` saves its lookup;
    # ``names``: devices by ifindex the caller just read (saves looking those up)
    # ``ifindex``: spec.dev's index as last seen (saves a lookup; a stale one costs a retry by name)
    async def add_route(self, netns: str | None, spec: RouteSpec, *, ifindex: int | None = None) -> None: ...
    async def remove_route(self, netns: str | None, spec: RouteSpec, *, sole: bool = False,
                           ifindex: int | None = None) -> None: ...
    # ``sole``: no other route of xfrmid's to spec.dst through spec.dev in spec.table is wanted,
    # so a removal the kernel matches by prefix alone cannot take a wanted one (no read first)
    async def own_rules(self, netns: str | None) -> set[RuleSpec]: ...
    async def add_rule(self, netns: str | None, spec: RuleSpec) -> None: ...
    async def remove_rule(self, netns: str | None, spec: RuleSpec) -> None: ...

    async def close(self) -> None: ...
