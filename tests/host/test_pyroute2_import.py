"""xfrmid.pyroute2_import: the kernel layer loads without pyroute2's eager package __init__,
once it is opened; importing it changes nothing.

Each check runs in a fresh interpreter: the test process itself may already
hold the full pyroute2.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_kernel_layer_changes_nothing():
    out = _run(
        """
        import sys
        finders = list(sys.meta_path)
        import xfrmid.kernel
        from xfrmid.kernel import backend, events, features, namespace, netlink, nlattrs, objects
        print("pyroute2", sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2"))
        print("meta_path unchanged", sys.meta_path == finders)
        kernel = xfrmid.kernel.open_kernel()
        print("opened", "pyroute2" in sys.modules, len(sys.meta_path) == len(finders) + 1)
        """
    )
    assert "pyroute2 []" in out
    assert "meta_path unchanged True" in out
    assert "opened True True" in out


def test_kernel_layer_skips_the_heavy_parts_of_pyroute2():
    out = _run(
        """
        import sys, logging
        import xfrmid.kernel
        kernel = xfrmid.kernel.open_kernel()
        import xfrmid.kernel.monitor
        from xfrmid import pyroute2_import
        heavy = [m for m in ("pyroute2.ndb.main", "pyroute2.ipdb", "sqlite3", "pyroute2.conntrack",
                             "pyroute2.ipset", "pyroute2.nftables", "pyroute2.plan9.server")
                 if m in sys.modules]
        print("heavy", heavy)
        print("lazy", pyroute2_import.is_lazy())
        import pyroute2
        from pyroute2 import AsyncIPRoute, config
        print("async", AsyncIPRoute.__module__, isinstance(pyroute2.__version__, str))
        print("nullhandler", any(isinstance(h, logging.NullHandler) for h in logging.getLogger("pyroute2").handlers))
        """
    )
    assert "heavy []" in out
    assert "lazy True" in out
    assert "async pyroute2.iproute.linux True" in out
    assert "nullhandler True" in out


def test_any_other_public_name_completes_the_real_package():
    out = _run(
        """
        import xfrmid.kernel
        xfrmid.kernel.prepare()
        from xfrmid import pyroute2_import
        import pyroute2
        from pyroute2 import IPRoute, NDB, AsyncIPRoute
        import pyroute2.iproute.linux as linux
        print(IPRoute is linux.IPRoute, AsyncIPRoute is linux.AsyncIPRoute, NDB.__name__)
        print("lazy", pyroute2_import.is_lazy(), len(pyroute2.modules) > 50)
        try:
            pyroute2.NoSuchThing
        except AttributeError:
            print("missing ok")
        """
    )
    assert "True True NDB" in out
    assert "lazy False True" in out
    assert "missing ok" in out


def test_no_change_when_pyroute2_was_imported_first():
    out = _run(
        """
        import pyroute2
        import xfrmid.kernel
        xfrmid.kernel.prepare()
        from xfrmid import pyroute2_import
        print("lazy", pyroute2_import.is_lazy(), hasattr(pyroute2, "NDB"))
        """
    )
    assert "lazy False True" in out
