"""The start-up's shortcuts give what the long ways gave.

- nlattrs.pick stops once it has every attribute it was asked for;
- IPv4 text from inet_ntop is ipaddress's (addresses and routes parse with it);
- pyroute2's tc plugins are loaded on first use only, and then work;
- the kernel probe's modprobe reports a missing program as before;
- the daemon turns the garbage collector back on whatever happens.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import socket
import struct
import subprocess
import sys
import textwrap

from hypothesis import given
from hypothesis import strategies as st

from xfrmid import daemon
from xfrmid.kernel import addresses, nlattrs, probe, routes
from xfrmid.kernel.objects import XFRMID_PROTO


def nla(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def test_pick_stops_when_everything_is_found():
    u32 = lambda v: struct.pack("=I", v)  # noqa: E731
    # a truncated attribute after the wanted ones: reading on would fail (alen < 4) or misparse
    data = nla(3, b"eth0\0") + nla(4, u32(1400)) + nla(7, u32(9)) + b"\x02\x00\x05\x00garbage"
    assert nlattrs.pick(data, 0, len(data), {3: nlattrs.text, 4: nlattrs.u32}) == {3: "eth0", 4: 1400}
    # an attribute missing: the whole message is read, as before
    assert nlattrs.pick(data, 0, len(data), {3: nlattrs.text, 9: nlattrs.u32}) == {3: "eth0"}
    # repeated: the first one counts
    twice = nla(4, u32(1)) + nla(4, u32(2))
    assert nlattrs.pick(twice, 0, len(twice), {4: nlattrs.u32, 5: nlattrs.u32}) == {4: 1}


def _ifaddrmsg(family: int, plen: int, index: int, local: bytes) -> bytes:
    return struct.pack("=BBBBi", family, plen, 0, 0, index) + nla(1, local) + nla(2, local)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(1, 2**31 - 1))
def test_ipv4_address_text_is_ipaddress_text(value, plen, index):
    raw = value.to_bytes(4, "big")
    data = _ifaddrmsg(socket.AF_INET, plen, index, raw)
    assert addresses._parse(data, 0, len(data)) == (index, f"{ipaddress.IPv4Address(raw)}/{plen}")


def test_ipv6_addresses_still_skip_the_kernels_link_local():
    raw = ipaddress.IPv6Address("fe80::1").packed
    data = _ifaddrmsg(socket.AF_INET6, 64, 3, raw)
    assert addresses._parse(data, 0, len(data)) is None
    raw = ipaddress.IPv6Address("::ffff:10.0.0.1").packed
    data = _ifaddrmsg(socket.AF_INET6, 128, 3, raw)
    assert addresses._parse(data, 0, len(data)) == (3, "::ffff:a00:1/128")


def _rtmsg(family: int, dst_len: int, dst: bytes, oif: int) -> bytes:
    head = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, 254, XFRMID_PROTO, 0, 1, 0)
    return head + nla(1, dst) + nla(4, struct.pack("=I", oif))


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_route_destination_is_ipaddress_text(value, plen):
    network = ipaddress.IPv4Network((value, plen), strict=False)  # the kernel keeps no host bits
    data = _rtmsg(socket.AF_INET, plen, network.network_address.packed, 5)
    spec, oif = routes._parse(data, 0, len(data))
    assert (spec.dst, oif) == (network.with_prefixlen, 5)


def test_ipv6_route_destination_is_normalised():
    network = ipaddress.IPv6Network("::ffff:10.0.0.0/104")
    data = _rtmsg(socket.AF_INET6, 104, network.network_address.packed, 5)
    assert routes._parse(data, 0, len(data))[0].dst == network.with_prefixlen


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tc_plugins_load_on_first_use():
    out = _run(
        """
        import sys
        import xfrmid.kernel
        xfrmid.kernel.prepare()
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl.tcmsg import plugins, tcmsg
        lazy = sorted(n for n, m in sys.modules.items() if type(m).__name__ == "_LazyModule")
        print("lazy", bool(lazy), all(n.startswith("pyroute2.netlink.rtnl.tcmsg.") for n in lazy))
        print("common", "pyroute2.netlink.rtnl.tcmsg.common" in sys.modules)
        htb = plugins["htb"]
        print("htb", callable(htb.fix_request), type(htb).__name__)
        print("u32", plugins["u32"].options.__name__)
        """
    )
    assert "lazy True True" in out  # some deferred, all of them tc plugins (how many is pyroute2's affair)
    assert "common False" in out
    assert "htb True module" in out
    assert "u32 options" in out


def test_modprobe_missing_is_reported(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert asyncio.run(probe._modprobe()) == "modprobe is not installed"


def test_main_enables_the_collector_again(monkeypatch, tmp_path):
    async def fails(self):
        assert not gc.isenabled()  # the start-up runs without it
        raise RuntimeError("boom")

    monkeypatch.setattr(daemon.Daemon, "run", fails)
    rc = daemon.main(["--config", str(tmp_path / "absent.conf"), "--state-dir", str(tmp_path)])
    assert rc == daemon.EXIT_FAILURE
    assert gc.isenabled()
