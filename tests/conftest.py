"""Fixtures shared by the host and the kernel suites.

- ``settings``: default Settings with the state directory under tmp_path.
- ``core``: the running core as the daemon builds it (``xfrmid.core.running.build_core``:
  the manager and its drift watcher), over whatever ``kernel`` fixture the suite
  provides, with that suite's ``monitors`` (host: the in-memory FakeKernel of the
  test module and its events; kernel: the real kernel backend and its netlink
  monitors, from tests/kernel/conftest.py); started, and stopped after.
- ``manager``, ``watcher``: its two parts.
"""

from __future__ import annotations

import pytest

from xfrmid.core.running import build_core
from xfrmid.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=str(tmp_path / "state"))


@pytest.fixture
async def core(kernel, settings, monitors):
    running = build_core(kernel, settings, monitors)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def manager(core):
    return core.manager


@pytest.fixture
def watcher(core):
    return core.watcher
