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
import gc
import logging
import os
import signal
import sys
from typing import Any

from .errors import XfrmidError
from .notify import Notifier
from .settings import DEFAULT_CONFIG_PATH, Settings
from .version import VersionAction, full_version

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
    overrides: dict[str, Any] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    return dataclasses.replace(settings, **overrides) if overrides else settings


def describe_features(features: Any) -> str:
    """One sentence about what the kernel offers."""
    release = getattr(features, "kernel", "") or os.uname().release
    if not getattr(features, "xfrm_interface", False):
        return features.explanation() or f"Kernel {release} has no XFRM interfaces."
    extras = [
        name
        for name, flag in (
            ("external (collect_md) mode", getattr(features, "collect_md", False)),
            ("output mark masks", getattr(features, "set_mark_mask", False)),
        )
        if flag
    ]
    tail = f" with {' and '.join(extras)}" if extras else ""
    return f"Kernel {release} supports XFRM interfaces{tail}."


def _setup_logging(level: str) -> None:
    try:
        from . import journal
    except ImportError:  # pragma: no cover - journal.py ships with xfrmid
        logging.basicConfig(level=level.upper(), format="%(levelname)s %(message)s")
        return
    journal.setup(level)




class Daemon:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        self.manager: Any = None
        self.service: Any = None
        self.kernel: Any = None
        self.watcher: Any = None
        self._stop = asyncio.Event()
        self.notifier = Notifier()

    async def reload(self) -> None:
        """Re-read the configuration file (SIGHUP and the D-Bus Reload method)."""
        settings = load_settings(self.args)
        _setup_logging(settings.log_level)
        # the reload's own changes are not drift; what it leaves is judged afterwards
        with self.watcher.holding() if self.watcher is not None else contextlib.nullcontext():
            await self.manager.reload(settings)
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
        count = self.service.interface_count if self.service is not None else len(self.manager.interfaces())
        return f"Serving {count} interface{'s' if count != 1 else ''}"

    async def run(self) -> int:
        from .kernel import open_kernel

        # One probe (a modprobe and a throwaway namespace): the Kernel caches it for the manager.
        # It starts first: modprobe, a process of its own, runs while the rest is imported.
        self.kernel = open_kernel()
        probing = asyncio.ensure_future(self.kernel.features())
        await asyncio.sleep(0)
        try:
            from .bus.service import BusService, connect_bus
            from .core.manager import Manager
        except BaseException:
            probing.cancel()
            raise
        # The modules are here to stay: the collector need not walk them again (see main()).
        gc.freeze()
        features = await probing
        if not getattr(features, "xfrm_interface", False):
            print(describe_features(features), file=sys.stderr)
            await self.kernel.close()
            return EXIT_FAILURE
        log.info("%s", describe_features(features))
        self.manager = Manager(self.kernel, self.settings, _state_store(self.settings))
        self.watcher = _watcher(self.manager, getattr(self.args, "monitor_rcvbuf", None))
        # The bus handshake overlaps the start-up reconcile; the name is requested only after it.
        async def connect() -> Any:  # a bad address fails here too, reported below
            return await connect_bus(self.args.bus).connect()

        connecting = asyncio.ensure_future(connect())
        try:
            counts = await self.manager.start()
        except BaseException:
            connecting.cancel()
            with contextlib.suppress(BaseException):
                (await connecting).disconnect()
            raise
        log.info(
            "start-up reconcile: %s",
            ", ".join(f"{key} {value}" for key, value in counts.items()) or "nothing to do",
        )
        # Before the bus name: drift from now on is repaired, none slips in between.
        self.watcher.set_interfaces(_published(self.manager))
        await self.watcher.start()
        try:
            bus = await connecting
        except Exception as exc:
            print(f"xfrmid: cannot connect to the {self.args.bus} bus: {exc}", file=sys.stderr)
            await self._stop_core()
            return EXIT_FAILURE
        self.service = BusService(self.manager, bus, self.reload)
        try:
            await self.service.start()
        except XfrmidError as exc:
            print(f"xfrmid: {exc}", file=sys.stderr)
            await self._stop_core()
            return EXIT_FAILURE
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload_on_signal()))
        self.notifier.ready(self._status())
        gc.enable()  # disabled by main() for the start-up
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
        await self.service.stop()
        await self._stop_core()
        log.info("stopped")
        return rc

    async def _stop_core(self) -> None:
        """Stop repairing first: the manager's last calls must not look like drift."""
        if self.watcher is not None:
            await self.watcher.stop()
            log.info("drift repair: %s", ", ".join(f"{k} {v}" for k, v in self.watcher.stats().items()))
        await self.manager.stop()


def _published(manager: Any) -> Any:
    """The views the manager last published, when it offers them: building every view
    anew (``interfaces()``) costs O(interfaces) of planning at start-up."""
    published = getattr(manager, "published", None)
    return published() if published is not None else manager.interfaces()


def _watcher(manager: Any, rcvbuf: int | None) -> Any:
    """The drift watcher (issue 4), wired to the manager as its listener and its hold hook.

    It repairs one interface at a time with ``reconcile_interface`` and falls
    back to the same full ``reconcile`` the D-Bus Reconcile method runs; the
    manager tells it (as a listener) which interfaces and namespaces to watch,
    so a namespace first used at run time gets its monitor then.
    """
    from .core.watch import Watcher

    factory: dict[str, Any] = {}
    if rcvbuf is not None:
        from .kernel.monitor import NetnsMonitor

        factory["monitor_factory"] = lambda netns, on_event, interest: NetnsMonitor(
            netns, on_event, interest, rcvbuf=rcvbuf)
        log.warning("monitor receive buffer set to %d bytes (a testing setting)", rcvbuf)
    watcher = Watcher(manager.reconcile, reconcile_one=manager.reconcile_interface, **factory)
    manager.subscribe(watcher)
    manager.hold = watcher.hold
    return watcher


def _state_store(settings: Settings) -> Any:
    """The persistent desired state (issue 4), when the core provides one."""
    from .core.store import StateStore

    return StateStore.in_dir(settings.state_dir)


async def _check_kernel() -> int:
    from .kernel import probe_features

    features = await probe_features()
    print(describe_features(features))
    return EXIT_OK if getattr(features, "xfrm_interface", False) else EXIT_FAILURE


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
        log.info("xfrmid %s starting (config %s, bus %s)", full_version(), args.config, args.bus)
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
