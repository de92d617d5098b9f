"""The crash test's model: what acknowledged calls promised, and what the kernel shows.

Written from the D-Bus contract, not from xfrmid's code, so the test does not
check the daemon against itself. A ``World`` is a set of candidate desired
states: an acknowledged call is applied to every candidate (and prunes those
that predict another reply), a call that was in flight when the daemon died
doubles them (applied or not), and a look at the kernel and the bus after a
restart prunes them again. An empty set means no history of the acknowledged
calls explains what the daemon did.

Kernel views come from ``ip -j`` dumps (``-N``: numbers, not names).
"""

from __future__ import annotations

import copy
import json
import subprocess
from dataclasses import dataclass, field

Key = tuple  # (netns option or None, interface name)

PEER_TABLE = 50
PEER_PRIORITY = 100  # the peer pattern's rules take this priority and the next three
MAIN_TABLE = 254
PROTO = "120"  # xfrmid's routes and rules
GROUP = "120"  # xfrmid's links (with ifalias "xfrmid")


@dataclass(frozen=True)
class Req:
    """A route request as AddRoute takes it (destination normalised); for RemoveRoute, None = any."""

    dst: str
    metric: int | None = None
    peer: str | None = None

    def matches(self, pattern: "Req") -> bool:
        return (pattern.dst == self.dst
                and (pattern.metric is None or pattern.metric == self.metric)
                and (pattern.peer is None or pattern.peer == self.peer))


@dataclass(frozen=True)
class Op:
    client: str
    kind: str  # attach detach add_address remove_address add_route remove_route create delete
    key: Key
    owner: str | None = None
    arg: object = None  # cidr, Req, (addresses...) for create, force for delete

    def __str__(self) -> str:
        where = f"{self.key[1]}" + (f"@{self.key[0]}" if self.key[0] else "")
        return f"{self.client}:{self.kind}({where}, {self.owner}, {self.arg})"


@dataclass
class Iface:
    explicit: bool = False
    mtu: int | None = None
    created: set = field(default_factory=set)
    owners: dict = field(default_factory=dict)  # owner -> (set of cidrs, set of Req)

    def addresses(self) -> set:
        held = set(self.created)
        for addrs, _ in self.owners.values():
            held |= addrs
        return held

    def requests(self) -> set:
        held: set = set()
        for _, reqs in self.owners.values():
            held |= reqs
        return held


CREATE_MTU = 1400
OK = ("ok", None)


def step(state: dict, op: Op) -> tuple:
    """Apply ``op`` to ``state`` (in place) as the contract says; the reply it predicts."""
    iface = state.get(op.key)
    if op.kind == "attach":
        if iface is None:
            iface = state[op.key] = Iface()
        iface.owners.setdefault(op.owner, (set(), set()))
        return OK
    if op.kind == "detach":
        if iface is None or op.owner not in iface.owners:
            return ("ok", False)
        del iface.owners[op.owner]
        if not iface.explicit and not iface.owners:
            del state[op.key]
            return ("ok", True)
        return ("ok", False)
    if op.kind in ("add_address", "add_route"):
        if iface is None or op.owner not in iface.owners:
            return ("err", "NotFound")
        iface.owners[op.owner][0 if op.kind == "add_address" else 1].add(op.arg)
        return OK
    if op.kind == "remove_address":
        if iface is not None and op.owner in iface.owners:
            iface.owners[op.owner][0].discard(op.arg)
        return OK
    if op.kind == "remove_route":
        if iface is not None and op.owner in iface.owners:
            reqs = iface.owners[op.owner][1]
            reqs -= {r for r in reqs if r.matches(op.arg)}
        return OK
    if op.kind == "create":
        if iface is None:
            iface = state[op.key] = Iface()
        iface.explicit = True
        iface.mtu = CREATE_MTU
        iface.created |= set(op.arg)
        return OK
    if op.kind == "delete":
        if iface is None:
            return ("err", "NotFound")
        if iface.owners and not op.arg:
            return ("err", "Busy")
        del state[op.key]
        return OK
    raise AssertionError(op.kind)


def canonical(state: dict) -> tuple:
    return tuple(sorted(
        (
            (k[0] or "", k[1]), i.explicit, i.mtu, tuple(sorted(i.created)),
            tuple(sorted((o, tuple(sorted(a)), tuple(sorted(r, key=repr))) for o, (a, r) in i.owners.items())),
        )
        for k, i in state.items()
    ))


def if_id(name: str) -> int:
    return int(name[len("ipsec"):])


def _family(prefix: str) -> str:
    return "inet6" if ":" in prefix else "inet"


def _with_len(prefix: str) -> str:
    return prefix if "/" in prefix else prefix + ("/128" if ":" in prefix else "/32")


@dataclass(frozen=True)
class View:
    """xfrmid's objects in one namespace, in comparable form."""

    links: frozenset  # (name, if_id, mtu or None when not promised)
    addresses: frozenset  # (name, cidr)
    routes: frozenset  # (dst, dev, table, metric as the kernel reports it)
    rules: frozenset  # (family, dst or "all", fwmark or 0, priority, what: "lookup 50", "goto 103", "nop")


def expected_views(state: dict, namespaces: list) -> dict:
    """The View the contract promises per namespace option for a desired ``state``."""
    views = {}
    for ns in namespaces:
        links, addrs, routes, rules = set(), set(), set(), set()
        for (kns, name), iface in state.items():
            if kns != ns:
                continue
            links.add((name, if_id(name), iface.mtu))
            addrs |= {(name, a) for a in iface.addresses()}
            for req in iface.requests():
                table = PEER_TABLE if req.peer else MAIN_TABLE
                metric = req.metric if req.metric else (1024 if ":" in req.dst else 0)
                routes.add((req.dst, name, table, metric))
                if req.peer:
                    rules |= peer_rules(_family(req.dst), req.dst, if_id(name))
        views[ns] = View(frozenset(links), frozenset(addrs), frozenset(routes), frozenset(rules))
    return views


def peer_rules(family: str, dst: str, mark: int) -> set:
    """The contract's peer pattern for one route: packets with the interface's output mark
    to ``dst`` jump past the peer table; the rest (gate, lookup, landing) every peer route
    of the family shares."""
    p = PEER_PRIORITY
    return {
        (family, "all" if dst.endswith("/0") else dst, mark, p + 1, f"goto {p + 3}"),
        (family, "all", 0, p, f"goto {p + 2}"),
        (family, "all", 0, p + 2, f"lookup {PEER_TABLE}"),
        (family, "all", 0, p + 3, "nop"),
    }


# --- the kernel, from ip -j ------------------------------------------------------------


def _arrays(text: str) -> list:
    decoder, out, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        value, pos = decoder.raw_decode(text, pos)
        out.append(value)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _batch(netns: str, family: str, commands: list[str]) -> list:
    proc = subprocess.run(["ip", "-N", "-d", "-j", family, "-n", netns, "-batch", "-"],
                          input="".join(c + "\n" for c in commands), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"ip -batch in {netns} failed: {proc.stderr.strip()}")
    arrays = _arrays(proc.stdout)
    assert len(arrays) == len(commands), (commands, proc.stdout[:2000])
    return arrays


@dataclass
class Dump:
    """One namespace as ``ip -j`` shows it: xfrmid's View and everything foreign."""

    view: View
    mtus: dict  # managed link name -> mtu
    down: list  # managed links not administratively up
    foreign: dict


def _num(value) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


def dump(netns: str) -> Dump:
    links4, addrs4, routes4, rules4 = _batch(netns, "-4", ["link show", "addr show", "route show table all",
                                                          "rule show"])
    addrs6, routes6, rules6 = _batch(netns, "-6", ["addr show", "route show table all", "rule show"])
    managed, mtus, down, foreign_links = set(), {}, [], set()
    for link in links4:
        info = link.get("linkinfo", {})
        kind = info.get("info_kind")
        up = "UP" in link.get("flags", [])
        ours = str(link.get("group")) in (GROUP, "xfrmid") and link.get("ifalias") == "xfrmid"
        ident = _num(info.get("info_data", {}).get("if_id", 0)) if kind == "xfrm" else None
        if ours:
            managed.add((link["ifname"], ident))
            mtus[link["ifname"]] = link["mtu"]
            if not up:
                down.append(link["ifname"])
        else:
            foreign_links.add((link["ifname"], kind, ident, link["mtu"], up, str(link.get("group"))))
    names = {n for n, _ in managed}
    addresses, foreign_addrs = set(), set()
    for link in addrs4 + addrs6:
        for a in link.get("addr_info", []):
            if str(a.get("scope")) in ("link", "253") and a.get("family") == "inet6":
                continue  # the kernel's own link-local addresses
            cidr = f"{a['local']}/{a['prefixlen']}"
            (addresses if link["ifname"] in names else foreign_addrs).add((link["ifname"], cidr))
    routes, foreign_routes = set(), set()
    for r in routes4 + routes6:
        proto = str(r.get("protocol"))
        if proto == PROTO:
            dst = _with_len(r["dst"])
            routes.add((dst, r.get("dev"), _num(r.get("table", MAIN_TABLE)), r.get("metric", 0)))
        elif proto not in ("2", "kernel"):  # the kernel's own routes come and go with addresses
            foreign_routes.add(json.dumps({k: v for k, v in r.items() if k != "flags"}, sort_keys=True))
    rules, foreign_rules = set(), set()
    for family, listing in (("inet", rules4), ("inet6", rules6)):
        for q in listing:
            if str(q.get("protocol")) == PROTO:
                dst = q.get("dst", "all")
                dst = f"{dst}/{q['dstlen']}" if "dstlen" in q else dst if dst == "all" else _with_len(dst)
                mask = _num(q.get("fwmask", "0xffffffff"))
                assert mask == 0xFFFFFFFF, q
                what = f"goto {q['goto']}" if "goto" in q else "nop" if "nop" in q else f"lookup {_num(q['table'])}"
                rules.add((family, dst, _num(q.get("fwmark", 0)), q["priority"], ("not " if "not" in q else "") + what))
            else:
                foreign_rules.add((family, json.dumps(q, sort_keys=True)))
    return Dump(
        view=View(frozenset(managed), frozenset(addresses), frozenset(routes), frozenset(rules)),
        mtus=mtus, down=down,
        foreign={"links": foreign_links, "addresses": foreign_addrs, "routes": foreign_routes, "rules": foreign_rules},
    )


def matches(expected: View, actual: Dump) -> list[str]:
    """Differences between what was promised and what the kernel holds (empty: a match)."""
    problems = []
    want_links = {(n, i) for n, i, _ in expected.links}
    for what, want, have in (("link", want_links, actual.view.links),
                             ("address", expected.addresses, _kept(expected, actual.view.addresses)),
                             ("route", expected.routes, actual.view.routes),
                             ("rule", expected.rules, actual.view.rules)):
        for item in sorted(want - have, key=repr):
            problems.append(f"missing {what} {item}")
        for item in sorted(have - want, key=repr):
            problems.append(f"leftover {what} {item}")
    for name, _, mtu in expected.links:
        if mtu is not None and actual.mtus.get(name, mtu) != mtu:
            problems.append(f"link {name} has MTU {actual.mtus[name]}, not {mtu}")
    problems += [f"link {name} is down" for name in actual.down]
    return problems


def _kept(expected: View, addresses: frozenset) -> frozenset:
    """The kernel's addresses less one the contract lets stay unheld: removing an interface's
    last IPv4 address would make the kernel drop the IPv4 routes through it, so while such
    routes are held, the last IPv4 address stays."""
    extra = set()
    for name, _, _ in expected.links:
        v4_routes = any(dev == name and ":" not in dst for dst, dev, _, _ in expected.routes)
        held_v4 = any(n == name and ":" not in cidr for n, cidr in expected.addresses)
        unheld_v4 = sorted(cidr for n, cidr in addresses - expected.addresses if n == name and ":" not in cidr)
        if v4_routes and not held_v4 and len(unheld_v4) == 1:
            extra.add((name, unheld_v4[0]))
    return frozenset(addresses - extra)


class World:
    """The candidate desired states the acknowledged calls allow."""

    def __init__(self) -> None:
        self.candidates: dict[tuple, dict] = {canonical({}): {}}
        self.history: list[str] = []

    def _set(self, states: list[dict]) -> None:
        self.candidates = {canonical(s): s for s in states}

    def acknowledged(self, op: Op, reply: tuple) -> None:
        """``reply``: ("ok", value) or ("err", error class name)."""
        self.history.append(f"{op} -> {reply}")
        kept = []
        for state in self.candidates.values():
            state = copy.deepcopy(state)
            predicted = step(state, op)
            # Detach's boolean depends on the order of concurrent calls of the two
            # clients on one interface, which the test cannot see; the state does not.
            if predicted == reply or (op.kind == "detach" and reply[0] == predicted[0] == "ok"):
                kept.append(state)
        if not kept:
            raise AssertionError(f"no history explains the reply {reply} to {op}; the model predicted "
                                 f"{[step(copy.deepcopy(s), op) for s in self.candidates.values()]}")
        self._set(kept)

    def ambiguous(self, op: Op) -> None:
        self.history.append(f"{op} -> ? (in flight at the kill)")
        both = []
        for state in self.candidates.values():
            both.append(state)
            changed = copy.deepcopy(state)
            step(changed, op)
            both.append(changed)
        self._set(both)

    def observe(self, dumps: dict, owners: dict, namespaces: list) -> list[str]:
        """Keep the candidates the kernel (``dumps``) and the bus (``owners``) agree with.

        Returns the problems of the closest candidate when none agrees.
        """
        best: list[str] | None = None
        kept = []
        for state in self.candidates.values():
            views = expected_views(state, namespaces)
            problems = []
            for ns in namespaces:
                problems += [f"{ns or 'main'}: {p}" for p in matches(views[ns], dumps[ns])]
            mine = {k: set(i.owners) for k, i in state.items()}
            if mine != owners:
                problems.append(f"owners on the bus {owners} differ from the promised {mine}")
            if not problems:
                kept.append(state)
            elif best is None or len(problems) < len(best):
                best = problems
        if kept:
            self._set(kept)
            return []
        return best or ["no candidate"]

    def any(self) -> dict:
        return next(iter(self.candidates.values()))
