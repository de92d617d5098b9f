"""Pure parts of the D-Bus edge: option validation, object paths, error mapping, access rule."""

import logging

import pytest
from dbus_fast import Message, Variant
from hypothesis import given
from hypothesis import strategies as st

from xfrmid import errors
from xfrmid.bus import names
from xfrmid.bus.access import may_modify
from xfrmid.bus.errormap import error_for, error_reply
from xfrmid.bus.options import OPTIONS, parse_options


def test_known_options_are_converted():
    got = parse_options(
        "CreateInterface",
        {"mtu": Variant("u", 1400), "addresses": Variant("as", ["10.0.0.1/24"]), "netns": Variant("s", "blue")},
    )
    assert got == {"mtu": 1400, "addresses": ("10.0.0.1/24",), "netns": "blue"}


def test_unknown_option_names_the_key():
    with pytest.raises(errors.InvalidArgument, match="'colour'.*Attach"):
        parse_options("Attach", {"colour": Variant("s", "red")})


def test_wrong_variant_type_names_key_and_types():
    with pytest.raises(errors.InvalidArgument, match="'mtu'.*'u'.*'s'"):
        parse_options("CreateInterface", {"mtu": Variant("s", "1400")})


def test_methods_without_options_reject_any():
    with pytest.raises(errors.InvalidArgument, match="none"):
        parse_options("ListInterfaces", {"netns": Variant("s", "x")})


def test_every_naming_method_accepts_netns():
    for method, keys in OPTIONS.items():
        assert keys["netns"] == "s", method


def test_route_options_match_contract():
    assert OPTIONS["AddRoute"] == {"netns": "s", "table": "u", "src": "s", "metric": "u", "peer": "s"}
    assert OPTIONS["Attach"] == {"netns": "s", "bind_to_caller": "b"}
    assert OPTIONS["DeleteInterface"] == {"netns": "s", "force": "b"}


@pytest.mark.parametrize(
    "text,label",
    [("ipsec1", "ipsec1"), ("", "_"), ("1a", "_31a"), ("a-b.c", "a_2db_2ec"), ("é", "_c3_a9"), ("a_b", "a_5fb")],
)
def test_escape_like_systemd(text, label):
    assert names.escape_label(text) == label
    assert names.unescape_label(label) == text


@given(st.text(min_size=0, max_size=30))
def test_escape_roundtrip_and_valid_element(text):
    label = names.escape_label(text)
    assert label and all(c.isascii() and (c.isalnum() or c == "_") for c in label)
    assert names.unescape_label(label) == text


def test_interface_paths_are_distinct_per_namespace():
    assert names.interface_path("ipsec1") == "/org/xfrmid1/interface/ipsec1"
    assert names.interface_path("ipsec1", "") == "/org/xfrmid1/interface/ipsec1"
    ns = names.interface_path("ipsec1", "blue-1")
    assert ns == "/org/xfrmid1/netns/blue_2d1/interface/ipsec1"
    assert names.parse_interface_path(ns) == ("blue-1", "ipsec1")
    assert names.parse_interface_path("/org/xfrmid1/interface/ipsec1") == ("", "ipsec1")
    with pytest.raises(ValueError):
        names.parse_interface_path("/org/xfrmid1/other/x")


@pytest.mark.parametrize("cls", errors.ALL_ERRORS)
def test_typed_errors_keep_name_and_sentence(cls):
    assert error_for(cls("Interface 'x' is odd."), "Attach") == (cls.dbus_name, "Interface 'x' is odd.")


def test_unexpected_error_is_generic_failed_and_logged(caplog):
    with caplog.at_level(logging.ERROR, logger="xfrmid.bus"):
        name, text = error_for(KeyError("secret internals"), "AddRoute")
    assert name == "org.xfrmid1.Error.Failed"
    assert "secret" not in text and "Traceback" not in text and "AddRoute" in text
    assert "secret internals" in caplog.text  # the traceback is in the log


def test_error_reply_message():
    call = Message(destination="org.xfrmid1", path="/org/xfrmid1", interface="org.xfrmid1.Manager",
                   member="Detach", serial=7, sender=":1.9")
    reply = error_reply(call, errors.NotFound("Interface 'ipsec9' is not managed."))
    assert reply.error_name == "org.xfrmid1.Error.NotFound"
    assert reply.body == ["Interface 'ipsec9' is not managed."]
    assert reply.reply_serial == 7


def test_access_rule():
    assert may_modify(0, set(), None)
    assert may_modify(1000, {990}, 990)
    assert not may_modify(1000, {100}, 990)
    assert not may_modify(65534, set(), None)


def test_from_dbus_name_roundtrip():
    for cls in errors.ALL_ERRORS:
        assert type(errors.from_dbus_name(cls.dbus_name, "m")) is cls
