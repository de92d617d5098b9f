"""Import pyroute2 without running its package ``__init__`` at start-up.

Why: ``pyroute2/__init__.py`` (0.9.x) imports every public class of the
library (NDB with sqlite3, IPDB, conntrack, ipset, nftables, wireguard,
plan9, ...) just to re-export them. Any ``import pyroute2.x.y`` runs it first,
so the daemon paid for all of it (most of its start-up in the test VM) while
it uses only AsyncIPRoute and the rtnetlink message classes.

What that ``__init__`` does besides importing (0.9.6 and 0.9.7, the supported
versions, have the same one): sets ``__version__`` and, through
``pyroute2.config.log``, gives the ``pyroute2`` logger a NullHandler; the
``win_inet_pton`` patch is Windows only. There is no module aliasing and no
configuration beyond that (``pyroute2.config`` is a submodule the others
import themselves). tests/host/test_dependency_guards.py fails, naming this
file, when a pyroute2 release makes it do more.

How: ``install()`` registers the package module built from pyroute2's own
spec (so ``__path__`` and submodule imports are the real ones) without
executing it, performs those two side effects, and gives the module a
``__getattr__`` that resolves ``from pyroute2 import AsyncIPRoute`` (and the
few other names xfrmid uses) from their submodules. Any other public name runs
the real ``__init__`` in that module then, so code asking for NDB or IPRoute
still gets exactly what ``import pyroute2`` gives. If pyroute2 is already
imported, nothing changes.

Also deferred: pyroute2's traffic-control modules. ``pyroute2.netlink.rtnl.tcmsg``
(reached through AsyncIPRoute's message table) imports its two dozen qdisc
and classifier plugins, which import some more, only to list them in a dict
for decoding tc messages, which xfrmid never sends nor receives. ``install()``
puts a finder first on ``sys.meta_path`` that gives those modules (and only
those) the standard library's ``importlib.util.LazyLoader``: each is found as
usual but runs on its first attribute access, so any code that does use tc gets
the real modules. In the test VM each module costs about half a second of
start-up, so this is some 15 s of the daemon's.

Nothing happens on import: ``xfrmid.kernel.prepare()`` calls ``install()``
when the kernel layer is opened, before its first pyroute2 import.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

# public name -> submodule that defines it (what xfrmid and its tests use)
_LIGHT = {
    "AsyncIPRoute": "pyroute2.iproute.linux",
    "NetlinkError": "pyroute2.netlink.exceptions",
    "NetlinkDecodeError": "pyroute2.netlink.exceptions",
    "NetlinkDumpInterrupted": "pyroute2.netlink.exceptions",
}

_MARK = "__xfrmid_lazy__"


# modules run on first use only (see the module's docstring): the tc plugins
_DEFERRED_UNDER = "pyroute2.netlink.rtnl.tcmsg."


class _DeferredFinder:
    """Finds the deferred modules as PathFinder does, with a LazyLoader around their loader.
    (A meta path finder needs only ``find_spec``; importlib.abc's base class would import
    importlib.resources and pathlib's dependencies at start-up.)"""

    def find_spec(self, name, path, target=None):
        if not name.startswith(_DEFERRED_UNDER):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module") \
                and spec.submodule_search_locations is None:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def _defer_tc_plugins() -> None:
    if "pyroute2.netlink.rtnl.tcmsg" in sys.modules:
        return  # already loaded whole: nothing to save
    if not any(isinstance(finder, _DeferredFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferredFinder())


def install() -> None:
    """Make ``pyroute2`` importable without its eager ``__init__`` (idempotent)."""
    _defer_tc_plugins()
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a package: let the normal import report it
    package = importlib.util.module_from_spec(spec)
    package.__dict__[_MARK] = True
    package.__getattr__ = _getattr_of(package)  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = package
    try:
        from pyroute2.config import log  # the logger setup __init__ performs

        package.log = log  # type: ignore[attr-defined]
        try:
            from pyroute2.config.version import __version__
        except ImportError:
            __version__ = "unknown"
        package.__version__ = __version__  # type: ignore[attr-defined]
    except BaseException:
        sys.modules.pop("pyroute2", None)
        raise


def is_lazy() -> bool:
    """Whether pyroute2's package __init__ has been skipped (so far) in this process."""
    module = sys.modules.get("pyroute2")
    return module is not None and module.__dict__.get(_MARK, False)


def _getattr_of(package: types.ModuleType):
    def __getattr__(name: str):
        where = _LIGHT.get(name)
        if where is not None:
            value = getattr(importlib.import_module(where), name)
            setattr(package, name, value)
            return value
        if name == "__all__":
            _complete(package)
            return package.__dict__["__all__"]
        if name.startswith("__") or _is_submodule(package, name):
            # dunders are looked up by the import system; a submodule name must
            # fall through to a real submodule import (``from pyroute2 import config``)
            raise AttributeError(name)
        _complete(package)
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    return __getattr__


def _is_submodule(package: types.ModuleType, name: str) -> bool:
    return importlib.util.find_spec(f"pyroute2.{name}") is not None


def _complete(package: types.ModuleType) -> None:
    """Run pyroute2's real ``__init__`` in the module (once): every public name then exists."""
    if not package.__dict__.get(_MARK):
        return
    package.__dict__[_MARK] = False
    package.__spec__.loader.exec_module(package)  # type: ignore[union-attr]
