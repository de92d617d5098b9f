"""Fixtures shared by the host and the kernel suites.

- ``settings``: default Settings with the state directory under tmp_path.
- ``manager``: a started core Manager over whatever ``kernel`` fixture the
  suite provides (host: the in-memory FakeKernel of the test module; kernel:
  the real kernel backend from tests/kernel/conftest.py), stopped after.
"""

from __future__ import annotations

import pytest

from xfrmid.core.manager import Manager
from xfrmid.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=str(tmp_path / "state"))


@pytest.fixture
async def manager(kernel, settings):
    m = Manager(kernel, settings)
    await m.start()
    yield m
    await m.stop()
