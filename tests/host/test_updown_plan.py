"""xfrmid-updown's translation of pluto's environment (pure; the kernel test compares with _updown.xfrm)."""

import pytest

from xfrmid.errors import InvalidArgument
from xfrmid.integrations.updown_plan import destination, plan, split_verb

BASE = {
    "PLUTO_CONNECTION": "west", "PLUTO_VIRT_INTERFACE": "ipsec7", "PLUTO_XFRMI_ROUTE": "yes",
    "PLUTO_MY_CLIENT": "192.0.1.0/24", "PLUTO_PEER_CLIENT": "192.0.2.0/24", "PLUTO_PEER": "192.1.2.23",
}


def steps(verb, **env):
    return [(s.method, s.args, s.options, s.unless_local) for s in plan({**BASE, "PLUTO_VERB": verb, **env}).steps]


def test_route_attaches_then_routes():
    assert steps("route-client") == [
        ("attach", ("ipsec7", "west"), {}, False),
        ("add_route", ("ipsec7", "west", "192.0.2.0/24"), {}, False),
    ]


def test_source_ip_comes_before_the_route_and_only_when_not_local():
    got = steps("up-client", PLUTO_MY_SOURCEIP="192.0.1.254", INTERFACE_IP="198.51.100.1/30", PLUTO_METRIC="5")
    assert got[1] == ("add_address", ("ipsec7", "west", "198.51.100.1/30"), {}, False)
    assert got[2] == ("add_address", ("ipsec7", "west", "192.0.1.254/32"), {}, True)
    assert got[3] == ("add_route", ("ipsec7", "west", "192.0.2.0/24"), {"src": "192.0.1.254", "metric": 5}, False)


def test_fwmark_means_the_peer_pattern():
    p = plan({**BASE, "PLUTO_VERB": "route-client", "PLUTO_PEER_CLIENT": "0.0.0.0/0", "PLUTO_XFRMI_FWMARK": "7/0xffffffff"})
    assert p.steps[-1].options == {"peer": "192.1.2.23"} and p.steps[-1].args[2] == "0.0.0.0/0"


@pytest.mark.parametrize("name,if_id", [("ipsec7", 7), ("ipsec0", 16384), ("ipsec16383", 16383)])
def test_plutos_if_id_comes_from_the_interface_name(name, if_id):
    """pluto names the device ipsec<N> for ipsec-interface=N and puts if_id N on the SAs (ipsec0:
    16384), with or without a user's own mark= in PLUTO_XFRMI_FWMARK."""
    for fwmark in ("", f"{if_id}/0xffffffff", "9/0xff"):
        p = plan({**BASE, "PLUTO_VERB": "up-client", "PLUTO_VIRT_INTERFACE": name, "PLUTO_XFRMI_FWMARK": fwmark})
        assert p.pluto_if_id == if_id


@pytest.mark.parametrize("verb", ["unroute-client", "unroute-host", "unroute-client-v6"])
def test_unroute_detaches(verb):
    assert steps(verb) == [("detach", ("ipsec7", "west"), {}, False)]


@pytest.mark.parametrize("verb", ["down-client", "down-host-v6", "prepare-client", "prepare-host"])
def test_down_and_prepare_leave_everything(verb):
    """down: the SA went but the connection stays routed until unroute, so its route stays and
    its traffic waits for the next SA; prepare always comes right before route."""
    assert steps(verb) == []


def test_libreswan_routes_for_the_default():
    assert destination("::/0") == "2000::/3"
    assert destination("0.0.0.0/0") == "0.0.0.0/0"  # xfrmid splits it into libreswan's two halves
    assert steps("route-client", PLUTO_MY_CLIENT="192.0.2.0/24")[1:] == []  # same subnets: no route


def test_without_ipsec_interface_nothing_happens():
    p = plan({**BASE, "PLUTO_VERB": "up-client", "PLUTO_VIRT_INTERFACE": "NULL", "PLUTO_XFRMI_ROUTE": ""})
    assert p.steps == () and "no ipsec-interface" in p.notes[0]
    assert plan({**BASE, "PLUTO_VERB": "prepare-client"}).steps == ()


@pytest.mark.parametrize("env", [{"PLUTO_VERB": "sideways-client"}, {"PLUTO_VERB": ""},
                                 {"PLUTO_VERB": "up-client", "PLUTO_CONNECTION": ""},
                                 {"PLUTO_VERB": "up-client", "PLUTO_MY_SOURCEIP": "nope"}])
def test_bad_environment_is_one_sentence(env):
    with pytest.raises(InvalidArgument) as err:
        plan({**BASE, **env})
    assert str(err.value).endswith((".", "?"))


def test_split_verb():
    assert split_verb("up-client-v6") == ("up", "client")


def test_man_page_renders_cleanly_and_names_every_option():
    import os
    import subprocess
    from pathlib import Path

    from xfrmid.integrations.updown import build_parser

    page = Path(__file__).resolve().parents[2] / "man" / "xfrmid-updown.8"
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    text = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env=env, check=True).stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    lint = subprocess.run(["mandoc", "-T", "lint", "-W", "all", str(page)], capture_output=True, text=True)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, "")
    groff = subprocess.run(["groff", "-ww", "-z", "-man", str(page)], capture_output=True, text=True)
    assert (groff.returncode, groff.stderr) == (0, "")
    shown = {o for a in build_parser()._actions if a.help != "==SUPPRESS==" for o in a.option_strings}
    assert all(o in text for o in shown if o.startswith("--"))
