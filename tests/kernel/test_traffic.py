"""Real ESP traffic through the library's XFRM interface between two namespaces.

left: the library creates ipsec1 (if_id 1), its address and a route; right:
an xfrm interface made with iproute2. Static tunnel-mode SAs and policies
carry if_id 1 and the output mark 1 on both sides; a ping from left to
right's inner address must come back and be counted on ipsec1.
"""

from __future__ import annotations

from xfrmid.kernel.objects import AddressSpec, LinkSpec, RouteSpec
from xfrmid.naming import output_mark

from .conftest import ip, ip_run, sh

KEY_OUT = "0x" + "11" * 20  # rfc4106: 16-byte AES key + 4-byte salt
KEY_IN = "0x" + "22" * 20


def static_ipsec(netns: str, local: str, remote: str, inner_local: str, inner_remote: str,
                 spi_out: int, spi_in: int, key_out: str, key_in: str, if_id: int) -> None:
    mark, mask = output_mark(if_id)
    common = ["reqid", "1", "mode", "tunnel", "if_id", str(if_id), "aead", "rfc4106(gcm(aes))"]
    ip_run("xfrm", "state", "add", "src", local, "dst", remote, "proto", "esp", "spi", hex(spi_out), *common,
           key_out, "128", "output-mark", hex(mark), "mask", hex(mask), netns=netns)
    ip_run("xfrm", "state", "add", "src", remote, "dst", local, "proto", "esp", "spi", hex(spi_in), *common,
           key_in, "128", netns=netns)
    ip_run("xfrm", "policy", "add", "src", inner_local, "dst", inner_remote, "dir", "out", "if_id", str(if_id),
           "tmpl", "src", local, "dst", remote, "proto", "esp", "reqid", "1", "mode", "tunnel", netns=netns)
    ip_run("xfrm", "policy", "add", "src", inner_remote, "dst", inner_local, "dir", "in", "if_id", str(if_id),
           "tmpl", "src", remote, "dst", local, "proto", "esp", "reqid", "1", "mode", "tunnel", netns=netns)


def stats(name: str, netns: str) -> dict:
    (link,) = ip("-s", "link", "show", "dev", name, netns=netns)
    return link["stats64"]


async def test_ping_through_library_interface(kernel, two_netns):
    t = two_netns
    # left: everything xfrm-interface related through the library
    await kernel.create_link(t.left, LinkSpec(name="ipsec1", if_id=1))
    await kernel.add_address(t.left, AddressSpec("ipsec1", "10.1.1.1/32"))
    await kernel.add_route(t.left, RouteSpec(dst="10.2.2.0/24", dev="ipsec1", src="10.1.1.1"))
    # right: the peer, by hand
    ip_run("link", "add", "ipsec1", "type", "xfrm", "if_id", "1", netns=t.right)
    ip_run("addr", "add", "10.2.2.2/32", "dev", "ipsec1", netns=t.right)
    ip_run("link", "set", "ipsec1", "up", netns=t.right)
    ip_run("route", "add", "10.1.1.0/24", "dev", "ipsec1", "src", "10.2.2.2", netns=t.right)
    static_ipsec(t.left, t.left_addr, t.right_addr, "10.1.1.0/24", "10.2.2.0/24", 0x1001, 0x1002,
                 KEY_OUT, KEY_IN, 1)
    static_ipsec(t.right, t.right_addr, t.left_addr, "10.2.2.0/24", "10.1.1.0/24", 0x1002, 0x1001,
                 KEY_IN, KEY_OUT, 1)

    before = stats("ipsec1", t.left)
    ping = sh(f"ip netns exec {t.left} ping -c 3 -i 0.2 -W 5 10.2.2.2")
    assert " 0% packet loss" in ping.stdout, ping.stdout
    after = stats("ipsec1", t.left)
    assert after["rx"]["packets"] - before["rx"]["packets"] >= 3
    assert after["tx"]["packets"] - before["tx"]["packets"] >= 3
    # and it really was ESP on the wire: the SAs counted the packets
    states = sh(f"ip -n {t.left} -s xfrm state").stdout
    assert "spi 0x00001001" in states and "spi 0x00001002" in states
    assert stats("vleft", t.left)["tx"]["packets"] >= 3
