"""The feature probe on the host's own kernel.

This machine's kernel has no XFRM interfaces, so the probe must say so in one
sentence. CI may run on a host that has them; there the probe must find them
and explain nothing. Which case applies is decided the way an admin would:
does `modprobe xfrm_interface` work, or is the module there already?
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from xfrmid.kernel import probe_features, probe_features_sync
from xfrmid.kernel.features import Features, missing_explanation


def host_has_xfrm_interface() -> bool:
    if os.path.isdir("/sys/module/xfrm_interface"):
        return True
    try:
        return subprocess.run(["modprobe", "xfrm_interface"], capture_output=True).returncode == 0
    except OSError:
        return False


def test_probe_matches_host():
    if os.geteuid() != 0:
        pytest.fail("the probe test needs root (make test runs as root)")
    features = asyncio.run(probe_features())
    assert features.kernel == os.uname().release
    if host_has_xfrm_interface():
        assert features.xfrm_interface is True
        assert features.explanation() is None
        return
    assert features.xfrm_interface is False
    assert features.collect_md is False
    sentence = features.explanation()
    assert sentence and "\n" not in sentence and sentence.endswith(".")
    assert sentence.count(". ") == 0  # one sentence
    assert features.kernel in sentence and "xfrm_interface" in sentence
    assert "CONFIG_XFRM_INTERFACE" in sentence


def test_probe_sync_wrapper_agrees():
    assert probe_features_sync().xfrm_interface == asyncio.run(probe_features()).xfrm_interface


def test_explanation_names_modprobe_outcome():
    missing = Features(xfrm_interface=False, collect_md=False, set_mark_mask=False, kernel="5.4.0-test",
                       modprobe="module not found")
    sentence = missing_explanation(missing)
    assert sentence.startswith("Kernel 5.4.0-test has no XFRM interfaces (modprobe xfrm_interface: module not found)")
    assert sentence.endswith(".") and "\n" not in sentence
    present = Features(xfrm_interface=True, collect_md=True, set_mark_mask=True, kernel="6.1.0")
    assert present.explanation() is None
    assert present.as_dict() == {"xfrm_interface": True, "collect_md": True, "set_mark_mask": True}
