"""Random sequences of calls against the manager: the kernel always holds exactly what is owed.

A tiny reference model predicts every answer (success, NotFound, Busy); after
every step the in-memory kernel must hold exactly the union of what the
holders asked for (plus the one released IPv4 address an interface keeps while
IPv4 routes through it are held: the kernel would drop them with its last
IPv4 address), and a restart on the same state file must find nothing to do.
"""

from __future__ import annotations

import asyncio
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xfrmid.core.manager import Manager
from xfrmid.core.routes_policy import PeerPolicy, RouteRequest, expand
from xfrmid.errors import Busy, NotFound
from xfrmid.settings import Settings

from fake_kernel import FakeKernel, norm_route, norm_rule

# Small pools, so random sequences often hit the same object from several owners.
NAMES = ["ipsec1", "ipsec2"]
OWNERS = ["a", "b"]
ADDRESSES = ["192.0.2.1/24", "2001:db8::1/64", "198.51.100.7/32"]


def routes_for(name: str) -> list[tuple[str, str | None]]:
    n = int(name[5:])
    pool = [(f"10.{n}.0.0/16", None), (f"10.{n}.0.0/16", f"10.{n}.0.1"), (f"2001:db8:{n}::/48", None)]
    if n == 1:
        pool += [("0.0.0.0/0", None), ("::/0", None)]
    return pool


op = st.one_of(
    st.tuples(st.just("attach"), st.sampled_from(NAMES), st.sampled_from(OWNERS)),
    st.tuples(st.just("detach"), st.sampled_from(NAMES), st.sampled_from(OWNERS)),
    st.tuples(st.just("add_address"), st.sampled_from(NAMES), st.sampled_from(OWNERS), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("remove_address"), st.sampled_from(NAMES), st.sampled_from(OWNERS),
              st.sampled_from(ADDRESSES), st.integers(0, 7)),
    st.tuples(st.just("add_route"), st.sampled_from(NAMES), st.sampled_from(OWNERS), st.integers(0, 4)),
    st.tuples(st.just("remove_route"), st.sampled_from(NAMES), st.sampled_from(OWNERS), st.integers(0, 4),
              st.integers(0, 7)),
    st.tuples(st.just("create"), st.sampled_from(NAMES)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("restart")),
)


class Model:
    def __init__(self) -> None:
        self.ifaces: dict[str, dict] = {}
        self.kept: dict[str, set] = {}  # released addresses still on an interface
        self.present: dict[str, set] = {}  # the addresses on each interface after the last step

    def keep(self) -> None:
        """After a step: of the addresses the step released, the interface keeps its last
        IPv4 one (the first in order) while it has IPv4 routes and no other IPv4 address."""
        before = dict(self.kept)
        self.kept = {}
        for name, entry in self.ifaces.items():
            held = set().union(*(o["addresses"] for o in entry["owners"].values()))
            going = (self.present.get(name, set()) | before.get(name, set())) - held
            v4_routes = any(":" not in dst for o in entry["owners"].values() for dst, _ in o["routes"])
            last = sorted(c for c in going if ":" not in c)
            if v4_routes and last and not any(":" not in c for c in held):
                self.kept[name] = {last[0]}
        self.present = {name: self.addresses(name) for name in self.ifaces}

    def addresses(self, name: str) -> set:
        entry = self.ifaces[name]
        return set().union(*(o["addresses"] for o in entry["owners"].values())) | self.kept.get(name, set())

    def expect(self, step: tuple) -> type[Exception] | None:
        kind, *args = step
        if kind in ("add_address", "add_route"):
            name, owner = args[0], args[1]
            if name not in self.ifaces:
                return NotFound
            if owner not in self.ifaces[name]["owners"]:
                return NotFound
        if kind == "delete":
            name, force = args
            if name not in self.ifaces:
                return NotFound
            if self.ifaces[name]["owners"] and not force:
                return Busy
        return None

    def apply(self, step: tuple) -> None:
        kind, *args = step
        if kind == "attach":
            entry = self.ifaces.setdefault(args[0], {"explicit": False, "owners": {}})
            entry["owners"].setdefault(args[1], {"addresses": set(), "routes": set()})
        elif kind == "detach":
            entry = self.ifaces.get(args[0])
            if entry and entry["owners"].pop(args[1], None) is not None:
                if not entry["explicit"] and not entry["owners"]:
                    del self.ifaces[args[0]]
        elif kind == "create":
            self.ifaces.setdefault(args[0], {"explicit": False, "owners": {}})["explicit"] = True
        elif kind == "delete":
            self.ifaces.pop(args[0])
        elif kind in ("add_address", "remove_address", "add_route", "remove_route"):
            name, owner, value = args
            holder = self.ifaces.get(name, {"owners": {}})["owners"].get(owner)
            if holder is None:
                return
            what = "addresses" if "address" in kind else "routes"
            if what == "routes":
                value = routes_for(name)[value % len(routes_for(name))]
            (holder[what].add if kind.startswith("add") else holder[what].discard)(value)
            if kind == "remove_route":  # options left out match any: drops the peer variant too
                holder["routes"] -= {r for r in holder["routes"] if r[0] == value[0]}

    def kernel_state(self):
        links, addresses, routes, rules = set(), {}, set(), set()
        for name, entry in self.ifaces.items():
            links.add(name)
            addresses[name] = self.addresses(name)
            for owner in entry["owners"].values():
                for dst, peer in owner["routes"]:
                    r, q = expand(RouteRequest(dst, peer=peer), name, int(name[5:]), 0xFFFFFFFF, PeerPolicy())
                    routes |= {norm_route(x) for x in r}
                    rules |= {norm_rule(x) for x in q}
        return links, addresses, routes, rules


async def call(manager: Manager, step: tuple) -> None:
    kind, *args = step
    if kind == "attach":
        await manager.attach(args[0], args[1])
    elif kind == "detach":
        await manager.detach(args[0], args[1])
    elif kind == "create":
        await manager.create_interface(args[0])
    elif kind == "delete":
        await manager.delete_interface(args[0], force=args[1])
    elif kind in ("add_address", "remove_address"):
        await getattr(manager, kind)(*args)
    else:
        name, owner, index = args
        dst, peer = routes_for(name)[index % len(routes_for(name))]
        if kind == "add_route":
            await manager.add_route(name, owner, dst, peer=peer)
        else:
            await manager.remove_route(name, owner, dst)


def check(kernel: FakeKernel, model: Model) -> None:
    links, addresses, routes, rules = model.kernel_state()
    ns = kernel.ns[None]
    assert set(ns.links) == links
    assert {n: ns.addresses[n] for n in links} == addresses
    assert ns.routes == routes
    assert ns.rules == rules


def undo_earlier(step: tuple, added: dict[str, list[tuple]]) -> tuple:
    """Half of the removals take back an earlier successful add (random ones rarely match)."""
    if step[0] not in added:
        return step
    choice = step[-1]
    earlier = added[step[0]]
    if choice % 2 == 0 and earlier:
        return (step[0],) + earlier[(choice // 2) % len(earlier)]
    return step[:-1]


async def scenario(steps: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        kernel = FakeKernel()
        settings_ = Settings(state_dir=state_dir)
        manager = Manager(kernel, settings_)
        await manager.start()
        model = Model()
        added: dict[str, list[tuple]] = {"remove_address": [], "remove_route": []}
        for step in steps:
            step = undo_earlier(step, added)
            if step[0] == "restart":
                await manager.stop()
                manager = Manager(kernel, settings_)
                assert await manager.start() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}
            else:
                expected = model.expect(step)
                try:
                    await call(manager, step)
                except (NotFound, Busy) as exc:
                    assert type(exc) is expected, (step, exc)
                else:
                    assert expected is None, step
                    model.apply(step)
                    model.keep()
                    if step[0] in ("add_address", "add_route"):
                        added[step[0].replace("add_", "remove_", 1)].append(step[1:])
            check(kernel, model)
            assert {i.name for i in manager.interfaces()} == set(model.ifaces)
        # everyone lets go: nothing of xfrmid's is left
        for name in list(model.ifaces):
            for owner in list(model.ifaces[name]["owners"]):
                await manager.detach(name, owner)
            if name in {i.name for i in manager.interfaces()}:
                await manager.delete_interface(name)
        ns = kernel.ns[None]
        assert not ns.links and not ns.routes and not ns.rules
        await manager.stop()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=5, max_size=40))
# Found by CI: the same destination with and without a peer could not be ordered for the state file.
@example([("attach", "ipsec1", "a")] * 3 + [("add_route", "ipsec1", "a", 0), ("add_route", "ipsec1", "a", 1)])
def test_random_sequences_keep_kernel_exact(steps):
    asyncio.run(scenario(steps))
