"""The ``xfrm`` link kind: pyroute2 plugin plus the kind's table of hooks.

pyroute2 0.9 knows IFLA_XFRM_LINK and IFLA_XFRM_IF_ID but not
IFLA_XFRM_COLLECT_METADATA (attribute 3, a flag, Linux 6.1). We extend its
own ``xfrm`` class and register the result through pyroute2's plugin
mechanism (``ifinfmsg.ifinfo.register_link_kind``), so decoded replies carry
the flag and pyroute2 messages can (the feature probe's). ``register`` runs
when the kernel layer is opened (``xfrmid.kernel.prepare``), not on import.

The hooks follow systemd-networkd's netdev/xfrm.c: verify a spec, fill the
IFLA_INFO_DATA of a create request, parse IFLA_INFO_DATA of a dump. What the
kernel requires (net/xfrm/xfrm_interface_core.c, xfrmi_newlink/changelink):
a normal interface needs if_id != 0 and the if_id unique in its namespace
(else EEXIST); an external (collect_md) interface needs link 0 and if_id 0,
at most one per namespace, and the mode cannot be changed later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ifinfmsg.plugins.xfrm import xfrm as _pyroute2_xfrm

from ..errors import InvalidArgument, KernelUnsupported
from ..naming import check_if_id, check_ifname
from . import netlink
from .objects import LinkSpec

if TYPE_CHECKING:
    from .features import Features

KIND = "xfrm"
IFLA_XFRM_LINK, IFLA_XFRM_IF_ID, IFLA_XFRM_COLLECT_METADATA = 1, 2, 3
MTU_MIN = 68  # ETH_MIN_MTU, the xfrm device's min_mtu
MTU_MAX = 65535  # IP_MAX_MTU, its max_mtu


class xfrm(_pyroute2_xfrm):  # noqa: N801 - pyroute2 looks plugins up by kind name
    """pyroute2's xfrm IFLA_INFO_DATA plus IFLA_XFRM_COLLECT_METADATA."""

    nla_map = tuple(_pyroute2_xfrm.nla_map) + (("IFLA_XFRM_COLLECT_METADATA", "flag"),)


def register() -> None:
    """Install the extended kind into pyroute2 (idempotent)."""
    if ifinfmsg.ifinfo.data_map.get(KIND) is not xfrm:
        ifinfmsg.ifinfo.register_link_kind(module={KIND: xfrm})


@dataclass(frozen=True)
class KindState:
    """What IFLA_INFO_DATA of one xfrm link says."""

    if_id: int
    link_index: int  # 0: no underlying device
    external: bool


def verify(spec: LinkSpec, features: "Features | None" = None) -> None:
    """Raise InvalidArgument/KernelUnsupported unless the kernel can build this spec."""
    check_ifname(spec.name)
    if spec.mtu is not None:
        if isinstance(spec.mtu, bool) or not isinstance(spec.mtu, int) or not MTU_MIN <= spec.mtu <= MTU_MAX:
            raise InvalidArgument(
                f"MTU {spec.mtu!r} of interface {spec.name!r} is outside {MTU_MIN}..{MTU_MAX}."
            )
    if spec.link is not None:
        check_ifname(spec.link)
    if spec.external:
        if spec.link is not None:
            raise InvalidArgument(
                f"External (collect_md) interface {spec.name!r} cannot have an underlying device "
                f"({spec.link!r}); the kernel requires link 0 in that mode."
            )
        if features is not None and not features.collect_md:
            raise KernelUnsupported(
                f"Kernel {features.kernel} has no external (collect_md) XFRM interfaces, "
                f"needed for {spec.name!r}; they need Linux 6.1 or later."
            )
    else:
        check_if_id(spec.if_id)


def fill_create(spec: LinkSpec, link_index: int) -> bytes:
    """IFLA_INFO_DATA attributes of the create request, encoded (netlink.py)."""
    if spec.external:
        # if_id and link must be absent/zero: each SA carries its own if_id
        return netlink.flag(IFLA_XFRM_COLLECT_METADATA)
    attrs = netlink.u32(IFLA_XFRM_IF_ID, spec.if_id)
    if link_index:
        attrs += netlink.u32(IFLA_XFRM_LINK, link_index)
    return attrs


def parse(data: Any) -> KindState:
    """KindState from a decoded IFLA_INFO_DATA (None-safe)."""
    if data is None or not hasattr(data, "get_attr"):
        return KindState(if_id=0, link_index=0, external=False)
    return KindState(
        if_id=data.get_attr("IFLA_XFRM_IF_ID") or 0,
        link_index=data.get_attr("IFLA_XFRM_LINK") or 0,
        external=bool(data.get_attr("IFLA_XFRM_COLLECT_METADATA")),
    )


@dataclass(frozen=True)
class LinkKind:
    """A link kind as a table of hooks (networkd's NetDevVTable, in small)."""

    name: str
    verify: Callable[[LinkSpec, "Features | None"], None]
    fill_create: Callable[[LinkSpec, int], bytes]
    parse: Callable[[Any], KindState]


XFRM = LinkKind(name=KIND, verify=verify, fill_create=fill_create, parse=parse)
