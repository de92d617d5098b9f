"""The daemon on a kernel without XFRM interfaces (this host's) refuses to start.

An admin starting xfrmid there must read one sentence saying what is missing
and what to do, and get exit code 1, never a traceback. Where the host does
have XFRM interfaces (a CI machine may), the daemon gets past the probe and
must fail just as cleanly on the bus address that does not exist.
"""

from __future__ import annotations

import subprocess
import sys

from test_features_host import host_has_xfrm_interface

from xfrmid.kernel import probe_features_sync


def run_daemon(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xfrmid.daemon", *args], capture_output=True, text=True,
                          timeout=120)


def test_daemon_refuses_to_start_without_xfrm_interfaces(tmp_path):
    proc = run_daemon("--bus", f"unix:path={tmp_path}/no-bus", "--config", str(tmp_path / "none.conf"),
                      "--state-dir", str(tmp_path / "state"), "--log-level", "info")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    if host_has_xfrm_interface():
        assert last.startswith("xfrmid: cannot connect to the unix:path=") and "no-bus" in last
        return
    sentence = probe_features_sync().explanation()
    assert last == sentence, proc.stderr
    assert sentence.endswith(".") and sentence.count(". ") == 0
    assert "xfrm_interface" in sentence and "CONFIG_XFRM_INTERFACE" in sentence
    assert not (tmp_path / "state").exists()  # refused before touching any state


def test_check_kernel_says_one_sentence_with_exit_code():
    proc = run_daemon("--check-kernel")
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("."), proc.stdout
    if host_has_xfrm_interface():
        assert proc.returncode == 0 and "supports XFRM interfaces" in lines[0]
    else:
        assert proc.returncode == 1 and "has no XFRM interfaces" in lines[0] and "xfrm_interface" in lines[0]
