"""Fixtures of the host suite.

- ``monitors``: the drift watcher's monitor factory over the test module's
  ``kernel`` fixture (a FakeKernel, whose changes are events like rtnetlink's).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def monitors(kernel):
    return kernel.monitor
