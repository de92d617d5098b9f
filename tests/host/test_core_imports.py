"""The core asks the kernel layer for its plain values only: the kernel itself reaches the core
as a KernelBackend, and its types are imported for type checking alone. Checked in a fresh
interpreter that imports every module of the core: no pyroute2, no D-Bus library, and of the
kernel layer only its pure modules (those xfrmid/kernel/__init__.py lists as such)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
PURE = {"objects", "backend", "features", "events", "netlink", "nlattrs", "namespace"}

PROBE = """
import importlib, json, pkgutil, sys
import xfrmid.core
for module in pkgutil.iter_modules(xfrmid.core.__path__):
    importlib.import_module("xfrmid.core." + module.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("xfrmid.kernel.", "pyroute2", "dbus_fast")))))
"""


def test_the_core_imports_only_the_kernels_plain_values():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=TOP, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "xfrmid.kernel.objects" in loaded and "xfrmid.kernel.events" in loaded
    assert {m.removeprefix("xfrmid.kernel.") for m in loaded} <= PURE, loaded
