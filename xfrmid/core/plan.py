"""Reconcile as a pure function: desired state + kernel dump of one namespace -> actions.

Nothing here touches the kernel. ``plan_netns`` compares what xfrmid wants
with what the kernel reports and returns the actions that close the gap, in
the order they must run (removals before additions, links before addresses
before routes before rules). Rules of the house:

- never touch foreign objects: links without xfrmid's marker that nobody asked
  for, routes and rules without protocol 120, addresses xfrmid did not add;
- an adopted (foreign) link is used as it is: a mismatch is a conflict, not a repair;
- a link of our own that differs is changed (MTU, up) or, when the kernel
  cannot change the attribute (if_id, underlying link, external), recreated;
- leftovers carrying xfrmid's marker that no desired state explains are removed;
- nothing another holder still has goes, even briefly: the peer pattern's jumps
  are added before the routes they guard and removed after them (lookups the
  other way round), and an address whose removal would make the kernel drop
  wanted routes (their source, or the interface's last IPv4 address) is kept
  until those routes go.

With a ``Scope`` the plan only looks at the named interfaces and rules with
their marks: that is how a single D-Bus call syncs one interface cheaply.
A scoped plan costs O(the scoped interfaces): the caller passes only them
(plus the interfaces sharing their marks) in ``desired``; the kernel view may
hold the whole namespace, but only the scoped names are looked up in it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..kernel.objects import AddressSpec, LinkSpec, LinkState, RouteSpec, RuleSpec
from .desired import DesiredInterface
from .routes_policy import PeerPolicy, is_shared, route_key

# Execution order of action kinds. Rules come in two kinds: jumps (goto, and the
# nop they land on) change no path alone, and go in before the routes they guard
# and out after them; lookups send traffic into a table, and go in last (once
# their jumps and routes are there) and out last (a replaced one after its
# successor is in, so nothing falls through in between).
PHASES = (
    "conflict",
    "adopt",
    "add_jump",  # add_rule of a goto or nop
    "remove_route",
    "remove_jump",  # remove_rule of a goto or nop
    "keep_address",  # a removal the plan holds back (no kernel work)
    "remove_address",
    "delete_link",
    "recreate_link",
    "create_link",
    "change_link",
    "add_address",
    "remove_address_late",  # one the routes needed until the addresses above were added
    "add_route",
    "add_rule",
    "remove_rule",
)
_PHASE = {op: i for i, op in enumerate(PHASES)}


@dataclass(frozen=True)
class KernelView:
    """What the kernel holds in one namespace (xfrmid's own routes/rules only)."""

    links: dict[str, LinkState]
    addresses: dict[str, frozenset[str]]  # per interface name, for the interfaces of interest
    routes: frozenset[RouteSpec]
    rules: frozenset[RuleSpec]


@dataclass(frozen=True)
class Scope:
    """Restrict a plan to some interfaces (by name) and the rules carrying their marks."""

    names: frozenset[str]
    marks: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Action:
    op: str  # one of PHASES
    netns: str | None
    ifname: str | None  # the interface concerned (None for a leftover rule)
    category: str | None  # "created" | "repaired" | "adopted" | "removed" | None
    detail: str  # one phrase for logs and the Repaired signal
    link: LinkSpec | None = None
    address: AddressSpec | None = None
    route: RouteSpec | None = None
    rule: RuleSpec | None = None
    mtu: int | None = None
    up: bool | None = None
    owned: bool | None = None  # adopt: the new value of the interface's ``owned``
    # delete_link, add_route, remove_route: the link's index as seen (saves the backend a get)
    ifindex: int | None = None
    mark: bool = False  # change_link: put xfrmid's markers on the link (a create cut short by a crash)
    late: bool = False  # remove_address: after the additions (another address takes over its routes)
    # remove_route: no other route of xfrmid's to its destination through its device in its
    # table is wanted, so the kernel's removal by prefix cannot take a wanted one (saves a read)
    sole: bool = False


@dataclass(frozen=True)
class PlanInput:
    netns: str | None
    desired: list[DesiredInterface]
    view: KernelView
    mask: int
    peer: PeerPolicy = PeerPolicy()
    default_mtu: int | None = None
    retired: dict[str, set[str]] = field(default_factory=dict)  # per interface name
    scope: Scope | None = None
    # Interfaces this change lets go of on purpose, with the reason (for the log):
    # their links are deleted as released, not as a crash's leftovers.
    released: dict[str, str] = field(default_factory=dict)
    # A scoped plan sees only some interfaces: the peer rules the whole namespace
    # still shares (routes_policy.is_shared), so it removes none another needs.
    # None: unknown, a scoped plan removes no shared rule.
    shared: frozenset[RuleSpec] | None = None


def rule_key(rule: RuleSpec) -> tuple:
    """Rules compare with the kernel's defaults filled in (no dst = /0, no mask = all ones)."""
    dst = rule.dst
    if dst in ("0.0.0.0/0", "::/0"):
        dst = None
    mask = rule.fwmask
    if rule.fwmark is not None and mask is None:
        mask = 0xFFFFFFFF
    return (rule.priority, rule.table, rule.family, dst, rule.src, rule.fwmark, mask, rule.invert, rule.action,
            rule.goto)


def link_differs(spec: LinkSpec, have: LinkState) -> str | None:
    """What the kernel cannot change in place, or None."""
    if have.external != spec.external:
        return f"external {have.external} instead of {spec.external}"
    if not spec.external and have.if_id != spec.if_id:
        return f"if_id {have.if_id} instead of {spec.if_id}"
    if spec.link is not None and have.link != spec.link:
        return f"underlying link {have.link or 'none'} instead of {spec.link}"
    return None


def plan_netns(inp: PlanInput) -> list[Action]:
    """The actions that make namespace ``inp.netns`` match the desired state."""
    netns, view, scope = inp.netns, inp.view, inp.scope
    actions: list[Action] = []

    def add(op: str, ifname: str | None, category: str | None, detail: str, **kw) -> None:
        actions.append(Action(op=op, netns=netns, ifname=ifname, category=category, detail=detail, **kw))

    desired = [d for d in inp.desired if scope is None or d.name in scope.names]
    wanted_names = {d.name for d in inp.desired}
    status: dict[str, str] = {}  # name -> "new" | "kept" | "conflict" | "gone"

    # Leftover links of our own go first, so their names and if_ids are free again.
    if scope is None:
        candidates = list(view.links.items())
    else:
        candidates = [(n, view.links[n]) for n in sorted(scope.names) if n in view.links]
    for name, have in candidates:
        if name in wanted_names or not have.owned:
            continue
        why = inp.released.get(name)
        add("delete_link", name, "removed",
            f"deleted interface {name}: {why}" if why else f"removed leftover interface {name}", ifindex=have.ifindex)
        status[name] = "gone"
    holders: dict[int, str] | None = None  # if_id -> live link name, built only if a link is to be created

    def holder_of(if_id: int) -> str | None:
        nonlocal holders
        if holders is None:
            holders = {
                have.if_id: name
                for name, have in view.links.items()
                if status.get(name) != "gone" and not have.external
            }
        return holders.get(if_id)

    for d in desired:
        spec = d.link_spec(inp.default_mtu)
        have = view.links.get(d.name)
        if have is None:
            holder = holder_of(spec.if_id)
            if not spec.external and holder is not None and holder != d.name:
                add("conflict", d.name, None, f"if_id {spec.if_id} of {d.name} is used by interface {holder}")
                status[d.name] = "conflict"
                continue
            if not d.owned:  # an adopted link its maker deleted while owners held it: ours now
                add("adopt", d.name, None, f"interface {d.name} is made again by xfrmid, as its own", owned=True)
            add("create_link", d.name, "created", f"created interface {d.name}", link=spec)
            status[d.name] = "new"
            continue
        differs = link_differs(spec, have)
        if not have.owned and have.unmarked and d.owned and differs is None:
            # xfrmid's own create, cut short between its two requests (the state file
            # promised an interface of ours): finish it instead of adopting it as foreign
            mtu = spec.mtu if spec.mtu is not None and spec.mtu != have.mtu else None
            add("change_link", d.name, "repaired", f"repaired {d.name}: finished its creation (marked, set up)",
                mtu=mtu, up=True if not have.up else None, mark=True)
            status[d.name] = "kept"
            continue
        if not have.owned:
            if differs is not None:
                add("conflict", d.name, None, f"existing interface {d.name} not created by xfrmid has {differs}")
                status[d.name] = "conflict"
                continue
            if d.owned:
                add("adopt", d.name, "adopted", f"adopted existing interface {d.name}", owned=False)
            status[d.name] = "kept"
            continue
        if not d.owned:  # our marker is on it after all (we recreated it earlier)
            add("adopt", d.name, None, f"interface {d.name} carries xfrmid's marker", owned=True)
        if differs is not None:
            add("recreate_link", d.name, "repaired", f"recreated {d.name}: it had {differs}", link=spec)
            status[d.name] = "new"
            continue
        mtu = spec.mtu if spec.mtu is not None and spec.mtu != have.mtu else None
        up = True if not have.up else None
        if mtu is not None or up is not None:
            what = ", ".join(
                p for p in (f"MTU {have.mtu} -> {mtu}" if mtu else "", "set up" if up else "") if p
            )
            add("change_link", d.name, "repaired", f"repaired {d.name}: {what}", mtu=mtu, up=up)
        status[d.name] = "kept"

    live = {d.name: d for d in desired if status.get(d.name) in ("new", "kept")}

    # Addresses: add what holders want; remove only what xfrmid released (retired).
    for name in sorted(set(live) | set(inp.retired)):
        if scope is not None and name not in scope.names:
            continue
        if status.get(name) in ("gone", "conflict") or (name not in live and name not in view.links):
            continue
        d = live.get(name)
        have = frozenset() if status.get(name) == "new" else view.addresses.get(name, frozenset())
        want = d.addresses() if d is not None else set()
        category = "repaired" if status.get(name) == "kept" else None
        for cidr in sorted(want - have):
            add("add_address", name, category, f"added address {cidr} to {name}",
                address=AddressSpec(ifname=name, cidr=cidr))
        going = (have & inp.retired.get(name, set())) - want
        if not going:
            continue
        routes = d.kernel_routes(inp.mask, inp.peer)[0] if d is not None else ()
        kept = addresses_to_keep(going, want | (have - going), routes)  # once this plan ran
        until_added = addresses_to_keep(going, have - going, routes)  # while the removals run
        for cidr in sorted(going):
            if cidr in kept:
                add("keep_address", name, None, f"kept address {cidr} on {name}: held routes through it need it",
                    address=AddressSpec(ifname=name, cidr=cidr))
            else:
                add("remove_address", name, "removed", f"removed address {cidr} from {name}",
                    address=AddressSpec(ifname=name, cidr=cidr), late=cidr in until_added)

    # Routes and rules: ours carry protocol 120, so anything of ours not wanted goes.
    want_routes: dict[tuple, RouteSpec] = {}
    want_rules: dict[tuple, tuple[RuleSpec, str]] = {}
    marks = set(scope.marks) if scope is not None else set()
    for d in inp.desired:
        if d.name not in live and scope is not None and d.name in scope.names:
            continue
        if status.get(d.name, "kept") not in ("new", "kept"):
            continue
        routes, rules = d.kernel_routes(inp.mask, inp.peer)
        for r in routes:
            want_routes[route_key(r)] = r
        for q in rules:
            want_rules[rule_key(q)] = (q, d.name)
        if scope is not None and d.name in scope.names:
            marks.add(d.mark(inp.mask)[0])
    # Routes are keyed by device: a scoped plan needs the scoped devices' only.
    have_routes = {route_key(r): r for r in view.routes if scope is None or r.dev in scope.names}
    # each in the order of its key's text (stable), sorting only those that need an action:
    # the others are wanted and there, or go with their link
    unwanted = [(k, r) for k, r in have_routes.items()
                if k not in want_routes and status.get(r.dev) not in ("gone", "new")]
    for key, r in sorted(unwanted, key=lambda kv: repr(kv[0])):
        add("remove_route", r.dev, "removed", f"removed route {r.dst} via {r.dev} (table {r.table})", route=r)
    missing = [(k, r, status.get(r.dev)) for k, r in want_routes.items() if scope is None or r.dev in scope.names]
    missing = [m for m in missing if m[2] == "new" or (m[2] == "kept" and m[0] not in have_routes)]
    for key, r, st in sorted(missing, key=lambda m: repr(m[0])):
        add("add_route", r.dev, "repaired" if st == "kept" else None,
            f"added route {r.dst} via {r.dev} (table {r.table})", route=r)
    have_rules = {rule_key(q): q for q in view.rules if scope is None or q.fwmark in marks or is_shared(q)}
    shared = None if scope is None or inp.shared is None else {rule_key(q) for q in inp.shared}
    for key, q in sorted(have_rules.items(), key=lambda kv: repr(kv[0])):
        if key in want_rules:
            continue
        if scope is not None and is_shared(q) and (shared is None or key in shared):
            continue  # peer routes outside the scope still need it
        add("remove_rule", None, "removed", f"removed rule {_rule_text(q)}", rule=q)
    for key, (q, name) in sorted(want_rules.items(), key=lambda kv: repr(kv[0])):
        if key in have_rules or (scope is not None and name not in scope.names):
            continue
        category = "repaired" if status.get(name) == "kept" else None
        add("add_rule", name, category, f"added rule {_rule_text(q)}", rule=q)

    actions.sort(key=_order)
    return actions


def _order(action: Action) -> tuple[int, int]:
    """Where an action runs: its phase, then (for jumps) landing places before the
    jumps to them when adding, after them when removing. An address whose removal
    would drop routes another address is about to hold goes after the additions."""
    if action.late:
        return (_PHASE["remove_address_late"], 0)
    rule = action.rule
    if rule is None or rule.action == "lookup":
        return (_PHASE[action.op], 0)
    landing = rule.action == "nop"
    if action.op == "add_rule":
        return (_PHASE["add_jump"], 0 if landing else 1)
    return (_PHASE["remove_jump"], 1 if landing else 0)


def addresses_to_keep(going: set[str], staying: set[str], routes) -> set[str]:
    """Of the addresses a plan would remove from an interface, those its wanted ``routes``
    still need, since the kernel would drop the routes with them: a route's source, and the
    last IPv4 address while IPv4 routes go through the interface (the kernel flushes them
    when it goes). ``staying``: the interface's other addresses, which remain."""
    sources = {r.src for r in routes if r.src}
    kept = {cidr for cidr in going if cidr.split("/")[0] in sources}
    if any(":" not in r.dst for r in routes) and not any(":" not in c for c in staying | kept):
        last = sorted(c for c in going if ":" not in c)
        if last:
            kept.add(last[0])
    return kept


def settle_retired(retired: dict, netns: str | None, names, actions: list[Action]) -> set:
    """After a plan of ``names`` ran: their released addresses are gone from ``retired``
    (a DesiredState's), but for those the plan kept, which stay released (removed later,
    when the routes that need them go). The keys changed."""
    kept: dict[str, set[str]] = {}
    for a in actions:
        if a.op == "keep_address":
            kept.setdefault(a.ifname, set()).add(a.address.cidr)
    dirty = set()
    for name in names:
        key = (netns, name)
        if key not in retired:
            continue
        left = retired[key] & kept.get(name, set())
        if left != retired[key]:
            dirty.add(key)
            if left:
                retired[key] = left
            else:
                retired.pop(key)
    return dirty


def _rule_text(rule: RuleSpec) -> str:
    mark = f" fwmark 0x{rule.fwmark:x}/0x{rule.fwmask or 0xFFFFFFFF:x}" if rule.fwmark is not None else ""
    return f"{rule.priority}: {'not ' if rule.invert else ''}to {rule.dst or 'all'}{mark} {rule.action_text()}"


def summarise(actions: list[Action]) -> dict[str, int]:
    """Counts for Reconcile: interfaces created, repaired, adopted; leftover objects removed."""
    created = {a.ifname for a in actions if a.op == "create_link"}
    counts = Counter(a.category for a in actions if a.category in ("adopted", "removed"))
    repaired = {a.ifname for a in actions if a.category == "repaired" and a.ifname not in created}
    return {
        "created": len(created),
        "repaired": len(repaired),
        "adopted": counts["adopted"],
        "removed": counts["removed"],
    }
