"""What the kernel shows of the plutos' tunnels: packet counters, pings, snapshots.

``traffic`` is the proof each real-pluto scenario gives: every echo of a ping
comes back, and the packets are counted on both sides' ipsec interfaces and on
an ESP SA each way on both sides (``ip -s link``, ``ip -s xfrm state``). The
counts of each proof go to build/reports/pluto-traffic.jsonl.
"""

from __future__ import annotations

import json
import re
import subprocess

from .bus_fixtures import TOP, wait_for
from .conftest import ip
from .pluto_fixtures import Pair

def link_counters(netns: str, name: str) -> tuple[int, int]:
    """(rx packets, tx packets) of a link."""
    (link,) = ip("-s", "link", "show", "dev", name, netns=netns)
    return link["stats64"]["rx"]["packets"], link["stats64"]["tx"]["packets"]


_SA = re.compile(r"^src (\S+) dst (\S+)\s*\n\s*proto esp spi (0x[0-9a-f]+)", re.M)
_CURRENT = re.compile(r"lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)")


def sa_counters(netns: str) -> dict[tuple[str, str, str], int]:
    """Packets per ESP SA (src, dst, spi) from ``ip -s xfrm state``."""
    text = subprocess.run(["ip", "-n", netns, "-s", "xfrm", "state"], capture_output=True, text=True, check=True).stdout
    found = {}
    for block in re.split(r"\n(?=src )", text):
        head, current = _SA.search(block), _CURRENT.search(block)
        if head and current:
            found[head.groups()] = int(current.group(2))
    return found


def ping(netns: str, source: str, target: str, count: int = 3, interval: float = 0.2) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-c", str(count), "-i", str(interval),
                           "-W", "5", "-I", source, target], capture_output=True, text=True, timeout=120)


def traffic(pair: Pair, scenario: str, source: str, target: str, west_if: str, east_if: str,
            outer: int = 4, count: int = 5) -> dict:
    """Ping ``target`` from west's ``source``: every echo must come back, and be counted
    on both sides' interfaces and on an ESP SA each way on both sides. The counts go to
    build/reports/pluto-traffic.jsonl."""
    w, e = pair.sites.west, pair.sites.east
    outer_pair = (w.v6, e.v6) if outer == 6 else (w.v4, e.v4)
    before = {"west": link_counters(w.netns, west_if), "east": link_counters(e.netns, east_if),
              "west_sa": sa_counters(w.netns), "east_sa": sa_counters(e.netns),
              "rtr": link_counters(pair.sites.rtr, "rw")}
    result = ping(w.netns, source, target, count=count)
    assert f"{count} received" in result.stdout, f"{scenario}: ping {target} from {source}:\n{result.stdout}{result.stderr}"
    after = {"west": link_counters(w.netns, west_if), "east": link_counters(e.netns, east_if),
             "west_sa": sa_counters(w.netns), "east_sa": sa_counters(e.netns),
             "rtr": link_counters(pair.sites.rtr, "rw")}
    moved = {
        f"west {west_if} rx/tx": [a - b for a, b in zip(after["west"], before["west"])],
        f"east {east_if} rx/tx": [a - b for a, b in zip(after["east"], before["east"])],
        "router rx/tx from west": [a - b for a, b in zip(after["rtr"], before["rtr"])],
    }
    for side, sas in (("west", "west_sa"), ("east", "east_sa")):
        grown = {k: after[sas][k] - before[sas].get(k, 0) for k in after[sas] if after[sas][k] > before[sas].get(k, 0)}
        for src, dst in (outer_pair, outer_pair[::-1]):
            best = max((n for (s_, d_, _), n in grown.items() if (s_, d_) == (src, dst)), default=0)
            assert best >= count, f"{scenario}: {side}'s ESP SA {src} -> {dst} counted {best} packets: {grown}"
            moved[f"{side} ESP SA {src}->{dst} packets"] = best
    for key in (f"west {west_if} rx/tx", f"east {east_if} rx/tx"):
        assert min(moved[key]) >= count, f"{scenario}: {key} moved {moved[key]}"
    record(pair.libreswan.version, scenario, ping=f"{source} -> {target}: {count}/{count}", **moved)
    return moved


def record(version: str, scenario: str, **facts) -> None:
    path = TOP / "build" / "reports" / "pluto-traffic.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps({"libreswan": version, "scenario": scenario, **facts}) + "\n")


def routes(netns: str) -> list[str]:
    """Every route and rule of the namespace, as text lines (the foreign ones included)."""
    out = []
    for args in (["-4", "route", "show", "table", "all"], ["-6", "route", "show", "table", "all"],
                 ["-4", "rule"], ["-6", "rule"]):
        text = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True).stdout
        out += [line for line in text.splitlines() if " fe80::" not in line and "ff00::/8" not in line]
    return sorted(out)


def links(netns: str) -> dict[str, dict]:
    """name -> (kind, if_id, group) of every link."""
    found = {}
    for link in ip("-d", "link", "show", netns=netns):
        info = link.get("linkinfo", {})
        found[link["ifname"]] = {"kind": info.get("info_kind"), "if_id": info.get("info_data", {}).get("if_id"),
                                 "group": link.get("group")}
    return found


def link_present(netns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", netns, "link", "show", "dev", name], capture_output=True).returncode == 0


def wait_link(netns: str, name: str, present: bool = True, timeout: float = 120) -> bool:
    return wait_for(lambda: link_present(netns, name) == present, timeout, 0.2)
