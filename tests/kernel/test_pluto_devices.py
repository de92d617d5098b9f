"""Who owns the ipsec device, with real pluto: libreswan 4's own device management,
5.x's ``ipsec-interface-managed=no``, pluto shutting down, and an if_id mismatch.

- libreswan 4.10 creates ``ipsecN`` itself when it installs a connection's first
  SA (before any updown verb) and deletes it with its last connection, and at
  shutdown; an interface that already exists with if_id N it uses and leaves.
  The recommended set-up declares it in xfrmid.conf, so it is xfrmid's from the
  start. pluto 4.10 also refuses every ``ipsec-interface=`` when ``ipsec1``
  exists as it loads its first such connection.
- libreswan 5.4 with ``ipsec-interface-managed=no`` never touches the device:
  the one xfrmid made for the helper is xfrmid's (Owned) and outlives pluto
  while someone else holds it.
- When pluto 4 deletes an interface another xfrmid owner still holds, xfrmid
  makes it again, its own now, with that owner's routes.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from .bus_fixtures import wait_for
from .conftest import add_netns, del_netns, ip, ip_run, new_netns_name
from .pluto_fixtures import (PLUTO_CHILD_CAPS, Side, call, debian_libreswan, interfaces, new_pluto,  # noqa: F401
                             pair, pluto_pair, pluto_xfrmid)
from .pluto_traffic import link_present, record, traffic

pytestmark = pytest.mark.kernel

CAPS = {"net_admin": 12, "net_raw": 13, "dac_read_search": 2, "setpcap": 8}


def ifindex(netns: str, name: str) -> int:
    return ip("link", "show", "dev", name, netns=netns)[0]["ifindex"]


def subnet_conn(pair, name: str, number: int) -> str:
    return pair.conn(name, ipsec_interface=number, left_subnet="192.0.1.0/24", right_subnet="192.0.2.0/24",
                     left_source="192.0.1.254", right_source="192.0.2.254")


def test_updown_runs_with_the_capabilities_the_helper_is_tested_with(pair):
    want = sum(1 << CAPS[c] for c in PLUTO_CHILD_CAPS[pair.libreswan.major])
    for pluto in pair.plutos():
        assert pluto.capability_bounding_set() == want, hex(pluto.capability_bounding_set())


def test_pluto_shutdown_leaves_what_another_owner_holds(pair, pluto_xfrmid):
    """A connection on ipsec1 (libreswan 4 deletes ipsec1 at shutdown whoever made it) while
    another program holds west's ipsec1 too; then both plutos shut down."""
    w, e = pair.sites.west, pair.sites.east
    pair.up("keep1", subnet_conn(pair, "keep1", 1))
    try:
        traffic(pair, "subnet keep1 on ipsec1 before pluto's shutdown", "192.0.1.254", "192.0.2.254",
                "ipsec1", "ipsec1")
        call(pluto_xfrmid.address, lambda c: c.attach("ipsec1", "keeper", netns=w.netns))
        call(pluto_xfrmid.address, lambda c: c.add_route("ipsec1", "keeper", "198.18.0.0/24", netns=w.netns))
        before = interfaces(pluto_xfrmid.address, w.netns)["ipsec1"]
        index = ifindex(w.netns, "ipsec1")
        mark = pair.west.log_mark()
        pair.stop()
        log = pair.west.log(mark)
        if pair.libreswan.major >= 5:
            # unmanaged: pluto never touched the device; it is the same link, xfrmid's own
            assert before["Owned"]
            assert "delete ipsec-interface" not in log
            assert ifindex(w.netns, "ipsec1") == index
        else:
            # pluto made it and deleted it; xfrmid made it again for the owner left, as its own
            assert not before["Owned"]
            assert "delete ipsec-interface=ipsec1 if_id=1 added by pluto" in log, log[-3000:]
            assert wait_for(lambda: link_present(w.netns, "ipsec1"), 120)
            assert ifindex(w.netns, "ipsec1") != index
        after = interfaces(pluto_xfrmid.address, w.netns)["ipsec1"]
        assert after["Owned"] and after["Owners"] == ["keeper"], after
        assert [r[0] for r in after["Routes"]] == ["198.18.0.0/24"], after
        shown = subprocess.run(["ip", "-n", w.netns, "route"], capture_output=True, text=True).stdout
        assert "198.18.0.0/24 dev ipsec1" in shown and "192.0.2.0/24" not in shown, shown
        assert wait_for(lambda: not link_present(e.netns, "ipsec1"), 120)  # nobody else held east's
        assert interfaces(pluto_xfrmid.address, e.netns) == {}
        record(pair.libreswan.version, "pluto shutdown with another owner on ipsec1",
               west_ipsec1_before={"Owned": before["Owned"], "ifindex": index},
               west_ipsec1_after={"Owned": after["Owned"], "ifindex": ifindex(w.netns, "ipsec1"),
                                  "Owners": after["Owners"]})
        assert call(pluto_xfrmid.address, lambda c: c.detach("ipsec1", "keeper", netns=w.netns))
        assert not link_present(w.netns, "ipsec1")
    finally:
        # a pluto 4 that finds ipsec1 when it loads its first connection refuses them all
        call(pluto_xfrmid.address, lambda c: c.detach("ipsec1", "keeper", netns=w.netns))
        if "keep1" in pair.west.conns and pair.west.process.poll() is None:
            pair.delete("keep1")


@pytest.mark.parametrize("pluto_pair", ["4.10"], indirect=True)
def test_libreswan4_uses_an_interface_xfrmid_declared(pair, pluto_xfrmid):
    """The recommended set-up for libreswan 4: ipsecN (N >= 2) in xfrmid.conf. pluto finds
    the device with its if_id and uses it; it does not delete it with the connection."""
    w, e = pair.sites.west, pair.sites.east
    pluto_xfrmid.configure("".join(f'[[interface]]\nname = "ipsec2"\nnetns = "{s.netns}"\n\n' for s in (w, e)))
    try:
        for side in (w, e):
            assert wait_link_owned(pluto_xfrmid.address, side.netns, "ipsec2")
        index = {side.netns: ifindex(side.netns, "ipsec2") for side in (w, e)}
        pair.up("static2", subnet_conn(pair, "static2", 2))
        traffic(pair, "subnet static2 on ipsec2 declared in xfrmid.conf", "192.0.1.254", "192.0.2.254",
                "ipsec2", "ipsec2")
        for side in (w, e):
            have = interfaces(pluto_xfrmid.address, side.netns)["ipsec2"]
            assert have["Owned"] and have["Owners"] == ["static2"], have
        marks = [pluto.log_mark() for pluto in pair.plutos()]
        pair.delete("static2")
        for pluto, mark in zip(pair.plutos(), marks):
            assert "cannot delete ipsec-interface=ipsec2 if_id=2, not created by pluto" in pluto.log(mark)
        for side in (w, e):
            assert ifindex(side.netns, "ipsec2") == index[side.netns]
            assert interfaces(pluto_xfrmid.address, side.netns)["ipsec2"]["Owners"] == []
    finally:
        pluto_xfrmid.configure("")
    for side in (w, e):
        assert wait_for(lambda: not link_present(side.netns, "ipsec2"), 120)


def wait_link_owned(address: str, netns: str, name: str) -> bool:
    return wait_for(lambda: interfaces(address, netns).get(name, {}).get("Owned") is True, 120, 0.5)


def test_libreswan4_refuses_ipsec_interfaces_while_ipsec1_exists(pluto_xfrmid):
    """Why the recommended set-up avoids ipsec1 with libreswan 4: a pluto 4.10 that finds ipsec1
    when it loads its first connection with ipsec-interface= takes it for a leftover and refuses
    every such connection (kernel_xfrm_interface.c, xfrm_iface_supported())."""
    netns = new_netns_name("p1")
    add_netns(netns)
    root = Path(tempfile.mkdtemp(prefix="xfrmid-pluto-ipsec1-"))
    side = Side("west", netns, "192.1.2.45", "2001:db8:1:2::45", "192.1.2.254", "2001:db8:1:2::254")
    ip_run("link", "add", "eth0", "type", "dummy", netns=netns)
    ip_run("addr", "add", "192.1.2.45/24", "dev", "eth0", netns=netns)
    ip_run("link", "set", "eth0", "up", netns=netns)
    pluto = new_pluto(side, debian_libreswan(), root)
    try:
        call(pluto_xfrmid.address, lambda c: c.create_interface("ipsec1", netns=netns))
        pluto.start()
        pluto.conns["later3"] = ("conn later3\n\tleft=192.1.2.45\n\tright=192.1.3.23\n\tleftsubnet=192.0.1.0/24\n"
                                 "\trightsubnet=192.0.2.0/24\n\tipsec-interface=3\n\tauto=add\n\n")
        pluto.write_config()
        proc = subprocess.run(["ip", "netns", "exec", netns, pluto.libreswan.program("addconn"), "--config",
                               str(pluto.config), "--ctlsocket", str(pluto.run_dir / "pluto.ctl"), "later3"],
                              capture_output=True, text=True, timeout=300)
        answer = proc.stdout + proc.stderr + pluto.log()
        assert "ipsec-interface=3 not supported" in answer and "conflict ipsec1 already exist" in answer, answer[-3000:]
    finally:
        pluto.shutdown()
        call(pluto_xfrmid.address, lambda c: c.delete_interface("ipsec1", netns=netns))
        del_netns(netns)


@pytest.mark.parametrize("pluto_pair", ["5.4"], indirect=True)
def test_an_interface_with_another_if_id_is_one_clear_error(pair, pluto_xfrmid):
    """ipsec-interface=7 while west's ipsec7 is someone else's with if_id 70: pluto's SAs
    (if_id 7) would never reach it. The helper's route fails with one sentence, pluto reports
    it, and neither the foreign device nor anything of xfrmid's is left changed."""
    w, e = pair.sites.west, pair.sites.east
    ip_run("link", "add", "ipsec7", "type", "xfrm", "if_id", "70", netns=w.netns)
    index = ifindex(w.netns, "ipsec7")
    text = subnet_conn(pair, "wrong7", 7)
    mark = pair.west.log_mark()
    try:
        pair.east.add("wrong7", text)
        pair.west.add("wrong7", text)
        # asynchronous: pluto keeps reviving a connection it was asked to bring up
        pair.west.whack("--initiate", "--asynchronous", "--name", "wrong7")
        assert wait_for(lambda: "xfrmid-updown:" in pair.west.log(mark), 600), pair.west.log(mark)[-4000:]
        log = pair.west.log(mark)
        errors = [line for line in log.splitlines() if "xfrmid-updown:" in line]
        assert len(errors) >= 1 and all(e.endswith("exists with if_id 70, but its name implies if_id 7.")
                                        for e in errors), errors
        assert "Traceback" not in log
        assert "established Child SA" not in log
        assert "ipsec7" not in interfaces(pluto_xfrmid.address, w.netns)
        record("5.4", "ipsec-interface=7 against a foreign ipsec7 with if_id 70", pluto_log=errors[0].strip())
    finally:
        pair.delete("wrong7")
    assert ifindex(w.netns, "ipsec7") == index
    assert int(ip("-d", "link", "show", "dev", "ipsec7", netns=w.netns)[0]["linkinfo"]["info_data"]["if_id"], 0) == 70
    ip_run("link", "del", "ipsec7", netns=w.netns)
    assert wait_for(lambda: "ipsec7" not in interfaces(pluto_xfrmid.address, e.netns), 120)
    assert not link_present(e.netns, "ipsec7")
