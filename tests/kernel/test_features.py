"""The feature probe on the VM's kernel (Debian 6.1: everything present)."""

from __future__ import annotations

import os

from xfrmid.kernel import probe_features


async def test_probe_finds_everything_on_61():
    features = await probe_features()
    assert features.kernel == os.uname().release
    assert (features.xfrm_interface, features.collect_md, features.set_mark_mask) == (True, True, True)
    assert features.method == "probe" and features.explanation() is None
    assert features.as_dict() == {"xfrm_interface": True, "collect_md": True, "set_mark_mask": True}


async def test_probe_leaves_no_trace(kernel):
    before = set(os.listdir("/sys/class/net"))
    await kernel.features()
    assert set(os.listdir("/sys/class/net")) == before
    assert await kernel.features() is await kernel.features()  # probed once, then cached
