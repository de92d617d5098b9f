"""What a call's interface is: its arguments checked, a new one created or adopted, a kept one
deletable or not, and the configured ones merged in.

``new_interface`` decides for a name not in the desired state yet: xfrmid
creates the link (owned) unless a foreign xfrm link of that name agrees with
the request, which is adopted (owned=False, never deleted by xfrmid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ..errors import Busy, Conflict, InvalidArgument, KernelUnsupported, NotFound, NotOwned, where
from ..naming import check_ifname, check_u32, check_unique, derived_if_id, resolve
from ..settings import Settings, StaticInterface
from ..validate import check_netns, parse_interface_cidr
from .desired import NO_ADDRESSES, DesiredInterface, Key
from .desired_state import DesiredState

if TYPE_CHECKING:
    from ..kernel.backend import KernelBackend
    from ..kernel.features import Features
    from ..kernel.objects import LinkState

MTU_MIN = 68  # the xfrm device's min_mtu (ETH_MIN_MTU)
MTU_MAX = 65535  # its max_mtu (IP_MAX_MTU)


def check_mtu(mtu: object, name: str) -> int | None:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
        raise InvalidArgument(f"MTU {mtu!r} of interface {name!r} is outside {MTU_MIN}..{MTU_MAX}.")
    return mtu


@dataclass(frozen=True)
class CreateRequest:
    """CreateInterface's arguments, checked."""

    if_id: int
    link: str | None
    mtu: int | None
    external: bool
    cidrs: frozenset[str]


def create_request(name: str, if_id: object, link: object, mtu: object, external: object,
                   addresses: object) -> CreateRequest:
    """CreateInterface's arguments for interface ``name`` checked (InvalidArgument names the bad one)."""
    if_id = check_u32("if_id", if_id)
    link = None if link in (None, "") else check_ifname(link)
    mtu = check_mtu(mtu, name)
    if not isinstance(external, bool):
        raise InvalidArgument(f"Option external {external!r} is not a boolean.")
    if isinstance(addresses, str):
        raise InvalidArgument(f"Addresses {addresses!r} must be a list of addresses, not one string.")
    return CreateRequest(if_id, link, mtu, external, frozenset(parse_interface_cidr(a) for a in addresses))


CREATE_OPTIONS = ("addresses", "external", "link", "mtu")


def create_requests(entries: object) -> dict[str, CreateRequest]:
    """CreateInterfaces' entries (name, if_id, {link, mtu, external, addresses}) checked, by name."""
    if isinstance(entries, (str, bytes)) or not all(isinstance(e, (tuple, list)) and len(e) == 3 for e in entries):
        raise InvalidArgument(f"Interfaces {entries!r} must be a list of (name, if_id, options).")
    wanted: dict[str, CreateRequest] = {}
    for name, if_id, options in entries:
        name = check_ifname(name)
        unknown = set(options) - set(CREATE_OPTIONS)
        if unknown:
            raise InvalidArgument(f"Option {sorted(unknown)[0]!r} of interface {name!r} is not known to "
                                  f"CreateInterfaces (known options: {', '.join(CREATE_OPTIONS)}).")
        request = create_request(name, if_id, options.get("link"), options.get("mtu"),
                                 options.get("external", False), options.get("addresses", ()))
        if wanted.setdefault(name, request) != request:
            raise InvalidArgument(f"Interface {name!r} is asked for twice, differently.")
    return wanted


def check_mtu_change(iface: DesiredInterface, mtu: int | None, fresh: bool, have: "LinkState | None") -> None:
    """CreateInterface's MTU for ``iface`` (``fresh``: new to the desired state; ``have``: its
    link as last seen): an adopted link keeps its own MTU, and a kept one is not changed."""
    if mtu is None or mtu == iface.mtu:
        return
    name, at = iface.name, where(iface.netns)
    if not iface.owned:
        if have is None or have.mtu != mtu:
            raise Conflict(f"Interface {name!r}{at} was not created by xfrmid; its MTU is not changed to {mtu}.")
    elif iface.mtu is not None and not fresh:
        raise Conflict(f"Interface {name!r}{at} exists with MTU {iface.mtu}, not {mtu}.")


def check_deletable(iface: DesiredInterface | None, key: Key, force: bool) -> None:
    """DeleteInterface may delete ``iface``: xfrmid created it, the configuration does not
    declare it, and nobody is attached (unless ``force``)."""
    netns, name = key
    if iface is None:
        raise NotFound(f"Interface {name!r} is not managed by xfrmid{where(netns)}.")
    if not iface.owned:
        raise NotOwned(f"Interface {name!r}{where(netns)} existed before xfrmid adopted it; "
                       "xfrmid does not delete it.")
    if iface.static:
        raise Conflict(f"Interface {name!r}{where(netns)} is declared in the configuration file; "
                       "remove it there and reload.")
    if iface.owners and not force:
        raise Busy(f"Interface {name!r}{where(netns)} is still attached by "
                   f"{', '.join(sorted(iface.owners))}; detach them or use force.")


def check_static(static: StaticInterface, settings: Settings) -> DesiredInterface:
    """A configured interface as desired state; InvalidArgument names the bad entry."""
    netns = check_netns(static.netns)
    ident = resolve(static.name, static.if_id, settings.name_policy)
    link = None if not static.link else check_ifname(static.link)
    return DesiredInterface(
        netns=netns,
        name=ident.name,
        if_id=ident.if_id,
        link=link,
        mtu=check_mtu(static.mtu, ident.name),
        external=bool(static.external),
        static=True,
        static_addresses=frozenset(parse_interface_cidr(a) for a in static.addresses) or NO_ADDRESSES,
    )


def same_link(iface: DesiredInterface, if_id: int, link: str | None, external: bool, settings: Settings) -> None:
    """CreateInterface of a kept interface must describe it as it is (Conflict otherwise)."""
    name, at = iface.name, where(iface.netns)
    if if_id:
        resolve(name, if_id, settings.name_policy)  # the name's own if_id first: InvalidArgument
    if if_id and if_id != iface.if_id:
        raise Conflict(f"Interface {name!r}{at} exists with if_id {iface.if_id}, not {if_id}.")
    if link is not None and link != iface.link:
        raise Conflict(f"Interface {name!r}{at} exists with underlying device {iface.link or 'none'}, not {link}.")
    if external != iface.external:
        mode = "external (collect_md)" if iface.external else "normal"
        raise Conflict(f"Interface {name!r}{at} exists in {mode} mode.")


class NewInterface(NamedTuple):
    iface: DesiredInterface  # not in the desired state yet
    free: bool  # the kernel just reported no link of that name: the create needs no read before


async def new_interface(
    kernel: "KernelBackend",
    settings: Settings,
    desired: DesiredState,
    features: "Features | None",
    netns: str | None,
    name: str,
    if_id: int,
    *,
    link: str | None = None,
    mtu: int | None = None,
    external: bool | None = None,
    known: "dict[str, LinkState] | None" = None,
) -> NewInterface:
    """The desired interface for a name not in the desired state yet (not stored here).

    A foreign xfrm link of that name is adopted (owned=False) when it agrees with the
    request and the name policy; otherwise xfrmid will create the link (owned=True).
    ``external`` None (Attach) accepts the existing link's mode. ``known``: the
    namespace's xfrm links from one dump just taken (a bulk call), instead of a get.
    """
    policy = settings.name_policy
    free = False
    if known is not None:
        have = known.get(name)  # absent, or not an xfrm device: as below
        free = have is None
    else:
        try:
            have = await kernel.link(netns, name)  # one get, not a dump of the namespace
        except NotFound:
            have, free = None, True
        except InvalidArgument:
            have = None  # not an xfrm device (the create then says the name is taken)
    at = where(netns)
    if have is not None and not have.owned:
        if external is not None and external != have.external:
            raise Conflict(f"Interface {name!r}{at} exists and is {'' if have.external else 'not '}"
                           "in external (collect_md) mode.")
        if have.external:
            ident = resolve(name, if_id, policy)
        else:
            if if_id and if_id != have.if_id:
                raise Conflict(f"Interface {name!r}{at} already exists with if_id {have.if_id}, not {if_id}.")
            implied = derived_if_id(name)
            if implied is not None and implied != have.if_id:
                raise Conflict(f"Interface {name!r}{at} exists with if_id {have.if_id}, "
                               f"but its name implies if_id {implied}.")
            ident = resolve(name, have.if_id, policy)
        if link is not None and link != have.link:
            raise Conflict(f"Interface {name!r}{at} exists with underlying device {have.link or 'none'}, not {link}.")
        return NewInterface(DesiredInterface(netns=netns, name=name, if_id=ident.if_id, link=have.link,
                                             external=have.external, owned=False), free)
    ident = resolve(name, if_id, policy)
    if features is not None and not features.xfrm_interface:
        raise KernelUnsupported(features.explanation() or "This kernel has no XFRM interfaces.")
    if external and features is not None and not features.collect_md:
        raise KernelUnsupported(f"Kernel {features.kernel} has no external (collect_md) XFRM interfaces, "
                                f"needed for {name!r}; they need Linux 6.1 or later.")
    if not external:
        # Desired interfaces holding the if_id; a foreign link holding it makes the
        # kernel refuse the create, which names the holder (Conflict).
        taken = {i.name: i.if_id for i in desired.with_if_id(netns, ident.if_id)
                 if i.name != name and not i.external}
        check_unique(ident, taken)
    return NewInterface(DesiredInterface(netns=netns, name=name, if_id=ident.if_id, link=link, mtu=mtu,
                                         external=bool(external), owned=True), free)


def merge_static(desired: DesiredState, settings: Settings) -> None:
    """Merge the configuration's interfaces into the desired state (pure; raises on a bad entry).

    Interfaces no longer configured lose their static hold (and are dropped when nothing
    else holds them); configured ones gain it, with the file's link, MTU and addresses.
    """
    wanted = {}
    for static in settings.static_interfaces:
        iface = check_static(static, settings)
        wanted[iface.key] = iface
    for key, iface in list(desired.interfaces.items()):
        if iface.static and key not in wanted:
            dropped = iface.static_addresses
            iface.static, iface.static_addresses = False, NO_ADDRESSES
            desired.retire(iface, dropped)
            if not iface.wanted:
                desired.drop(key)
    for key, new in wanted.items():
        old = desired.get(key)
        if old is None:
            desired.put(new)
            continue
        if old.if_id != new.if_id or old.external != new.external:
            raise Conflict(
                f"Configured interface {new.name!r}{where(new.netns)} has if_id {new.if_id}, "
                f"but it exists with if_id {old.if_id}."
            )
        dropped = old.static_addresses - new.static_addresses
        old.static, old.static_addresses = True, new.static_addresses
        old.link = new.link if new.link is not None else old.link
        old.mtu = new.mtu if new.mtu is not None else old.mtu
        old.linger_until = None
        desired.retire(old, dropped)
