"""Plain values describing kernel objects, shared by the kernel layer and the core.

Specs say what xfrmid wants; states say what the kernel has. All are frozen
and hashable so plans can be computed as set differences.
"""

from __future__ import annotations

from dataclasses import dataclass

MAIN_TABLE = 254

# Markers on everything xfrmid creates (see README "How xfrmid marks its objects").
XFRMID_PROTO = 120  # rtm_protocol / FRA_PROTOCOL; 'x' in ASCII; named in rt_protos.d
XFRMID_LINK_GROUP = 120  # IFLA_GROUP of links xfrmid created (bulk listing/deletion)
XFRMID_ALIAS = "xfrmid"  # IFLA_IFALIAS of links xfrmid created
# IFLA_GROUP of links xfrmid is deleting: moved here one by one, then removed
# with one group RTM_DELLINK (one unregister batch; see kernel/link_reaper.py).
# 0x7864656C is "xdel" in ASCII: no administrator picks it by accident, and it
# stays below 2**31 so iproute2 prints it as the same positive number.
XFRMID_DELETING_GROUP = 0x7864656C
# A link is xfrmid's own when it carries the alias and one of these groups, so
# one a crash left in the deleting group is a leftover the reconcile removes.
XFRMID_LINK_GROUPS = frozenset({XFRMID_LINK_GROUP, XFRMID_DELETING_GROUP})


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """An XFRM interface as xfrmid wants it."""

    name: str
    if_id: int
    link: str | None = None  # underlying device (IFLA_XFRM_LINK), for offload
    mtu: int | None = None  # None: the kernel's default
    up: bool = True
    external: bool = False  # collect_md mode (IFLA_XFRM_COLLECT_METADATA)


@dataclass(frozen=True, slots=True)
class LinkState:
    """An XFRM interface as the kernel reports it."""

    name: str
    if_id: int
    ifindex: int
    link: str | None
    mtu: int
    up: bool  # administratively up (IFF_UP)
    operstate: str
    external: bool
    owned: bool  # carries xfrmid's markers: xfrmid created it
    # xfrmid's group without its alias: a create of xfrmid's cut short between its two
    # requests (a crash), or someone else's link in that group; the desired state tells
    unmarked: bool = False


@dataclass(frozen=True, slots=True)
class AddressSpec:
    """An address on an interface; ``cidr`` normalised by validate.parse_interface_cidr."""

    ifname: str
    cidr: str


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route through an interface; ``dst`` is a normalised network ("10.0.0.0/8")."""

    dst: str
    dev: str
    table: int = MAIN_TABLE
    src: str | None = None
    metric: int | None = None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A policy routing rule: a selector, then what a matching packet does.

    ``action`` "lookup" looks up ``table``; "goto" jumps to the first rule at
    priority ``goto`` (later than its own); "nop" does nothing (a goto's landing
    place). ``table`` is 0 for the last two. ``invert`` is iproute2's ``not``
    (FIB_RULE_INVERT).
    """

    priority: int
    table: int
    family: int  # socket.AF_INET or socket.AF_INET6
    dst: str | None = None
    src: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    invert: bool = False
    action: str = "lookup"
    goto: int | None = None

    def action_text(self) -> str:
        """What a matching packet does, as ``ip rule`` says it: lookup 50, goto 103, nop."""
        if self.action == "goto":
            return f"goto {self.goto}"
        if self.action == "nop":
            return "nop"
        return f"lookup {self.table}"
