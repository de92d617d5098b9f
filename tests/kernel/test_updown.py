"""xfrmid-updown against libreswan's own _updown.xfrm, run with the environment pluto gives them.

Two namespaces get the same host set-up (eth0 192.1.2.45/24, default route
via 192.1.2.254). In ``ref`` we do what pluto 4.10 does itself for
``ipsec-interface=`` (create ipsecN with if_id N on eth0, put interface-ip on
it, set it up) and run the real /usr/libexec/ipsec/_updown.xfrm; in ``ours``
xfrmid-updown runs against the real daemon. Interface, addresses and routes
must come out the same (normalised: xfrmid marks its routes with protocol 120
and does not tie the device to eth0; libreswan tags the source address with
scope 50), and down-client must take xfrmid's share away again.

One daemon for the module (bus_fixtures); each helper run is a Python start
in the guest, so the cases are few and each covers several variables.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .bus_fixtures import TOP, link_present, private_bus, xfrmid  # noqa: F401  (fixtures)
from .conftest import ip, ip_run
from .pluto_fixtures import PLUTO_CHILD_CAPS

pytestmark = pytest.mark.kernel

UPDOWN_XFRM = "/usr/libexec/ipsec/_updown.xfrm"
ME, NEXT_HOP = "192.1.2.45", "192.1.2.254"


def host(netns: str) -> None:
    """The outside of a pluto host: eth0 with our address, a default route."""
    ip_run("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", netns=netns)
    ip_run("addr", "add", f"{ME}/24", "dev", "eth0", netns=netns)
    ip_run("link", "set", "eth0", "up", netns=netns)
    ip_run("link", "set", "eth0p", "up", netns=netns)
    ip_run("route", "add", "default", "via", NEXT_HOP, "dev", "eth0", netns=netns)
    ip_run("-6", "addr", "add", "2001:db8:1:2::45/64", "dev", "eth0", "nodad", netns=netns)
    ip_run("-6", "route", "add", "default", "via", "2001:db8:1:2::254", "dev", "eth0", netns=netns)


def pluto_env(verb: str, conn: str, iface: str, **extra: str) -> dict[str, str]:
    """What pluto 4.10's jam_common_shell_out() puts in the updown environment."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONDONTWRITEBYTECODE": "1",
        # pluto 4.10 runs updown through popen(), which passes its own environment on
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
        "PLUTO_VERB": verb, "PLUTO_CONNECTION": conn, "PLUTO_CONNECTION_TYPE": "tunnel",
        "PLUTO_VIRT_INTERFACE": iface, "PLUTO_INTERFACE": "eth0", "PLUTO_XFRMI_ROUTE": "yes",
        "PLUTO_NEXT_HOP": NEXT_HOP, "PLUTO_ME": ME, "PLUTO_MY_ID": "@west",
        "PLUTO_MY_PORT": "0", "PLUTO_MY_PROTOCOL": "0", "PLUTO_SA_REQID": "16389", "PLUTO_SA_TYPE": "ESP",
        "PLUTO_PEER_ID": "@east", "PLUTO_PEER_PORT": "0", "PLUTO_PEER_PROTOCOL": "0", "PLUTO_PEER_CA": "",
        "PLUTO_STACK": "xfrm", "PLUTO_ADDTIME": "0", "PLUTO_CONN_POLICY": "RSASIG+ENCRYPT+TUNNEL+PFS+UP+IKEV2_ALLOW",
        "PLUTO_CONN_KIND": "CK_PERMANENT", "PLUTO_CONN_ADDRFAMILY": "ipv4", "XAUTH_FAILED": "0",
        "PLUTO_IS_PEER_CISCO": "0", "PLUTO_PEER_DNS_INFO": "", "PLUTO_PEER_DOMAIN_INFO": "",
        "PLUTO_PEER_BANNER": "", "PLUTO_CFG_SERVER": "0", "PLUTO_CFG_CLIENT": "0", "PLUTO_NM_CONFIGURED": "0",
        "PLUTO_XFRMI_FWMARK": "", "VTI_IFACE": "", "VTI_ROUTING": "no", "VTI_SHARED": "no", "SPI_IN": "0x1234", "SPI_OUT": "0x5678",
    }
    env.update(extra)
    return env


def client_vars(my: str, peer_client: str, peer: str) -> dict[str, str]:
    import ipaddress

    mine, theirs = ipaddress.ip_network(my), ipaddress.ip_network(peer_client)
    return {
        "PLUTO_MY_CLIENT": my, "PLUTO_MY_CLIENT_NET": str(mine.network_address),
        "PLUTO_MY_CLIENT_MASK": str(mine.netmask), "PLUTO_PEER": peer,
        "PLUTO_PEER_CLIENT": peer_client, "PLUTO_PEER_CLIENT_NET": str(theirs.network_address),
        "PLUTO_PEER_CLIENT_MASK": str(theirs.netmask),
    }


def run_in(netns: str, cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", "netns", "exec", netns, *cmd], env=env, cwd=TOP,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd[-1]} {env['PLUTO_VERB']} failed in {netns}: {proc.stdout}{proc.stderr}"
    return proc


def reference(netns: str, iface: str, if_id: int, env: dict[str, str], verbs: list[str]) -> None:
    """pluto's own part (device, interface-ip), then libreswan's _updown.xfrm for each verb."""
    ip_run("link", "add", iface, "type", "xfrm", "dev", "eth0", "if_id", str(if_id), netns=netns)
    if env.get("INTERFACE_IP"):
        ip_run("addr", "add", env["INTERFACE_IP"], "dev", iface, netns=netns)
    ip_run("link", "set", iface, "up", netns=netns)
    for verb in verbs:
        run_in(netns, ["/bin/sh", UPDOWN_XFRM], {**env, "PLUTO_VERB": verb})


def as_pluto_child(major: int = 4) -> list[str]:
    """setpriv to the capabilities pluto leaves the programs it runs (its bounding set,
    which a root exec gets as its whole set; test_pluto_devices checks it on the real pluto)."""
    keep = ",".join(f"+{cap}" for cap in PLUTO_CHILD_CAPS[major])
    return ["setpriv", f"--bounding-set=-all,{keep}", "--inh-caps=-all"]


def helper(netns: str, address: str, env: dict[str, str], verb: str) -> str:
    """The helper as pluto runs it: in pluto's namespace, with pluto's capabilities."""
    return run_in(netns, [*as_pluto_child(), sys.executable, "-m", "xfrmid.integrations.updown", "--bus", address],
                  {**env, "PLUTO_VERB": verb}).stdout


def interface_view(netns: str, iface: str) -> dict:
    link = ip("-d", "link", "show", "dev", iface, netns=netns)[0]
    info = link["linkinfo"]
    addrs = sorted((a["family"], a["local"], a["prefixlen"])
                   for a in ip("addr", "show", "dev", iface, netns=netns)[0]["addr_info"]
                   if a.get("scope") != "link")
    return {"kind": info["info_kind"], "if_id": info["info_data"]["if_id"],
            "up": "UP" in link["flags"], "addresses": addrs}


def routes_view(netns: str, iface: str) -> list:
    keep = ("dst", "dev", "prefsrc", "metric", "scope", "type")
    found = []
    for family in ("-4", "-6"):
        for r in ip(family, "route", "show", "table", "all", "dev", iface, netns=netns):
            if r.get("table") == "local" or r.get("dst", "").startswith("fe80"):
                continue  # the kernel's own entries for the addresses
            found.append(tuple((k, str(r.get(k, ""))) for k in keep) + (("table", r.get("table", "main")),))
    return sorted(found)


def route_get(netns: str, dst: str, mark: int | None = None) -> tuple:
    args = ["route", "get", dst] + (["mark", str(mark)] if mark is not None else [])
    r = ip(*args, netns=netns)[0]
    return r.get("dev"), r.get("gateway")


def assert_clean(netns: str, iface: str) -> None:
    assert not link_present(iface, netns)
    rules = [r for r in ip("rule", "show", netns=netns) if r.get("table") not in ("local", "main", "default")]
    assert rules == []


def two_hosts(netns_factory) -> tuple[str, str]:
    ref, ours = netns_factory("ur"), netns_factory("uo")
    host(ref)
    host(ours)
    return ref, ours


def test_subnet_to_subnet_with_source_ip_and_interface_ip(xfrmid, netns_factory):
    ref, ours = two_hosts(netns_factory)
    iface, if_id, conn = "ipsec4101", 4101, "westnet-eastnet"
    env = pluto_env("route-client", conn, iface, PLUTO_MY_SOURCEIP="192.0.1.254", PLUTO_METRIC="77",
                    INTERFACE_IP="198.51.100.1/30", **client_vars("192.0.1.0/24", "192.0.2.0/24", "192.1.2.23"))
    reference(ref, iface, if_id, env, ["route-client", "up-client"])
    out = helper(ours, xfrmid.address, env, "route-client")
    assert f"if_id {if_id}" in out
    helper(ours, xfrmid.address, env, "up-client")

    assert interface_view(ours, iface) == interface_view(ref, iface)
    assert interface_view(ours, iface)["addresses"] == [("inet", "192.0.1.254", 32), ("inet", "198.51.100.1", 30)]
    assert routes_view(ours, iface) == routes_view(ref, iface)
    assert route_get(ours, "192.0.2.9") == route_get(ref, "192.0.2.9") == (iface, None)

    # a second connection on the same interface: its down leaves the first one's share
    env2 = pluto_env("route-client", "westnet-eastnet2", iface, **client_vars("192.0.1.0/24", "192.0.3.0/24", "192.1.2.23"))
    helper(ours, xfrmid.address, env2, "route-client")
    assert route_get(ours, "192.0.3.9") == (iface, None)
    # down (the SA went, the connection stays routed) keeps the route: traffic waits for the
    # next SA instead of leaving in clear by the default route; unroute takes it away
    helper(ours, xfrmid.address, env, "down-client")
    assert route_get(ours, "192.0.2.9") == (iface, None)
    helper(ours, xfrmid.address, env, "unroute-client")
    assert link_present(iface, ours)
    # one released IPv4 address stays while the second connection's IPv4 route goes through
    # the interface (the kernel would drop the route with the interface's last IPv4 address)
    assert interface_view(ours, iface)["addresses"] == [("inet", "192.0.1.254", 32)]
    assert [dict(r)["dst"] for r in routes_view(ours, iface)] == ["192.0.3.0/24"]
    out = helper(ours, xfrmid.address, env2, "unroute-client")
    assert "interface deleted" in out
    assert_clean(ours, iface)


def test_default_route_with_the_peer_inside(xfrmid, netns_factory):
    """rightsubnet=0.0.0.0/0: PLUTO_XFRMI_FWMARK keeps the marked ESP to the peer outside the tunnel."""
    ref, ours = two_hosts(netns_factory)
    iface, if_id, conn = "ipsec4102", 4102, "road"
    env = pluto_env("route-client", conn, iface, PLUTO_XFRMI_FWMARK=f"{if_id}/0xffffffff",
                    **client_vars("192.0.1.0/24", "0.0.0.0/0", "203.0.113.23"))
    reference(ref, iface, if_id, env, ["route-client", "up-client"])
    helper(ours, xfrmid.address, env, "route-client")  # up-client repeats it (idempotent): one Python start less

    assert interface_view(ours, iface) == interface_view(ref, iface)
    # the same two halves through the interface (libreswan: main table, xfrmid: its peer table)
    assert {dict(r)["dst"] for r in routes_view(ours, iface)} == {dict(r)["dst"] for r in routes_view(ref, iface)} \
        == {"0.0.0.0/1", "128.0.0.0/1"}
    for dst in ("192.0.2.9", "203.0.113.23", "8.8.8.8"):
        assert route_get(ours, dst) == route_get(ref, dst) == (iface, None), dst
    # ESP/IKE to the peer carry the output mark (if_id/0xffffffff) and leave by eth0
    assert route_get(ours, "203.0.113.23", if_id) == route_get(ref, "203.0.113.23", if_id) == ("eth0", NEXT_HOP)

    helper(ours, xfrmid.address, env, "unroute-client")
    assert_clean(ours, iface)
    assert route_get(ours, "203.0.113.23") == ("eth0", NEXT_HOP)


def test_ipv6_client(xfrmid, netns_factory):
    ref, ours = two_hosts(netns_factory)
    iface, if_id, conn = "ipsec4103", 4103, "v6net"
    env = pluto_env("route-client-v6", conn, iface, PLUTO_CONN_ADDRFAMILY="ipv6", PLUTO_ME="2001:db8:1:2::45",
                    PLUTO_NEXT_HOP="2001:db8:1:2::254", PLUTO_MY_SOURCEIP="2001:db8:0:1::254",
                    **client_vars("2001:db8:0:1::/64", "2001:db8:0:2::/64", "2001:db8:1:2::23"))
    reference(ref, iface, if_id, env, ["route-client-v6", "up-client-v6"])
    helper(ours, xfrmid.address, env, "up-client-v6")  # an up without a route before it does the whole job
    assert interface_view(ours, iface) == interface_view(ref, iface)
    assert ("inet6", "2001:db8:0:1::254", 128) in interface_view(ours, iface)["addresses"]
    assert routes_view(ours, iface) == routes_view(ref, iface)
    helper(ours, xfrmid.address, env, "unroute-client-v6")
    assert_clean(ours, iface)


def test_namespace_found_with_plutos_capabilities(xfrmid, netns_factory):
    """pluto's children cannot read pid 1's (or xfrmid's) /proc/PID/ns/net; the helper still
    finds its namespace: by name under /run/netns, the daemon's own when it has none, and
    one clear error for a namespace xfrmid cannot reach."""
    for major in PLUTO_CHILD_CAPS:
        probe = subprocess.run([*as_pluto_child(major), sys.executable, "-S", "-c",
                                "import os\ntry: os.stat('/proc/1/ns/net')\nexcept PermissionError: print('refused')"],
                               capture_output=True, text=True, timeout=120)
        assert probe.stdout.strip() == "refused", probe
    iface, conn = "ipsec4104", "caps"
    env = pluto_env("route-client", conn, iface, **client_vars("192.0.1.0/24", "192.0.2.0/24", "192.1.2.23"))
    cmd = [sys.executable, "-m", "xfrmid.integrations.updown", "--bus", xfrmid.address]
    # the daemon's own namespace (the VM's, which has no name): no netns option
    for verb in ("route-client", "unroute-client"):
        proc = subprocess.run([*as_pluto_child(5), *cmd], env={**env, "PLUTO_VERB": verb}, cwd=TOP,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert link_present(iface) == (verb == "route-client")
    # a namespace without a name
    proc = subprocess.run(["unshare", "--net", *as_pluto_child(), *cmd], env={**env, "PLUTO_VERB": "route-client"},
                          cwd=TOP, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert "has no name under /run/netns and is not xfrmid's" in proc.stderr
    assert not link_present(iface)


def test_an_external_interface_is_refused_for_plutos_if_id(xfrmid, netns_factory):
    """An external (collect_md) interface carries no if_id: pluto's SAs for ipsec-interface=N
    (if_id N) would never reach it. One sentence, and the reference is dropped again."""
    import asyncio

    from xfrmid.client import Client

    ours = netns_factory("ux")
    iface = "ipsec4105"

    async def on_client(what):
        c = await Client.connect(xfrmid.address)
        try:
            return await what(c)
        finally:
            c.close()

    asyncio.run(on_client(lambda c: c.create_interface(iface, netns=ours, external=True)))
    env = pluto_env("route-client", "ext", iface, **client_vars("192.0.1.0/24", "192.0.2.0/24", "192.1.2.23"))
    proc = subprocess.run(["ip", "netns", "exec", ours, *as_pluto_child(), sys.executable, "-m",
                           "xfrmid.integrations.updown", "--bus", xfrmid.address], env=env, cwd=TOP,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stdout + proc.stderr
    assert f"xfrmid's {iface} is an external (collect_md) interface" in proc.stderr
    assert "if_id 4105" in proc.stderr
    assert asyncio.run(on_client(lambda c: c.interface_properties(iface, ours)))["Owners"] == []
    asyncio.run(on_client(lambda c: c.delete_interface(iface, netns=ours)))
