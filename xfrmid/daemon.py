"""xfrmid, the daemon: probe the kernel, reconcile, then serve org.xfrmid1.

Order matters: the start-up reconcile runs before the bus name is requested,
so a client that sees the name can rely on the kernel matching the desired
state. SIGTERM/SIGINT stop cleanly (interfaces stay: they belong to the
connections using them, not to the process); SIGHUP re-reads the config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from . import __version__
from .errors import XfrmidError
from .notify import Notifier
from .settings import DEFAULT_CONFIG_PATH, Settings
from .version import VersionAction, full_version

if TYPE_CHECKING:  # imported where used: the kernel probe starts before them (see Daemon.run)
    from .bus.service import BusService, XfrmidMessageBus
    from .core.running import RunningCore
    from .core.watch import MonitorFactory
    from .kernel.rtnetlink import Kernel
    from .kernel.features import Features
    from .kernel.monitor import NetnsMonitor

log = logging.getLogger("xfrmid.daemon")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfrmid",
        description="Own Linux XFRM (IPsec) interfaces and their addresses, routes and rules, "
        "and offer them over D-Bus as org.xfrmid1.",
        epilog="Exit status: 0 after a clean stop (or when --check-kernel finds XFRM interfaces), "
        "1 when the kernel lacks XFRM interfaces or the daemon cannot start, 2 for bad arguments "
        "or a bad configuration file.",
    )
    parser.add_argument(
        "--bus",
        default="system",
        metavar="system|session|ADDRESS",
        help="message bus to serve on: 'system' (default), 'session', or a D-Bus address "
        "such as unix:path=/tmp/bus (tests and demos use a private dbus-daemon).",
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG_PATH,
        metavar="PATH",
        help=f"configuration file (default {DEFAULT_CONFIG_PATH}; built-in defaults when it does not exist).",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="debug, info, notice, warning or error (overrides log_level in the configuration file).",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="directory of the persistent desired state (overrides state_dir; default /run/xfrmid).",
    )
    parser.add_argument(
        "--check-kernel",
        action="store_true",
        help="report whether the running kernel supports XFRM interfaces and exit (0: yes, 1: no).",
    )
    # Tests only: a tiny receive buffer makes netlink overruns (ENOBUFS) certain.
    parser.add_argument("--monitor-rcvbuf", type=_positive_int, metavar="BYTES", help=argparse.SUPPRESS)
    parser.add_argument("--version", action=VersionAction,
                        help="print the versions of xfrmid, pyroute2 and dbus-fast and exit")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of bytes")
    return value


def load_settings(args: argparse.Namespace) -> Settings:
    """Settings from the configuration file (defaults when it is absent), with overrides."""
    from . import config

    settings = config.load_or_default(args.config)
    if args.log_level:
        settings = dataclasses.replace(settings, log_level=args.log_level)
    if args.state_dir:
        settings = dataclasses.replace(settings, state_dir=args.state_dir)
    return settings


def describe_features(features: "Features") -> str:
    """One sentence about what the kernel offers."""
    release = features.kernel or os.uname().release
    if not features.xfrm_interface:
        return features.explanation() or f"Kernel {release} has no XFRM interfaces."
    extras = [
        name
        for name, flag in (
            ("external (collect_md) mode", features.collect_md),
            ("output mark masks", features.set_mark_mask),
        )
        if flag
    ]
    tail = f" with {' and '.join(extras)}" if extras else ""
    return f"Kernel {release} supports XFRM interfaces{tail}."


def _setup_logging(level: str) -> None:
    from . import journal

    journal.setup(level)


class Daemon:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.kernel: Kernel | None = None
        self.core: RunningCore | None = None
        self.service: BusService | None = None
        self._stop = asyncio.Event()
        self.notifier = Notifier()

    async def reload(self) -> None:
        """Re-read the configuration file (SIGHUP and the D-Bus Reload method)."""
        assert self.core is not None  # the bus, and so Reload, comes after the core
        settings = load_settings(self.args)
        _setup_logging(settings.log_level)
        await self.core.manager.reload(settings)
        self.settings = settings
        log.info("configuration reloaded from %s", self.args.config)

    async def _reload_on_signal(self) -> None:
        self.notifier.reloading()
        try:
            await self.reload()
        except XfrmidError as exc:
            log.error("reload failed, keeping the previous configuration: %s", exc)
        except Exception:
            log.exception("reload failed, keeping the previous configuration")
        self.notifier.ready(self._status())

    def _status(self) -> str:
        # the bus's count: the manager's interfaces() would build every view anew
        if self.service is not None:
            count = self.service.interface_count
        else:
            count = len(self.core.manager.published()) if self.core is not None else 0
        return f"Serving {count} interface{'s' if count != 1 else ''}"

    async def run(self) -> int:
        from .kernel import open_kernel

        # One probe (a modprobe and a throwaway namespace): the Kernel caches it for the manager.
        # It starts first: modprobe, a process of its own, runs while the rest is imported.
        kernel = self.kernel = open_kernel()
        probing = asyncio.ensure_future(kernel.features())
        await asyncio.sleep(0)
        try:
            from .bus.service import BusService, connect_bus
            from .core.running import build_core
            from .kernel.monitor import NetnsMonitor
        except BaseException:
            probing.cancel()
            raise
        # The modules are here to stay: the collector need not walk them again (see main()).
        gc.freeze()
        features = await probing
        if not features.xfrm_interface:
            print(describe_features(features), file=sys.stderr)
            await kernel.close()
            return EXIT_FAILURE
        log.info("%s", describe_features(features))
        core = self.core = build_core(kernel, self.settings, _monitors(NetnsMonitor, self.args.monitor_rcvbuf))

        # The bus handshake overlaps the start-up reconcile; the name is requested only after it.
        async def connect() -> XfrmidMessageBus:  # a bad address fails here too, reported below
            bus = connect_bus(self.args.bus)
            await bus.connect()
            return bus

        connecting = asyncio.ensure_future(connect())
        try:
            counts = await core.start()  # the watcher too: drift from now on is repaired
        except BaseException:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                (await connecting).disconnect()
            raise
        log.info(
            "start-up reconcile: %s",
            ", ".join(f"{key} {value}" for key, value in counts.items()) or "nothing to do",
        )
        try:
            bus = await connecting
        except Exception as exc:
            print(f"xfrmid: cannot connect to the {self.args.bus} bus: {exc}", file=sys.stderr)
            await core.stop()
            return EXIT_FAILURE
        service = self.service = BusService(core.manager, bus, self.reload)
        try:
            await service.start()
        except XfrmidError as exc:
            print(f"xfrmid: {exc}", file=sys.stderr)
            await core.stop()
            return EXIT_FAILURE
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_on_signal()))
        self.notifier.ready(self._status())
        gc.enable()  # disabled by main() for the start-up
        log.info("ready: xfrmid %s", full_version())
        self.notifier.start_watchdog()
        lost = loop.create_task(bus.wait_for_disconnect())
        stop = loop.create_task(self._stop.wait())
        done, _ = await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        rc = EXIT_OK
        if lost in done:
            log.error("lost the connection to the message bus; stopping")
            rc = EXIT_FAILURE
        self.notifier.stopping()
        for task in (lost, stop):
            task.cancel()
        await self.notifier.stop_watchdog()
        await service.stop()
        await core.stop()
        log.info("stopped")
        return rc


def _monitors(monitor: "type[NetnsMonitor]", rcvbuf: int | None) -> "MonitorFactory":
    """The drift watcher's netlink monitors, one per namespace; ``rcvbuf``: the hidden
    testing option's receive buffer (a tiny one makes overruns certain)."""
    if rcvbuf is None:
        return monitor
    log.warning("monitor receive buffer set to %d bytes (a testing setting)", rcvbuf)
    return functools.partial(monitor, rcvbuf=rcvbuf)


async def _check_kernel() -> int:
    from .kernel import probe_features

    features = await probe_features()
    print(describe_features(features))
    return EXIT_OK if features.xfrm_interface else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.check_kernel:
            return asyncio.run(_check_kernel())
        try:
            settings = load_settings(args)
            _setup_logging(settings.log_level)
        except XfrmidError as exc:
            print(f"xfrmid: {exc}", file=sys.stderr)
            return EXIT_USAGE
        # the libraries' versions (their metadata, a slow import) are logged once ready
        log.info("xfrmid %s starting (config %s, bus %s)", __version__, args.config, args.bus)
        # No cyclic garbage collection until READY=1: the start-up allocates an object
        # per kernel object and per promise (millions for 10,000 interfaces), which
        # made the collector walk the growing heap again and again (~10 % of the time).
        # What the start-up leaves as cycles is collected once it is enabled again.
        gc.disable()
        try:
            return asyncio.run(Daemon(args, settings).run())
        finally:
            gc.enable()
            gc.unfreeze()
    except XfrmidError as exc:
        print(f"xfrmid: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # never a traceback on the terminal: the log has it
        log.exception("xfrmid failed")
        print(f"xfrmid: failed unexpectedly ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
