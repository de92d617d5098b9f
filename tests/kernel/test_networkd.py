"""xfrmid beside Debian's systemd-networkd, both for real under systemd (nspawn).

networkd manages the container's uplink (an address, a route, a route in
table 100 and a policy rule of its own); xfrmid, the shipped unit, holds
ipsec7 with an address, a route and the peer pattern (a table-50 route and a
policy rule). Every action of networkd must leave xfrmid's objects alone, or
xfrmid must put them back within 2 s, and xfrmid must never touch networkd's.

What networkd 252 does to objects it did not make (src/network/, read for
this): whenever it configures a link it removes *every* routing policy rule
whose protocol is not ``kernel`` (``ManageForeignRoutingPolicyRules=yes``),
and the addresses and routes on that link it did not make. At start-up the
rules are often enumerated only after the first link is configured, so a
start may or may not take them; ``networkctl reconfigure`` always does. The
shipped files: networkd.conf.d/xfrmid.conf (``ManageForeignRoutingPolicyRules=no``:
networkd has no narrower setting) and 05-xfrmid.network (``Kind=xfrm``,
``Unmanaged=yes``: a catch-all .network such as ``Name=*`` would otherwise
manage xfrmid's interfaces and strip them). The tests run in file order and
each states what the previous ones left.
"""

from __future__ import annotations

import pytest

from .netmgr_lab import (
    GATEWAY, IFACE, LOCAL, MANAGER_ROUTE, MANAGER_RULE_PRIO, MANAGER_TABLE, MANAGER_TABLE_ROUTE,
    UPLINK, Lab,
)
from .nspawn import TOP, install, write

UPLINK_NETWORK = f"""[Match]
Name={UPLINK}

[Network]
Address={LOCAL}/24
LinkLocalAddressing=no
IPv6AcceptRA=no

[Route]
Destination={MANAGER_ROUTE}
Gateway={GATEWAY}

[Route]
Destination={MANAGER_TABLE_ROUTE}
Gateway={GATEWAY}
Table={MANAGER_TABLE}

[RoutingPolicyRule]
To={MANAGER_TABLE_ROUTE}
Table={MANAGER_TABLE}
Priority={MANAGER_RULE_PRIO}
"""
# An administrator's catch-all, as many hosts have (Name=* with DHCP, say):
# without 05-xfrmid.network it matches xfrmid's interfaces too.
CATCH_ALL = "[Match]\nName=*\nType=!loopback\n\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
DROPIN_CONF = "/usr/lib/systemd/networkd.conf.d/xfrmid.conf"
DROPIN_NETWORK = "/usr/lib/systemd/network/05-xfrmid.network"
WAIT_ONLINE = f"/lib/systemd/systemd-networkd-wait-online -i {UPLINK} --timeout=300"
RECONFIGURE_ALL = "networkctl reconfigure $(networkctl list --no-legend | awk '{print $2}')"
RESTART = f"systemctl restart systemd-networkd.service && {WAIT_ONLINE}"


@pytest.fixture(scope="module")
def lab():
    lab = Lab("systemd-networkd.service", "networkd")
    try:
        made = lab.prepare()
        write(made.root, "/etc/systemd/network/10-uplink.network", UPLINK_NETWORK)
        lab.start()
        yield lab
    finally:
        lab.close()


def setup_state(lab: Lab, link: str) -> str:
    return lab.run(f"networkctl list --no-legend {link} | awk '{{print $5}}'").stdout.strip()


def test_start_leaves_xfrmid_objects_or_they_come_back(lab):
    outcome = lab.act("start", f"systemctl start systemd-networkd.service && {WAIT_ONLINE}")
    lab.expect_repaired(outcome)
    assert setup_state(lab, UPLINK) == "configured"
    assert setup_state(lab, IFACE) == "unmanaged"  # no .network matches it


def test_reload_leaves_xfrmid_objects(lab):
    lab.expect_repaired(lab.act("networkctl reload", "networkctl reload"))


def test_reconfigure_of_every_link_takes_the_rule_and_xfrmid_puts_it_back(lab):
    outcome = lab.act("networkctl reconfigure (every link)", RECONFIGURE_ALL)
    lab.expect_repaired(outcome)
    # networkd removes every rule it did not make: that is why the drop-in exists
    assert [loss.key for loss in outcome.losses] and all(loss.key.startswith("rule ") for loss in outcome.losses), \
        outcome.summary()


def test_restart_leaves_xfrmid_objects_or_they_come_back(lab):
    lab.expect_repaired(lab.act("restart", RESTART))


def test_rules_setting_is_needed_and_enough(lab):
    needed = lab.act(f"networkctl reconfigure {UPLINK} (without {DROPIN_CONF})", f"networkctl reconfigure {UPLINK}")
    lab.expect_repaired(needed)
    assert needed.lost("rule"), f"networkd left xfrmid's rule alone: {needed.summary()}"
    install(lab.made.root, TOP / "packaging/systemd-networkd/networkd.conf.d/xfrmid.conf", DROPIN_CONF)
    lab.expect_repaired(lab.act(f"restart (with {DROPIN_CONF})", RESTART))
    lab.expect_untouched(lab.act(f"networkctl reconfigure {UPLINK} (with {DROPIN_CONF})",
                                 f"networkctl reconfigure {UPLINK}"))


def test_catch_all_network_strips_xfrmid_interface_without_the_network_file(lab):
    write(lab.made.root, "/etc/systemd/network/99-catch-all.network", CATCH_ALL)
    outcome = lab.act("networkctl reload (a catch-all .network, no 05-xfrmid.network)", "networkctl reload")
    lab.expect_repaired(outcome)
    assert setup_state(lab, IFACE) in ("configuring", "configured")
    lost = {loss.key.split(" ")[0] for loss in outcome.losses}
    assert {"addr", "route"} <= lost, outcome.summary()
    lab.expect_repaired(lab.act("networkctl reconfigure (every link; catch-all)", RECONFIGURE_ALL))


def test_no_fight_over_a_minute_while_networkd_manages_the_interface(lab):
    lab.expect_no_fight("networkd manages ipsec7: catch-all, no 05-xfrmid.network")


def test_shipped_network_file_is_enough(lab):
    install(lab.made.root, TOP / "packaging/systemd-networkd/05-xfrmid.network", DROPIN_NETWORK)
    reload = lab.act(f"networkctl reload (with {DROPIN_NETWORK})", "networkctl reload")
    lab.expect_repaired(reload)
    assert setup_state(lab, IFACE) == "unmanaged"
    for action, script in (("networkctl reconfigure (every link; shipped files)", RECONFIGURE_ALL),
                           ("restart (shipped files)", RESTART),
                           ("networkctl reload (shipped files)", "networkctl reload")):
        lab.expect_untouched(lab.act(action, script))
    assert setup_state(lab, IFACE) == "unmanaged"
