"""``Kernel``: xfrmid's KernelBackend over rtnetlink.

Every method takes the target namespace (a name under /run/netns, or None for
the daemon's own), gets that namespace's connection (connection.py) and hands
it to the module that owns the object kind: links.py, addresses.py,
routes.py, rules.py. It raises only xfrmid.errors. Nothing here knows about
D-Bus. Build it with ``xfrmid.kernel.open_kernel()``, which readies pyroute2's
import first (the daemon's start-up); a Kernel built directly works the same.
"""

from __future__ import annotations

import asyncio

from ..errors import KernelUnsupported, XfrmidError
from . import addresses as _addresses
from . import links as _links
from . import routes as _routes
from . import rules as _rules
from . import xfrm_kind
from .connection import Connections
from .features import Features
from .objects import AddressSpec, LinkSpec, LinkState, RouteSpec, RuleSpec
from .probe import probe_features


class Kernel:
    """The real KernelBackend."""

    def __init__(self) -> None:
        xfrm_kind.register()  # replies and the probe's requests carry the kind's attributes
        self._conns = Connections()
        self._features: Features | None = None
        self._probe_lock = asyncio.Lock()

    async def features(self) -> Features:
        """Probe once, then answer from the cache."""
        if self._features is None:
            async with self._probe_lock:
                if self._features is None:
                    self._features = await probe_features()
        return self._features

    async def _unsupported(self, exc: KernelUnsupported) -> KernelUnsupported:
        features = await self.features()
        return KernelUnsupported(features.explanation()) if not features.xfrm_interface else exc

    # links of kind xfrm
    async def xfrm_links(self, netns: str | None) -> list[LinkState]:
        return await _links.xfrm_links(await self._conns.get(netns), netns)

    async def link(self, netns: str | None, name: str) -> LinkState:
        """One xfrm link (NotFound if missing, InvalidArgument if not xfrm)."""
        return await _links.link_state(await self._conns.get(netns), netns, name)

    async def create_link(self, netns: str | None, spec: LinkSpec) -> LinkState:
        conn = await self._conns.get(netns)
        features = await self.features() if spec.external else None
        try:
            return await _links.create_link(conn, netns, spec, features)
        except KernelUnsupported as exc:
            raise await self._unsupported(exc) from None

    async def create_links(self, netns: str | None, specs: list[LinkSpec]) -> list[LinkState | XfrmidError | None]:
        """``create_link(read=False)`` of many links in two batches of requests; outcomes in order."""
        conn = await self._conns.get(netns)
        features = await self.features() if any(spec.external for spec in specs) else None
        outcomes = await _links.create_links(conn, netns, specs, features)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, KernelUnsupported):
                outcomes[i] = await self._unsupported(outcome)
        return outcomes

    async def change_link(
        self, netns: str | None, name: str, *, mtu: int | None = None, up: bool | None = None, mark: bool = False
    ) -> LinkState:
        return await _links.change_link(await self._conns.get(netns), netns, name, mtu=mtu, up=up, mark=mark)

    async def delete_link(self, netns: str | None, name: str, ifindex: int | None = None) -> None:
        """Delete one xfrm link; ``ifindex`` (from a state just read) saves the kind check's get.

        Concurrent deletions in one namespace cost the kernel one unregister batch.
        """
        await _links.delete_link(await self._conns.get(netns), netns, name, ifindex)

    # addresses
    async def addresses(self, netns: str | None, ifname: str, ifindex: int | None = None) -> set[str]:
        """Addresses of one interface; pass ``ifindex`` when known (saves a lookup)."""
        return await _addresses.addresses(await self._conns.get(netns), netns, ifname, ifindex)

    async def addresses_by_index(self, netns: str | None) -> dict[int, set[str]]:
        """Every address of the namespace by ifindex, in one dump."""
        return await _addresses.addresses_by_index(await self._conns.get(netns), netns)

    async def add_address(self, netns: str | None, spec: AddressSpec) -> None:
        await _addresses.add_address(await self._conns.get(netns), netns, spec)

    async def remove_address(self, netns: str | None, spec: AddressSpec) -> None:
        await _addresses.remove_address(await self._conns.get(netns), netns, spec)

    # routes and rules carrying xfrmid's protocol
    async def own_routes(
        self, netns: str | None, dev: str | None = None, ifindex: int | None = None,
        names: dict[int, str] | None = None,
    ) -> set[RouteSpec]:
        """xfrmid's routes; only those through ``dev`` if given (``ifindex`` saves a lookup;
        ``names``, devices by ifindex just read, save looking their names up)."""
        return await _routes.own_routes(await self._conns.get(netns), netns, dev, ifindex, names)

    async def add_route(self, netns: str | None, spec: RouteSpec, *, ifindex: int | None = None) -> None:
        await _routes.add_route(await self._conns.get(netns), netns, spec, ifindex)

    async def remove_route(self, netns: str | None, spec: RouteSpec, *, sole: bool = False,
                           ifindex: int | None = None) -> None:
        await _routes.remove_route(await self._conns.get(netns), netns, spec, sole=sole, ifindex=ifindex)

    async def own_rules(self, netns: str | None) -> set[RuleSpec]:
        return await _rules.own_rules(await self._conns.get(netns), netns)

    async def add_rule(self, netns: str | None, spec: RuleSpec) -> None:
        await _rules.add_rule(await self._conns.get(netns), netns, spec)

    async def remove_rule(self, netns: str | None, spec: RuleSpec) -> None:
        await _rules.remove_rule(await self._conns.get(netns), netns, spec)

    def forget_netns(self, netns: str | None) -> None:
        """Drop the connection of a namespace (call after deleting the namespace)."""
        self._conns.forget(netns)

    async def close(self) -> None:
        await self._conns.close()

    async def __aenter__(self) -> "Kernel":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
