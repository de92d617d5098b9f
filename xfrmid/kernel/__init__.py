"""The kernel layer: XFRM links, addresses, routes and rules over rtnetlink.

Importing this package, or any of its pure modules, loads nothing of
pyroute2 and changes nothing in the interpreter. The pure modules, which the
core imports:

- objects.py: the specs and states of links, addresses, routes and rules;
- backend.py: ``KernelBackend``, what the core asks of the kernel;
- features.py: ``Features``, what the running kernel supports;
- events.py: rtnetlink notifications as typed events (parser, socket filter);
- netlink.py: the rtnetlink wire layout, encoded and walked as bytes;
- nlattrs.py: attributes of raw messages, decoded only where asked;
- namespace.py: namespaces by name, netlink sockets opened inside them.

The modules that talk to the kernel through pyroute2: rtnetlink.py
(``Kernel``, the real KernelBackend), connection.py (one connection per
namespace and everything kept per namespace), links.py, link_msgs.py,
link_reaper.py, batch.py, xfrm_kind.py, addresses.py, routes.py, rules.py,
nlerrors.py, probe.py (the feature probe) and monitor.py (the event
subscription).

``open_kernel()`` and ``probe_features()`` are the ways in: they first ready
pyroute2 (``prepare``: its import without the eager package ``__init__``,
see xfrmid/pyroute2_import.py), then load those modules.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .features import Features
    from .rtnetlink import Kernel

__all__ = ["open_kernel", "prepare", "probe_features", "probe_features_sync"]


def prepare() -> None:
    """Ready pyroute2 for the kernel layer (idempotent; before its first import is cheapest)."""
    from .. import pyroute2_import

    pyroute2_import.install()


def open_kernel() -> Kernel:
    """The real kernel backend; its namespaces' connections open on first use."""
    prepare()
    from .rtnetlink import Kernel

    return Kernel()


async def probe_features() -> Features:
    """Probe what the running kernel supports (xfrmid --check-kernel; Kernel.features caches it)."""
    prepare()
    from .probe import probe_features as probe

    return await probe()


def probe_features_sync() -> Features:
    """probe_features() for synchronous callers outside a running event loop."""
    return asyncio.run(probe_features())
