"""The systemd unit and the files around it: verify, security score, D-Bus
activation, sysusers, modules-load.d, and proof that the capability set is
both necessary and sufficient."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
UNIT = TOP / "systemd" / "xfrmid.service"
NETWORKD = Path("/lib/systemd/system/systemd-networkd.service")
BIN = Path(sys.executable).parent  # the venv's console scripts (pip install -e)


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed; run 'make deps'")
    return path


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")]


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.fixture(scope="module")
def manpath(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("man")
    for page in (TOP / "man").iterdir():
        section = root / f"man{page.suffix[1:]}"
        section.mkdir(exist_ok=True)
        shutil.copy(page, section / page.name)
    return root


def test_verify_is_clean(tmp_path, manpath):
    # /usr/bin/xfrmid exists only once the package is installed, so verify a
    # copy whose ExecStart names the console script pip installed from this
    # tree (same entry point), with the man pages of Documentation= on MANPATH.
    script = BIN / "xfrmid"
    assert script.exists(), "the xfrmid console script is missing: pip install -e ."
    copy = tmp_path / "xfrmid.service"
    # quoted: a checkout's path may hold a space
    copy.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/xfrmid", f'ExecStart="{script}"'))
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(copy)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "MANPATH": str(manpath)},
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_broken_unit(tmp_path, manpath):
    # The check above would be worthless if verify were always quiet.
    copy = tmp_path / "xfrmid.service"
    copy.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(copy)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "MANPATH": str(manpath)},
    )
    assert result.returncode != 0 or "notifyy" in result.stderr


def test_security_score_beats_networkd():
    ours = exposure(UNIT)
    assert ours < 2.8
    if NETWORKD.exists():
        assert ours < exposure(NETWORKD)


def test_documented_score_is_the_measured_one():
    page = (TOP / "man" / "xfrmid.8").read_text()
    assert f"rates its exposure {exposure(UNIT)}" in page
    assert f"**{exposure(UNIT)}**, against 2.8" in (TOP / "README.md").read_text()


def test_service_basics():
    assert unit_values("Type") == ["notify"]
    assert unit_values("BusName") == ["org.xfrmid1"]
    assert unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert unit_values("Restart") == ["on-failure"]
    assert unit_values("RuntimeDirectory") == ["xfrmid"]
    assert unit_values("RuntimeDirectoryPreserve") == ["yes"]
    assert unit_values("WatchdogSec")
    assert set(unit_values("CapabilityBoundingSet")[0].split()) == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
    assert unit_values("RestrictAddressFamilies") == ["AF_NETLINK AF_UNIX"]
    assert unit_values("RestrictNamespaces") == ["net"]


def test_dbus_activation_file():
    parser = configparser.ConfigParser()
    parser.optionxform = str  # keys are case-sensitive
    parser.read(TOP / "dbus" / "org.xfrmid1.service")
    section = parser["D-BUS Service"]
    assert dict(section) == {
        "Name": "org.xfrmid1",
        "Exec": "/bin/false",
        "User": "root",
        "SystemdService": "dbus-org.xfrmid1.service",
    }
    assert section["Name"] == unit_values("BusName")[0]
    # activation goes through the alias only an enabled unit has: disable stops it
    assert unit_values("Alias") == [section["SystemdService"]]


def test_notify_reload_drop_in():
    """Where the package installs it (systemd >= 253) systemd sends the SIGHUP and waits for
    RELOADING=1 and READY=1; ExecReload= must go, or each reload would signal twice."""
    parser = configparser.ConfigParser(strict=False, empty_lines_in_values=False)
    parser.optionxform = str
    parser.read(TOP / "systemd" / "notify-reload.conf")
    assert dict(parser["Service"]) == {"Type": "notify-reload", "ExecReload": ""}
    assert unit_values("Type") == ["notify"]  # the unit alone serves systemd 252 and older


def test_sysusers_creates_group(tmp_path):
    (tmp_path / "etc").mkdir()
    with open(TOP / "systemd" / "xfrmid.sysusers") as conf:
        result = subprocess.run(
            [_tool("systemd-sysusers"), f"--root={tmp_path}", "-"], stdin=conf,
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^xfrmid:x:\d+:$", (tmp_path / "etc" / "group").read_text(), re.M)
    assert not (tmp_path / "etc" / "passwd").exists() or "xfrmid" not in (tmp_path / "etc" / "passwd").read_text()


def test_modules_load_names_xfrm_interface():
    lines = [
        line for line in (TOP / "packaging" / "modules-load.d" / "xfrmid.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines == ["xfrm_interface"]
    assert "CAP_SYS_MODULE" not in unit_values("CapabilityBoundingSet")[0]


# --------------------------------------------------------------- capabilities, proven

_PROBE = r"""
import asyncio, ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute= enforces.
assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()
import dbus_fast, systemd.journal, systemd.daemon  # C extensions load under MDWE too
import os
from pyroute2 import AsyncIPRoute
from xfrmid.kernel.namespace import open_netns_fd, open_private_fd

os.close(open_private_fd())  # the feature probe's throwaway namespace (unshare)
os.close(open_netns_fd(sys.argv[1]))  # how the kernel layer enters /run/netns/NAME (setns)
print("xfrmid namespaces ok")

async def main():
    async with AsyncIPRoute(netns=sys.argv[1], flags=0) as ipr:
        await ipr.link("add", ifname="xprobe0", kind="veth", peer={"ifname": "xprobe1"})
        names = [link.get("ifname") async for link in await ipr.link("dump")]
        assert "xprobe0" in names, names
asyncio.run(main())
print("netns ok")
"""


def _run_with_caps(caps: list[str], netns: str) -> subprocess.CompletedProcess[str]:
    bounding = ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in caps])
    return subprocess.run(
        [_tool("setpriv"), f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
         sys.executable, "-c", _PROBE, netns],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def netns():
    name = f"xfrmid-cap-{uuid.uuid4().hex[:8]}"
    subprocess.run([_tool("ip"), "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run([_tool("ip"), "netns", "del", name], timeout=30)


def test_unit_capabilities_suffice_for_netns_work(netns):
    # The unit's bounding set, no new privileges, no W+X memory: pyroute2 can
    # still open rtnetlink inside a named namespace and create a link there.
    result = _run_with_caps(unit_values("CapabilityBoundingSet")[0].split(), netns)
    assert result.returncode == 0, result.stderr
    assert "xfrmid namespaces ok" in result.stdout and "netns ok" in result.stdout


def test_cap_sys_admin_is_necessary_for_netns(netns):
    # Without CAP_SYS_ADMIN unshare/setns(CLONE_NEWNET) fail: the kernel
    # feature probe and option 'netns' need it.
    result = _run_with_caps(["CAP_NET_ADMIN"], netns)
    assert result.returncode != 0
    assert "Operation not permitted" in result.stderr, result.stderr
