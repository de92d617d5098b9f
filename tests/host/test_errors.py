"""The error tree: one class per D-Bus error name, and back again."""

from __future__ import annotations

import inspect
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfrmid import errors
from xfrmid.errors import (
    ALL_ERRORS,
    BY_DBUS_NAME,
    DBUS_PREFIX,
    AccessDenied,
    Failed,
    XfrmidError,
    from_dbus_name,
    show,
)

FAST = settings(max_examples=200, deadline=None)

# The names of /work/shared/dbus-contract.md ("Errors").
CONTRACT_NAMES = {
    "InvalidArgument": "org.xfrmid1.Error.InvalidArgument",
    "NotFound": "org.xfrmid1.Error.NotFound",
    "Conflict": "org.xfrmid1.Error.Conflict",
    "Busy": "org.xfrmid1.Error.Busy",
    "NotOwned": "org.xfrmid1.Error.NotOwned",
    "KernelUnsupported": "org.xfrmid1.Error.KernelUnsupported",
    "Failed": "org.xfrmid1.Error.Failed",
    "AccessDenied": "org.freedesktop.DBus.Error.AccessDenied",
}


def test_every_error_class_is_in_the_tree():
    defined = {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, XfrmidError) and obj is not XfrmidError
    }
    assert defined == set(ALL_ERRORS)
    assert len(ALL_ERRORS) == len(set(ALL_ERRORS))


def test_dbus_names_match_the_contract():
    assert {cls.__name__: cls.dbus_name for cls in ALL_ERRORS} == CONTRACT_NAMES


def test_dbus_names_are_distinct_and_in_the_right_namespace():
    names = [cls.dbus_name for cls in ALL_ERRORS]
    assert len(set(names)) == len(names)
    for cls in ALL_ERRORS:
        if cls is AccessDenied:
            assert cls.dbus_name == "org.freedesktop.DBus.Error.AccessDenied"
        else:
            assert cls.dbus_name == DBUS_PREFIX + cls.__name__
    assert DBUS_PREFIX == "org.xfrmid1.Error."


def test_base_class_maps_to_failed():
    assert XfrmidError.dbus_name == Failed.dbus_name
    assert BY_DBUS_NAME[XfrmidError.dbus_name] is Failed


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_errors_are_exceptions_with_their_message(cls):
    error = cls("Interface 'ipsec1' is busy.")
    assert isinstance(error, XfrmidError) and isinstance(error, Exception)
    assert str(error) == error.message == "Interface 'ipsec1' is busy."
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and copy.message == error.message


@FAST
@given(cls=st.sampled_from(ALL_ERRORS), message=st.text())
def test_from_dbus_name_round_trip(cls, message):
    error = from_dbus_name(cls.dbus_name, message)
    assert type(error) is cls
    assert error.message == message and str(error) == message
    assert from_dbus_name(error.dbus_name, str(error)).__class__ is cls


@FAST
@given(name=st.one_of(st.text(), st.sampled_from(["", "org.xfrmid1.Error.", "org.xfrmid1.Error.Nope",
                                                   "org.freedesktop.DBus.Error.Failed",
                                                   "org.xfrmid1.error.NotFound"])),
       message=st.text())
def test_unknown_dbus_names_become_failed(name, message):
    if name in BY_DBUS_NAME:
        return
    error = from_dbus_name(name, message)
    assert type(error) is Failed and error.message == message


@pytest.mark.parametrize("name", [None, 3, b"org.xfrmid1.Error.NotFound", ["x"]])
def test_non_text_dbus_names_become_failed(name):
    assert type(from_dbus_name(name, "Something failed.")) is Failed


class _BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


@FAST
@given(st.one_of(st.integers(), st.text(), st.floats(), st.binary(), st.none(), st.booleans(),
                 st.lists(st.integers(), max_size=3)))
def test_show_is_repr_for_ordinary_values(value):
    assert show(value) == repr(value)


def test_show_never_raises():
    huge = 10**5000  # repr() refuses ints this long
    assert show(huge) == hex(huge)
    assert show(-huge) == hex(-huge)
    assert show(_BadRepr()) == "<_BadRepr object>"
