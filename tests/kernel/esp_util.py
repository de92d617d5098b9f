"""Real ESP between network namespaces for the traffic tests: topology, static SAs, counters.

A ``Net`` builds namespaces joined by veth pairs with one ``ip -batch`` per
namespace. ``esp_pair`` installs a pair of static SAs (rfc4106) and their
policies at both ends of a tunnel: the end under test reaches it through an
XFRM interface (its SAs carry the if_id and the output mark xfrmid returned,
inbound too, as libreswan sets them); the far end is a plain policy-based
peer. ``Counters`` reads the packet counters of devices and SAs, so a test
says where packets went, not only that a route exists.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field

KEY_OUT = "0x" + "11" * 20  # rfc4106: 16 bytes of AES key + 4 of salt
KEY_IN = "0x" + "22" * 20
AEAD = ["aead", "rfc4106(gcm(aes))"]


def ip_batch(netns: str, lines: list[str]) -> None:
    proc = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="".join(line + "\n" for line in lines),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ip -n {netns} -batch failed: {proc.stderr.strip()}\n" + "\n".join(lines)


def ip_json(*args: str, netns: str) -> list:
    proc = subprocess.run(["ip", "-j", "-n", netns, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"ip -n {netns} {' '.join(args)}: {proc.stderr.strip()}"
    return json.loads(proc.stdout) if proc.stdout.strip() else []


def ip_text(*args: str, netns: str) -> str:
    proc = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"ip -n {netns} {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def own_rules(netns: str, family: str = "-4") -> list[str]:
    """xfrmid's lines of ``ip rule`` (iproute2 6.1 lists every rule whatever protocol is asked)."""
    return [line for line in ip_text(family, "rule", "show", netns=netns).splitlines() if "proto xfrmid" in line]


def route_hop(netns: str, dst: str, mark: int | None = None) -> tuple[str, str | None]:
    """(device, gateway or None) ``ip route get DST [mark MARK]`` picks; ("unreachable", None) if none."""
    args = ["route", "get", dst] + (["mark", hex(mark)] if mark is not None else [])
    proc = subprocess.run(["ip", "-j", "-n", netns, *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return "unreachable", None
    (route,) = json.loads(proc.stdout)
    return route.get("dev", "unreachable"), route.get("gateway")


def route_get(netns: str, dst: str, mark: int | None = None) -> str:
    """The device ``ip route get DST [mark MARK]`` picks ("unreachable" when none)."""
    return route_hop(netns, dst, mark)[0]


def ping(netns: str, dst: str, count: int = 3, *, mark: int | None = None, source: str | None = None,
         interval: float = 0.2) -> tuple[int, int]:
    """(transmitted, received) of a ping from ``netns``."""
    cmd = ["ip", "netns", "exec", netns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "5"]
    cmd += (["-m", str(mark)] if mark is not None else []) + (["-I", source] if source else []) + [dst]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    return ping_counts(out)


def ping_counts(output: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert found, output
    return int(found.group(1)), int(found.group(2))


def sysctl(netns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", *settings], check=True, timeout=60)


@dataclass
class Net:
    """Namespaces (by role) joined by veth pairs; ``ns`` maps a role to its namespace name."""

    ns: dict[str, str]
    lines: dict[str, list[str]] = field(default_factory=dict)

    def run(self, role: str, line: str) -> None:
        self.lines.setdefault(role, []).append(line)

    def wire(self, a: str, a_dev: str, b: str, b_dev: str) -> None:
        self.run(a, f"link add {a_dev} type veth peer name {b_dev} netns {self.ns[b]}")
        self.run(a, f"link set {a_dev} up")
        self.run(b, f"link set {b_dev} up")

    def commit(self) -> None:
        """Run what was queued, creations first (a veth's far end appears with its near end)."""
        order = sorted(self.lines, key=lambda role: not any(" type veth " in x for x in self.lines[role]))
        creations = {role: [x for x in self.lines[role] if " type veth " in x] for role in order}
        for role in order:
            if creations[role]:
                ip_batch(self.ns[role], creations[role])
        for role in order:
            rest = [x for x in self.lines[role] if " type veth " not in x]
            if rest:
                ip_batch(self.ns[role], rest)
        self.lines.clear()


@dataclass(frozen=True)
class Tunnel:
    """One tunnel's addresses: outer (``here``/``there``) and inner selectors, seen from here."""

    here: str
    there: str
    inner_here: str
    inner_there: str
    spi: int  # here -> there; there -> here is spi + 1
    mode: str = "tunnel"
    inner_family_differs: bool = False  # IPv6 in IPv4 or IPv4 in IPv6: the SAs name their selector family


def _states(t: Tunnel, marks: str) -> list[str]:
    def sel(src: str, dst: str) -> list[str]:
        return ["sel", "src", src, "dst", dst] if t.inner_family_differs else []

    common = ["proto", "esp", "reqid", str(t.spi), "mode", t.mode, *AEAD]
    out = ["xfrm state add src", t.here, "dst", t.there, "spi", hex(t.spi), *common, KEY_OUT, "128",
           *sel(t.inner_here, t.inner_there)]
    back = ["xfrm state add src", t.there, "dst", t.here, "spi", hex(t.spi + 1), *common, KEY_IN, "128",
            *sel(t.inner_there, t.inner_here)]
    return [" ".join(out) + marks, " ".join(back) + marks]


def _policies(t: Tunnel, ifid: str, here: str, there: str, inner_here: str, inner_there: str) -> list[str]:
    tmpl = f"proto esp reqid {t.spi} mode {t.mode}"
    return [
        f"xfrm policy add src {inner_here} dst {inner_there} dir out{ifid} tmpl src {here} dst {there} {tmpl}",
        f"xfrm policy add src {inner_there} dst {inner_here} dir in{ifid} tmpl src {there} dst {here} {tmpl}",
    ]


def esp_pair(here_ns: str, there_ns: str, t: Tunnel, if_id: int, mark: int, mask: int,
             far_if_id: int | None = None) -> None:
    """Static SAs and policies at both ends; here through the XFRM interface with ``if_id``,
    there policy-based, or through an XFRM interface with ``far_if_id`` (no output mark)."""
    marks = f" if_id {if_id} output-mark {hex(mark)} mask {hex(mask)}"
    ip_batch(here_ns, _states(t, marks) + _policies(t, f" if_id {if_id}", t.here, t.there, t.inner_here,
                                                    t.inner_there))
    far = Tunnel(t.there, t.here, t.inner_there, t.inner_here, t.spi, t.mode, t.inner_family_differs)
    # the far end's SAs are the same two (same SPIs and keys), seen from there
    far_id = "" if far_if_id is None else f" if_id {far_if_id}"
    ip_batch(there_ns, _states(t, far_id) + _policies(far, far_id, far.here, far.there, far.inner_here,
                                                      far.inner_there))


class Counters:
    """Packet counters of devices and SAs in one namespace, read now and compared later."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.devices = self._devices()
        self.sas = self._sas()

    def _devices(self) -> dict[str, tuple[int, int]]:
        return {link["ifname"]: (link["stats64"]["tx"]["packets"], link["stats64"]["rx"]["packets"])
                for link in ip_json("-s", "link", "show", netns=self.netns)}

    def _sas(self) -> dict[int, int]:
        """Packets per SPI, from ``ip -s xfrm state``."""
        text = ip_text("-s", "xfrm", "state", netns=self.netns)
        found: dict[int, int] = {}
        for block in re.split(r"^src ", text, flags=re.M)[1:]:  # one block per SA ("sel src" is inside)
            spi = re.search(r"spi 0x([0-9a-f]+)", block)
            packets = re.search(r"lifetime current:\s*\n?\s*\d+\(bytes\), (\d+)\(packets\)", block)
            if spi and packets:
                found[int(spi.group(1), 16)] = int(packets.group(1))
        return found

    def delta(self) -> tuple[dict[str, tuple[int, int]], dict[int, int]]:
        """(tx, rx) packets per device and packets per SPI since this was made."""
        now, sas = self._devices(), self._sas()
        devices = {name: (tx - self.devices.get(name, (0, 0))[0], rx - self.devices.get(name, (0, 0))[1])
                   for name, (tx, rx) in now.items()}
        return devices, {spi: n - self.sas.get(spi, 0) for spi, n in sas.items()}
