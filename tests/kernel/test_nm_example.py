"""examples/nm-vpn-interface.py (NetworkManager VPN plugin): Attach bound to the caller, TUNDEV for NM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from .bus_fixtures import TOP, link_present, private_bus, wait_for, xfrmid  # noqa: F401  (fixtures)
from .conftest import link_json

pytestmark = pytest.mark.kernel

UUID = "6e1cc1a5-3c35-4bdf-9f62-6a6a8e4a1d11"


def start(address: str, name: str) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, str(TOP / "examples" / "nm-vpn-interface.py"), "--bus", address, "--name", name,
         "--gateway", "192.1.2.23", UUID],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=TOP,
        env={"PYTHONPATH": str(TOP), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def test_plugin_gets_tundev_and_a_crash_releases_it(xfrmid):
    name = "ipsec4301"
    proc, said = start(xfrmid.address, name)
    try:
        assert said["SetConfig"]["tundev"] == name and said["SetConfig"]["gateway"] == "192.1.2.23"
        assert said["ike"] == {"if_id": 4301, "mark": 4301, "mask": 0xFFFFFFFF}
        assert int(link_json(name)["linkinfo"]["info_data"]["if_id"], 0) == 4301  # ip -j prints it in hex
        assert "UP" in link_json(name)["flags"]  # NM configures an up device
    finally:
        proc.send_signal(signal.SIGKILL)  # the plugin dies without a Detach
        proc.wait()
    # bind_to_caller: the daemon sees the bus connection go and drops the reference
    assert wait_for(lambda: not link_present(name), timeout=60)


def test_disconnect_detaches(xfrmid):
    name = "ipsec4302"
    proc, _ = start(xfrmid.address, name)
    assert link_present(name)
    proc.stdin.close()  # Disconnect
    assert proc.wait(120) == 0, proc.stderr.read()
    assert not link_present(name)
