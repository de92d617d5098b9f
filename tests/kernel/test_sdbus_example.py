"""examples/sdbus-attach.c (pluto tomorrow): built with gcc, its sd-bus Attach against the real daemon."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from .bus_fixtures import TOP, link_present, private_bus, xfrmid  # noqa: F401  (fixtures)
from .conftest import link_json

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    out = tmp_path_factory.mktemp("sdbus") / "sdbus-attach"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libsystemd"],
                           capture_output=True, text=True, check=True).stdout
    build = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                            str(TOP / "examples" / "sdbus-attach.c"), *shlex.split(flags)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return out


def run(program, address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), "--address", address, *args], capture_output=True, text=True, timeout=60)


def test_attach_returns_the_if_id_and_detach_deletes(program, xfrmid):
    name = "ipsec4201"
    first = run(program, xfrmid.address, name, "sdbus-conn")
    assert first.returncode == 0, first.stderr
    fields = dict(kv.split("=", 1) for kv in first.stdout.split())
    assert fields["if_id"] == "4201"
    assert (fields["mark"], fields["mask"]) == ("0x1069", "0xffffffff")  # mark = if_id under the default mask
    assert fields["path"] == f"/org/xfrmid1/interface/{name}"
    assert int(link_json(name)["linkinfo"]["info_data"]["if_id"], 0) == 4201  # ip -j prints it in hex

    # the reference outlives the C program's bus connection (bind_to_caller false)
    again = run(program, xfrmid.address, name, "sdbus-conn")
    assert again.stdout == first.stdout and link_present(name)

    gone = run(program, xfrmid.address, "--detach", name, "sdbus-conn")
    assert (gone.returncode, gone.stdout.strip()) == (0, "detached deleted=yes")
    assert not link_present(name)


def test_an_error_reaches_c_as_its_dbus_name(program, xfrmid):
    bad = run(program, xfrmid.address, "ipsec 1", "sdbus-conn")
    assert bad.returncode == 1
    assert bad.stderr.startswith("org.xfrmid1.Error.InvalidArgument: ")
    assert "ipsec 1" in bad.stderr and "Traceback" not in bad.stderr
