"""xfrmid beside Debian's NetworkManager, and xfrmid's VPN plugin as NetworkManager runs it.

NetworkManager (1.42) manages the container's uplink from a keyfile profile:
an address, a default route, a route, a route in table 100 and a routing
rule. xfrmid, the shipped unit, holds ipsec7 (address, route, peer pattern).

NetworkManager leaves devices of unknown kinds (xfrm is one: a "generic"
device) unmanaged by default, so a stock NetworkManager touches nothing of
xfrmid's. An administrator's configuration that manages every device
(``[device-*] match-device=* managed=1``) makes it take the interface over as
"connected (externally)", and ``nmcli device reapply`` then removes the
address and adds its own copy, the kernel silently dropping xfrmid's routes
with it. The shipped /usr/lib/NetworkManager/conf.d/xfrmid.conf
(``[keyfile] unmanaged-devices=type:xfrm``) is the one setting such a
configuration cannot override.

Then the VPN plugin: ``nmcli connection add type vpn vpn-type xfrmid``,
``nmcli connection up`` (NetworkManager starts nm-xfrmid-service, which
Attaches through xfrmid and hands the interface as tundev), ESP between the
container and the peer namespace through it, ``nmcli connection down`` and a
killed plugin each releasing the interface. The tests run in file order.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time

import pytest

from .netmgr_lab import (
    GATEWAY, IFACE, LOCAL, MANAGER_ROUTE, MANAGER_RULE_PRIO, MANAGER_TABLE, MANAGER_TABLE_ROUTE,
    UPLINK, Lab,
)
from .nspawn import BIN, TOP, install, write

UPLINK_PROFILE = f"""[connection]
id=uplink
type=ethernet
interface-name={UPLINK}

[ipv4]
method=manual
address1={LOCAL}/24
gateway={GATEWAY}
route1={MANAGER_ROUTE},{GATEWAY}
route2={MANAGER_TABLE_ROUTE},{GATEWAY}
route2_options=table={MANAGER_TABLE}
routing-rule1=priority {MANAGER_RULE_PRIO} to {MANAGER_TABLE_ROUTE} table {MANAGER_TABLE}

[ipv6]
method=disabled
"""
# An administrator's configuration that has NetworkManager manage every device.
MANAGE_ALL = "\n[device-all]\nmatch-device=*\nmanaged=1\n"
SNIPPET = "/usr/lib/NetworkManager/conf.d/xfrmid.conf"
ONLINE = "nm-online -s -q -t 300"
RESTART = f"systemctl restart NetworkManager.service && {ONLINE}"
REAPPLY_ALL = "for d in $(nmcli -g DEVICE device); do nmcli device reapply $d || true; done"

# the VPN connection and its peer
VPN, VPN_IFACE, VPN_IF_ID = "site9", "ipsec9", 9
INNER_LOCAL, INNER_PEER, PEER_NET, LOCAL_NET = "10.99.0.2", "10.99.1.1", "10.99.1.0/24", "10.99.0.0/24"
SPI_OUT, SPI_IN = 0x9001, 0x9002
KEY_OUT, KEY_IN = "0x" + "11" * 20, "0x" + "22" * 20
AEAD = "rfc4106(gcm(aes))"
# The package's program is pip's console script (#!/usr/bin/python3 -sP). The test's runs
# the venv's interpreter with -S: its start-up would otherwise read the venv's
# site-packages over the VM's uncached 9p root, seconds under emulation, and
# NetworkManager gives a plugin 5 s to own its bus name. The code run is the same.
SITE = next((BIN.parent / "lib").glob("python3*/site-packages"))
FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
LAUNCHER = f"""#!/bin/sh
unset LD_PRELOAD FAKETIME
export PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}"{shlex.quote(f"{TOP}:{SITE}")}
exec {shlex.quote(str(BIN / 'python'))} -S -c 'import sys; from xfrmid.integrations.nm_vpn import main; sys.exit(main())' "$@"
"""


@pytest.fixture(scope="module")
def lab():
    lab = Lab("NetworkManager.service", "networkmanager")
    try:
        made = lab.prepare()
        root = made.root
        write(root, "/etc/NetworkManager/system-connections/uplink.nmconnection", UPLINK_PROFILE, 0o600)
        # the plugin as the package installs it; NetworkManager's debug log of the VPN parts
        install(root, TOP / "packaging/networkmanager/nm-xfrmid-service.name",
                "/usr/lib/NetworkManager/VPN/nm-xfrmid-service.name")
        install(root, TOP / "packaging/networkmanager/nm-xfrmid-service.conf",
                "/usr/share/dbus-1/system.d/nm-xfrmid-service.conf")
        write(root, "/usr/libexec/nm-xfrmid-service", LAUNCHER, 0o755)
        write(root, "/etc/NetworkManager/conf.d/90-test-logging.conf",
              "[logging]\nlevel=INFO\ndomains=DEFAULT,VPN:DEBUG,VPN_PLUGIN:DEBUG\n")
        _peer_side(lab.peer)
        lab.start()
        yield lab
    finally:
        lab.close()


def _peer_side(peer: str) -> None:
    """The VPN's other end: an xfrm interface and static SAs, made with iproute2."""
    common = ["proto", "esp", "reqid", str(VPN_IF_ID), "mode", "tunnel", "if_id", str(VPN_IF_ID), "aead", AEAD]
    for args in (
        ["link", "add", VPN_IFACE, "type", "xfrm", "if_id", str(VPN_IF_ID)],
        ["addr", "add", f"{INNER_PEER}/32", "dev", VPN_IFACE],
        ["link", "set", VPN_IFACE, "up"],
        ["route", "add", LOCAL_NET, "dev", VPN_IFACE],
        ["xfrm", "state", "add", "src", GATEWAY, "dst", LOCAL, "spi", hex(SPI_IN), *common, KEY_IN, "128"],
        ["xfrm", "state", "add", "src", LOCAL, "dst", GATEWAY, "spi", hex(SPI_OUT), *common, KEY_OUT, "128"],
        ["xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "0.0.0.0/0", "dir", "out", "if_id", str(VPN_IF_ID),
         "tmpl", "src", GATEWAY, "dst", LOCAL, "proto", "esp", "reqid", str(VPN_IF_ID), "mode", "tunnel"],
        ["xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "0.0.0.0/0", "dir", "in", "if_id", str(VPN_IF_ID),
         "tmpl", "src", LOCAL, "dst", GATEWAY, "proto", "esp", "reqid", str(VPN_IF_ID), "mode", "tunnel"],
    ):
        subprocess.run(["ip", "-n", peer, *args], check=True, capture_output=True, timeout=60)


def device_state(lab: Lab, device: str) -> str:
    out = lab.run("nmcli -g DEVICE,STATE device").stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line).get(device, "")


# -- stock NetworkManager ----------------------------------------------------------


def test_start_leaves_xfrmid_objects(lab):
    lab.expect_untouched(lab.act("start", f"systemctl start NetworkManager.service && {ONLINE}"))
    assert device_state(lab, UPLINK) == "connected"
    assert device_state(lab, IFACE) == "unmanaged"


def test_general_reload_leaves_xfrmid_objects(lab):
    lab.expect_untouched(lab.act("nmcli general reload", "nmcli general reload"))


def test_reapply_of_every_device_leaves_xfrmid_objects(lab):
    outcome = lab.act("nmcli device reapply (every device)", REAPPLY_ALL)
    lab.expect_untouched(outcome)
    assert f"'{UPLINK}'" in outcome.output and "successfully reapplied" in outcome.output


def test_restart_leaves_xfrmid_objects(lab):
    lab.expect_untouched(lab.act("restart", RESTART))
    assert device_state(lab, IFACE) == "unmanaged"


# -- a configuration that manages every device ------------------------------------


def test_managing_every_device_takes_the_interface_over(lab):
    lab.run(f"printf '{MANAGE_ALL}' >> /etc/NetworkManager/NetworkManager.conf")
    lab.expect_repaired(lab.act("restart (match-device=* managed=1)", RESTART))
    assert device_state(lab, IFACE) == "connected (externally)"


def test_reapply_on_the_taken_interface_strips_it_and_xfrmid_puts_it_back(lab):
    outcome = lab.act("nmcli device reapply (every device; managed=1)", REAPPLY_ALL)
    lab.expect_repaired(outcome)
    # what the shipped snippet prevents: the address removed, the routes silently with it
    assert outcome.lost("addr"), outcome.summary()


def test_no_fight_over_a_minute_while_networkmanager_holds_the_interface(lab):
    lab.expect_no_fight("NetworkManager holds ipsec7: managed=1, no snippet")


def test_shipped_snippet_is_enough(lab):
    install(lab.made.root, TOP / "packaging/networkmanager/conf.d/xfrmid.conf", SNIPPET)
    lab.expect_repaired(lab.act(f"restart (with {SNIPPET}; managed=1)", RESTART))
    assert device_state(lab, IFACE) == "unmanaged"
    for action, script in (("nmcli device reapply (every device; snippet)", REAPPLY_ALL),
                           ("nmcli general reload (snippet)", "nmcli general reload"),
                           ("restart (snippet)", RESTART)):
        lab.expect_untouched(lab.act(action, script))
    assert device_state(lab, IFACE) == "unmanaged"
    # not even on request: keyfile.unmanaged-devices is authoritative
    explicit = lab.run(f"nmcli device set {IFACE} managed yes; sleep 2; nmcli -g GENERAL.STATE device show {IFACE}",
                       check=False)
    assert "unmanaged" in explicit.stdout, explicit.stdout + explicit.stderr


# -- the VPN plugin --------------------------------------------------------------


def plugin_pids(lab: Lab) -> list[int]:
    """Processes owning a bus name of the plugin."""
    out = lab.run("busctl list --no-legend --no-pager", check=False).stdout
    return [int(fields[1]) for fields in (line.split() for line in out.splitlines())
            if fields and fields[0].startswith("org.freedesktop.NetworkManager.xfrmid") and fields[1].isdigit()]


def vpn_active(lab: Lab) -> bool:
    return VPN in lab.run("nmcli -g NAME connection show --active", check=False).stdout.split()


def iface_present(lab: Lab) -> bool:
    return lab.run(f"ip link show dev {VPN_IFACE}", check=False).returncode == 0


def wait_until(condition, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def xfrmid_owners(lab: Lab) -> list[str]:
    listed = json.loads(lab.run("busctl --json=short call org.xfrmid1 /org/xfrmid1 org.xfrmid1.Manager "
                                "ListInterfaces").stdout)["data"][0]
    path = next(row[3] for row in listed if row[0] == VPN_IFACE)
    prop = lab.run(f"busctl --json=short get-property org.xfrmid1 {path} org.xfrmid1.Interface Owners").stdout
    return json.loads(prop)["data"]


def plugin_start(lab: Lab) -> str:
    """How long the last plugin NetworkManager started took to own its bus name (NM allows 5 s)."""
    lines = lab.run("journalctl -b --no-pager -o short-unix -u NetworkManager.service", check=False).stdout
    started, owned, pid = None, None, ""
    for line in lines.splitlines():
        stamp, _, text = line.partition(" ")
        if match := re.search(r"starting: VPN service has PID (\d+)", text):
            started, owned, pid = float(stamp), None, match.group(1)
        elif pid and f"nm-xfrmid-service[{pid}]: serving " in text:
            owned = float(stamp)
    if started is None:
        return "NetworkManager did not start the plugin"
    if owned is None:
        return "the plugin did not own its bus name yet"
    return f"the plugin owned its bus name {owned - started:.1f} s after NetworkManager started it"


def vpn_up(lab: Lab) -> None:
    started = time.monotonic()
    up = lab.run(f"nmcli --wait 180 connection up {VPN}", check=False, timeout=240)
    n = sum(key.startswith("nmcli connection up") for key in lab.timings) + 1
    lab.timings[f"nmcli connection up #{n} ({plugin_start(lab)})"] = time.monotonic() - started
    assert up.returncode == 0, f"{up.stdout}{up.stderr}({plugin_start(lab)})"


def test_vpn_connection_is_added_with_nmcli(lab):
    # NetworkManager gives a plugin 5 s of its clock to own its bus name. Under software
    # emulation on a busy host the plugin's Python start-up took 3.5 to 19 s, so for the
    # plugin's tests NetworkManager's clock runs at a fifth of real time (libfaketime);
    # the plugin's own clock is not touched (LAUNCHER).
    write(lab.made.root, "/etc/systemd/system/NetworkManager.service.d/test-slow-clock.conf",
          f"[Service]\nEnvironment=LD_PRELOAD={FAKETIME} \"FAKETIME=+0 x0.2\"\n")
    lab.run(f"systemctl daemon-reload && {RESTART}", timeout=600)
    lab.run(f"nmcli connection add type vpn vpn-type xfrmid con-name {VPN} "
            f"vpn.data 'interface={VPN_IFACE}, remote={GATEWAY}, address={INNER_LOCAL}/32, routes={PEER_NET}, "
            f"spi-out={hex(SPI_OUT)}, spi-in={hex(SPI_IN)}' vpn.secrets 'key-out={KEY_OUT}, key-in={KEY_IN}'")
    shown = lab.run(f"nmcli -g vpn.service-type,vpn.data connection show {VPN}").stdout
    assert "org.freedesktop.NetworkManager.xfrmid" in shown and f"interface = {VPN_IFACE}" in shown


def test_vpn_up_gets_the_interface_from_xfrmid_and_network_manager_configures_it(lab):
    vpn_up(lab)
    assert vpn_active(lab)
    uuid = lab.run(f"nmcli -g connection.uuid connection show {VPN}").stdout.strip()
    # the plugin's Attach, with the connection's UUID as the owner
    assert xfrmid_owners(lab) == [uuid]
    link = json.loads(lab.run(f"ip -j -d link show dev {VPN_IFACE}").stdout)[0]
    assert int(str(link["linkinfo"]["info_data"]["if_id"]), 0) == VPN_IF_ID and "UP" in link["flags"]
    # NetworkManager, not xfrmid, put the tunnel's address and route on it (tundev)
    addrs = lab.run(f"ip -4 -o addr show dev {VPN_IFACE}").stdout
    assert f"{INNER_LOCAL}/32" in addrs, addrs
    routes = lab.run(f"ip route show {PEER_NET}").stdout
    assert f"dev {VPN_IFACE}" in routes and "proto static" in routes, routes
    assert "proto xfrmid" not in routes
    assert lab.run(f"nmcli -g GENERAL.STATE connection show {VPN}").stdout.strip() == "activated"


def test_esp_flows_through_the_interface(lab):
    before = json.loads(lab.run(f"ip -s -j link show dev {VPN_IFACE}").stdout)[0]["stats64"]
    ping = lab.run(f"ping -c 3 -i 0.3 -W 5 {INNER_PEER}", check=False, timeout=60)
    assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    after = json.loads(lab.run(f"ip -s -j link show dev {VPN_IFACE}").stdout)[0]["stats64"]
    assert after["tx"]["packets"] - before["tx"]["packets"] >= 3
    assert after["rx"]["packets"] - before["rx"]["packets"] >= 3
    # ESP on the wire: the peer's inbound SA decrypted them
    states = subprocess.run(["ip", "-n", lab.peer, "-s", "xfrm", "state", "get", "src", LOCAL, "dst", GATEWAY,
                             "proto", "esp", "spi", hex(SPI_OUT)], capture_output=True, text=True, timeout=60).stdout
    packets = re.search(r"(\d+)\(packets\)", states)
    assert packets and int(packets.group(1)) >= 3, states


def test_vpn_down_releases_the_interface(lab):
    assert len(plugin_pids(lab)) == 1, plugin_pids(lab)
    lab.run(f"nmcli connection down {VPN}", timeout=120)
    gone = wait_until(lambda: not iface_present(lab), 60)
    assert gone is not None, lab.run(f"ip -d link show {VPN_IFACE}", check=False).stdout
    lab.timings["nmcli connection down -> interface gone"] = gone
    assert wait_until(lambda: not plugin_pids(lab), 30) is not None, "the plugin did not leave"
    assert hex(SPI_OUT)[2:] not in lab.run("ip xfrm state", check=False).stdout  # its SAs went with it
    assert not vpn_active(lab)


def test_killed_plugin_releases_the_interface(lab):
    vpn_up(lab)
    (pid,) = plugin_pids(lab)
    lab.run(f"kill -KILL {pid}")
    gone = wait_until(lambda: not iface_present(lab), 60)
    assert gone is not None, "xfrmid kept the interface of a killed plugin"
    lab.timings["plugin killed -> interface gone"] = gone
    assert wait_until(lambda: not vpn_active(lab), 60) is not None, "NetworkManager still shows the VPN active"
    assert not lab.missing_xfrmid_objects() and not lab.missing_manager_objects()
