"""org.xfrmid1.Error.KernelUnsupported for real, over the bus.

The VM's kernel has every feature, so the test takes one away while the
shared daemon runs: xfrm_interface is blocked in /etc/modprobe.d (so the
kernel's own request_module for link kind "xfrm" fails too) and unloaded.
The kernel then answers a create with EOPNOTSUPP ("Unknown device type");
the caller must get KernelUnsupported with one sentence saying what is
missing and what to do, the daemon must keep no trace of the failed
interface and keep answering. The fixture puts the module back whatever
happens, because later tests of the same boot need it. Interface names
ipsec260..ipsec269 are used by this file only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from xfrmid import errors

from .bus_fixtures import client, gdbus_failure, manager_call, private_bus, xfrmid  # noqa: F401 - fixtures

BLOCK = Path("/etc/modprobe.d/xfrmid-test-no-xfrm-interface.conf")
MODULE = Path("/sys/module/xfrm_interface")
UNSUPPORTED = "org.xfrmid1.Error.KernelUnsupported"


def xfrm_links_everywhere() -> list[str]:
    """Every xfrm link in the initial and the named namespaces ("netns/name")."""
    names: list[str | None] = [None, *sorted(p.name for p in Path("/run/netns").glob("*"))]
    found = []
    for netns in names:
        cmd = ["ip", "-j", "-d"] + (["-n", netns] if netns else []) + ["link", "show"]
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        for link in json.loads(out) if out.strip() else []:
            if link.get("linkinfo", {}).get("info_kind") == "xfrm":
                found.append(f"{netns or '(initial)'}/{link['ifname']}")
    return found


class BlockedModule:
    def __init__(self) -> None:
        self.blocked = False

    def block(self) -> None:
        # unloading the module deletes every xfrm link of every namespace: refuse
        # rather than pull interfaces from under something else
        leftovers = xfrm_links_everywhere()
        assert not leftovers, f"xfrm links exist, not unloading xfrm_interface under them: {leftovers}"
        self.blocked = True
        BLOCK.parent.mkdir(parents=True, exist_ok=True)
        BLOCK.write_text("# xfrmid test: the kernel must not load it on demand\ninstall xfrm_interface /bin/false\n")
        proc = subprocess.run(["rmmod", "xfrm_interface"], capture_output=True, text=True)
        assert proc.returncode == 0, f"rmmod xfrm_interface failed: {proc.stderr.strip()}"
        assert not MODULE.exists()

    def restore(self) -> None:
        if not self.blocked:
            return
        BLOCK.unlink(missing_ok=True)
        proc = subprocess.run(["modprobe", "xfrm_interface"], capture_output=True, text=True)
        self.blocked = False
        assert proc.returncode == 0 and MODULE.is_dir(), f"modprobe xfrm_interface failed: {proc.stderr.strip()}"


@pytest.fixture
def no_xfrm_module(xfrmid):
    """xfrm_interface unloaded and blocked; back in place after the test, even a failed one.

    Depends on the shared daemon so that it has started (and probed) before the module goes.
    """
    state = BlockedModule()
    try:
        state.block()
        yield state
    finally:
        state.restore()


def assert_one_sentence(text: str, name: str) -> None:
    assert "\n" not in text and "Traceback" not in text and text.endswith("."), text
    assert text.count(". ") == 0, f"more than one sentence: {text}"
    assert name in text and "xfrm_interface" in text and "no XFRM interfaces" in text, text


async def test_missing_module_gives_kernel_unsupported_and_daemon_goes_on(xfrmid, client, netns, no_xfrm_module):
    a = xfrmid.address
    log_before = len(xfrmid.log_text())

    # GDBus: Attach in the daemon's namespace and CreateInterface in another one
    name, text = gdbus_failure(a, "Attach", "ipsec260", "conn-a", "@a{sv} {}")
    assert name == UNSUPPORTED, text
    assert_one_sentence(text, "ipsec260")
    name, text = gdbus_failure(a, "CreateInterface", "ipsec261", "0", f"{{'netns': <'{netns}'>}}")
    assert name == UNSUPPORTED, text
    assert_one_sentence(text, "ipsec261")
    assert netns in text

    # the project's client: typed error, also for external (collect_md) mode
    with pytest.raises(errors.KernelUnsupported) as caught:
        await client.create_interface("ipsec262", external=True)
    assert_one_sentence(str(caught.value), "ipsec262")
    with pytest.raises(errors.KernelUnsupported):
        await client.attach("ipsec260", "conn-b", netns=netns)

    # sd-bus (what pluto links): a failure with the sentence, no traceback
    proc = manager_call(a, "Attach", "ssa{sv}", "ipsec263", "conn-c", "0", check=False)
    assert proc.returncode != 0 and "xfrm_interface" in proc.stderr and "Traceback" not in proc.stderr

    # the daemon answers and holds nothing of the failed calls
    assert xfrmid.alive()
    listed = {row.name for row in await client.list_interfaces()}
    assert not listed & {"ipsec260", "ipsec261", "ipsec262", "ipsec263"}, listed
    assert (await client.manager_properties())["Version"]
    assert not xfrm_links_everywhere()
    assert "Traceback" not in xfrmid.log_text()[log_before:]

    # with the module back, the same names work: no stale state was left
    no_xfrm_module.restore()
    attached = await client.attach("ipsec260", "conn-a", netns=netns)
    assert attached.if_id == 260
    assert await client.detach("ipsec260", "conn-a", netns=netns) is True
    assert not xfrm_links_everywhere()
