"""``xfrmid --version`` and the manager's Version property name the libraries in use."""

from __future__ import annotations

import subprocess
import sys

from dbus_fast.__version__ import __version__ as dbus_fast_version
from pyroute2.config.version import __version__ as pyroute2_version

from xfrmid import __version__
from xfrmid.version import full_version


def test_the_version_names_the_pyroute2_and_dbus_fast_that_are_imported():
    assert full_version() == f"{__version__} (pyroute2 {pyroute2_version}, dbus-fast {dbus_fast_version})"


def test_xfrmid_version_prints_it():
    done = subprocess.run([sys.executable, "-c", "from xfrmid.daemon import main; main(['--version'])"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"xfrmid {full_version()}\n", done


def test_the_version_property_is_it():
    from xfrmid.bus.objects import ManagerInterface

    getter = ManagerInterface.Version
    prop = getattr(getter, "fget", getter)
    assert prop(object()) == full_version()
