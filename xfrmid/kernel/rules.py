"""Policy routing rules, IPv4 and IPv6, carrying xfrmid's protocol (FRA_PROTOCOL).

A rule looks up a table, jumps ahead (``goto``) or does nothing (``nop``, a
landing place for jumps). ``invert`` is iproute2's ``not`` (FIB_RULE_INVERT).
``prio 101 to 192.1.2.23/32 fwmark 1/0xffffffff goto 103`` is
RuleSpec(priority=101, table=0, family=AF_INET, dst="192.1.2.23/32",
fwmark=1, fwmask=0xffffffff, action="goto", goto=103). ``own_rules`` reports
only rules with xfrmid's protocol, and removal names it, so foreign rules stay.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import replace

from pyroute2.netlink import NLM_F_CREATE
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELRULE, RTM_GETRULE, RTM_NEWRULE
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_TO_TBL, fibmsg

from ..errors import InvalidArgument, where
from ..naming import check_u32
from ..validate import parse_network
from . import nlattrs
from .netlink import F_CREATE, F_REQ, FIBRULE
from .nlerrors import code_of, translate
from .objects import XFRMID_PROTO, RuleSpec

FIB_RULE_INVERT = 0x2
FULL_MASK = 0xFFFFFFFF
ACTIONS = {"lookup": FR_ACT_TO_TBL, "goto": FR_ACT_GOTO, "nop": FR_ACT_NOP}
_ACTION_NAMES = {value: name for name, value in ACTIONS.items()}
_FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}


def _prefix(what: str, value: str | None, family: int) -> str | None:
    if value is None:
        return None
    net = parse_network(value)
    if (ipaddress.ip_network(net).version == 6) != (family == socket.AF_INET6):
        raise InvalidArgument(f"Rule {what} {net} is not an {_FAMILIES[family]} prefix.")
    return None if net.endswith("/0") else net  # /0 is "all", the same as no selector


def normalize(spec: RuleSpec) -> RuleSpec:
    """Validate a RuleSpec and put it in the form own_rules reports."""
    if spec.family not in _FAMILIES:
        raise InvalidArgument(f"Rule family {spec.family!r} is neither AF_INET nor AF_INET6.")
    priority = check_u32("Rule priority", spec.priority)
    table = check_u32("Routing table", spec.table)
    if spec.action not in ACTIONS:
        raise InvalidArgument(f"Rule action {spec.action!r} is not one of {', '.join(ACTIONS)}.")
    goto = None
    if spec.action == "lookup" and table == 0:
        raise InvalidArgument("Routing table 0 is not a table; use 1 to 4294967295 (254 is main).")
    if spec.action != "lookup" and table != 0:
        raise InvalidArgument(f"A {spec.action} rule looks up no table (table {table} given).")
    if spec.action == "goto":
        goto = check_u32("Goto target", spec.goto)
        if goto <= priority:  # the kernel refuses backward jumps (endless loops)
            raise InvalidArgument(f"Rule priority {priority} cannot jump to priority {goto}: only later rules.")
    elif spec.goto is not None:
        raise InvalidArgument(f"A {spec.action} rule has no goto target ({spec.goto} given).")
    fwmark, fwmask = spec.fwmark, spec.fwmask
    if fwmark is not None or fwmask is not None:
        fwmark = check_u32("fwmark", fwmark if fwmark is not None else 0)
        fwmask = check_u32("fwmark mask", fwmask if fwmask is not None else FULL_MASK)
        if fwmark & ~fwmask & FULL_MASK:
            raise InvalidArgument(f"fwmark 0x{fwmark:x} has bits outside its mask 0x{fwmask:x}.")
        if fwmark == 0 and fwmask == 0:
            fwmark = fwmask = None
    return replace(
        spec,
        priority=priority,
        table=table,
        dst=_prefix("destination", spec.dst, spec.family),
        src=_prefix("source", spec.src, spec.family),
        fwmark=fwmark,
        fwmask=fwmask,
        invert=bool(spec.invert),
        goto=goto,
    )


def describe(spec: RuleSpec) -> str:
    parts = [f"rule prio {spec.priority}"]
    if spec.invert:
        parts.append("not")
    parts.append(f"from {spec.src or 'all'}")
    if spec.dst:
        parts.append(f"to {spec.dst}")
    if spec.fwmark is not None:
        parts.append(f"fwmark 0x{spec.fwmark:x}/0x{spec.fwmask:x}")
    parts.append(spec.action_text())
    return " ".join(parts)


def _message(spec: RuleSpec) -> fibmsg:
    msg = fibmsg()
    msg["family"] = spec.family
    msg["table"] = spec.table if spec.table < 256 else 0
    msg["action"] = ACTIONS[spec.action]
    msg["flags"] = FIB_RULE_INVERT if spec.invert else 0
    attrs: list = [("FRA_PRIORITY", spec.priority), ("FRA_PROTOCOL", XFRMID_PROTO)]
    if spec.table:
        attrs.append(("FRA_TABLE", spec.table))
    if spec.goto is not None:
        attrs.append(("FRA_GOTO", spec.goto))
    for attr, length, value in (("FRA_DST", "dst_len", spec.dst), ("FRA_SRC", "src_len", spec.src)):
        if value is not None:
            net = ipaddress.ip_network(value)
            msg[length] = net.prefixlen
            attrs.append((attr, str(net.network_address)))
    if spec.fwmark is not None:
        attrs.append(("FRA_FWMARK", spec.fwmark))
        attrs.append(("FRA_FWMASK", spec.fwmask))
    msg["attrs"] = attrs
    return msg


_FRA_DST, _FRA_SRC, _FRA_GOTO, _FRA_PRIORITY, _FRA_FWMARK, _FRA_TABLE, _FRA_FWMASK, _FRA_PROTOCOL = (
    1, 2, 4, 6, 10, 15, 16, 21)
_RULE_ATTRS = {
    family: {_FRA_PROTOCOL: nlattrs.u8, _FRA_PRIORITY: nlattrs.u32, _FRA_TABLE: nlattrs.u32, _FRA_DST: ip,
             _FRA_SRC: ip, _FRA_FWMARK: nlattrs.u32, _FRA_FWMASK: nlattrs.u32, _FRA_GOTO: nlattrs.u32}
    for family, ip in nlattrs.ADDRESS.items()
}


def _parse(data: bytes, pos: int, end: int) -> RuleSpec | None:
    """The RuleSpec of one raw RTM_NEWRULE carrying xfrmid's protocol, else None."""
    family, dst_len, src_len, _tos, table, _r1, _r2, action, flags = FIBRULE.unpack_from(data, pos)
    if family not in _FAMILIES or action not in _ACTION_NAMES:
        return None
    attrs = nlattrs.pick(data, pos + 12, end, _RULE_ATTRS[family])
    if attrs.get(_FRA_PROTOCOL) != XFRMID_PROTO:
        return None
    fwmark, fwmask = attrs.get(_FRA_FWMARK), attrs.get(_FRA_FWMASK)
    if fwmark is None and fwmask:
        fwmark = 0
    if fwmark is not None and fwmask is None:
        fwmask = FULL_MASK
    dst, src = attrs.get(_FRA_DST), attrs.get(_FRA_SRC)
    name = _ACTION_NAMES[action]
    return RuleSpec(
        priority=attrs.get(_FRA_PRIORITY, 0),
        table=attrs.get(_FRA_TABLE, table) if name == "lookup" else 0,
        family=family,
        dst=None if dst is None else _prefix("selector", f"{dst}/{dst_len}", family),
        src=None if src is None else _prefix("selector", f"{src}/{src_len}", family),
        fwmark=fwmark,
        fwmask=fwmask if fwmark is not None else None,
        invert=bool(flags & FIB_RULE_INVERT),
        action=name,
        goto=attrs.get(_FRA_GOTO) if name == "goto" else None,
    )


async def _own_rule_list(conn, netns: str | None) -> list[RuleSpec]:
    """xfrmid's rules in the kernel's order, the order a removal searches them."""
    # The kernel filters no rule dump (fib_valid_dumprule_req refuses any
    # selector), so every rule comes back; only FRA_PROTOCOL 120 ones are parsed.
    query = fibmsg()
    query["family"] = socket.AF_UNSPEC
    try:
        raw = await conn.raw_dump(query, RTM_GETRULE)
    except NetlinkError as exc:
        raise translate(exc, f"Listing xfrmid's rules{where(netns)}") from None
    return [spec for mtype, data, pos, end in raw if mtype == RTM_NEWRULE and (spec := _parse(data, pos, end))]


async def own_rules(conn, netns: str | None) -> set[RuleSpec]:
    return set(await _own_rule_list(conn, netns))


def _caught(pattern: RuleSpec, rule: RuleSpec) -> bool:
    """Whether the kernel's removal (or duplicate check) of ``pattern`` may match ``rule``
    (net/core/fib_rules.c rule_find, rule_exists): an absent selector matches anything,
    and neither looks at ``not`` (the flags) or a goto's target."""
    return (
        rule.family == pattern.family and rule.priority == pattern.priority and rule.action == pattern.action
        and (not pattern.table or rule.table == pattern.table)
        and (not pattern.fwmark or rule.fwmark == pattern.fwmark)
        and (not pattern.fwmask or rule.fwmask == pattern.fwmask)
        and (pattern.dst is None or rule.dst == pattern.dst)
        and (pattern.src is None or rule.src == pattern.src)
    )


async def add_rule(conn, netns: str | None, spec: RuleSpec) -> None:
    """Add the rule; fine if xfrmid's identical rule is already there."""
    spec = normalize(spec)
    doing = f"Adding {describe(spec)}{where(netns)}"
    try:
        await conn.request(_message(spec), RTM_NEWRULE, F_CREATE)
    except NetlinkError as exc:
        if code_of(exc) != 17:
            raise translate(exc, doing) from None
        ours = await own_rules(conn, netns)
        if spec in ours:
            return
        if not any(_caught(spec, rule) for rule in ours):
            raise translate(exc, doing) from None
        # The kernel's duplicate check reads an absent destination as "any" (a full
        # tunnel's rule "exists" once a peer's rule of that mark does) and ignores
        # ``not``: the "duplicate" is another rule of ours, so add it all the same.
        try:
            await conn.request(_message(spec), RTM_NEWRULE, F_REQ | NLM_F_CREATE)
        except NetlinkError as again:
            raise translate(again, doing) from None


async def remove_rule(conn, netns: str | None, spec: RuleSpec) -> None:
    """Remove xfrmid's rule; a missing rule is fine.

    The kernel removes the first rule its selectors match, and reads an absent
    one as "any": removing ``prio 101 fwmark M goto 103`` (a full tunnel's rule)
    would take ``prio 101 to PEER fwmark M goto 103`` if that came first. So such
    a removal first takes the rules ahead of it out of the way and puts them back
    behind it (the kernel appends a rule after those of its priority), then
    removes it. Ours matches a superset of the packets theirs do and acts alike,
    so their packets keep their path throughout (a crash in between: the next
    reconcile adds them). xfrmid's rules never carry a source selector, so only
    the other wildcards are checked.
    """
    spec = normalize(spec)
    ahead: list[RuleSpec] = []
    if spec.dst is None or not spec.fwmark or not spec.fwmask:
        ours = await _own_rule_list(conn, netns)
        if spec not in ours:
            return
        ahead = [rule for rule in ours[:ours.index(spec)] if _caught(spec, rule)]
    # each removal takes the first match: the rules ahead, in order
    for _ in ahead:
        await _remove(conn, netns, spec)
    for rule in ahead:
        await add_rule(conn, netns, rule)
    await _remove(conn, netns, spec)


async def _remove(conn, netns: str | None, spec: RuleSpec) -> None:
    try:
        await conn.request(_message(spec), RTM_DELRULE, F_REQ)
    except NetlinkError as exc:
        if code_of(exc) in (2, 3):  # ENOENT/ESRCH: not there
            return
        raise translate(exc, f"Removing {describe(spec)}{where(netns)}") from None
