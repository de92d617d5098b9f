"""nm-xfrmid-service: a NetworkManager VPN service plugin whose tunnel is an xfrmid interface.

NetworkManager starts it (the ``program`` of its ``.name`` file, with
``--bus-name``) when a connection of ``vpn-type xfrmid`` comes up, and drives
it over org.freedesktop.NetworkManager.VPN.Plugin: NeedSecrets, then Connect
(or ConnectInteractive), later Disconnect. On Connect it

1. asks xfrmid for the connection's interface: Attach(interface, <connection
   UUID>, {bind_to_caller: true}) on its own bus connection, so the interface
   goes when this process goes, even killed;
2. puts static ESP SAs and policies on the returned if_id (nm_vpn_esp; an IKE
   plugin would hand if_id and mark to its IKE daemon instead);
3. hands the interface to NetworkManager as ``tundev`` in its Config signal,
   and the inner addresses and routes in Ip4Config/Ip6Config: NetworkManager
   puts them on the interface itself.

Disconnect (``nmcli connection down``) removes the SAs and policies and
Detaches. The plugin leaves when its connection is down, when NetworkManager
leaves the bus, or 180 s after start without a Connect (as libnm's plugins).
Logs go to stderr, which NetworkManager's journal keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from enum import IntEnum
from typing import Any

from dbus_fast import DBusError, Message, MessageType, NameFlag, PropertyAccess, RequestNameReply
from dbus_fast.service import ServiceInterface, dbus_property, method
from dbus_fast.service import signal as dbus_signal

from ..bus.connection import new_bus
from ..errors import InvalidArgument, NotFound, XfrmidError
from . import nm_vpn_settings as settings

log = logging.getLogger("nm-xfrmid-service")

PLUGIN_PATH = "/org/freedesktop/NetworkManager/VPN/Plugin"
PLUGIN_IFACE = "org.freedesktop.NetworkManager.VPN.Plugin"
ERROR = "org.freedesktop.NetworkManager.VPN.Error."
NM_NAME = "org.freedesktop.NetworkManager"
IDLE_QUIT = 180.0  # seconds without a Connect before leaving (libnm's NM_VPN_SERVICE_PLUGIN_QUIT_TIMER)


class State(IntEnum):
    """NMVpnServiceState."""

    UNKNOWN = 0
    INIT = 1
    SHUTDOWN = 2
    STARTING = 3
    STARTED = 4
    STOPPING = 5
    STOPPED = 6


class Failure(IntEnum):
    """NMVpnPluginFailure."""

    LOGIN_FAILED = 0
    CONNECT_FAILED = 1
    BAD_IP_CONFIG = 2


class Plugin(ServiceInterface):
    """org.freedesktop.NetworkManager.VPN.Plugin for one connection at a time."""

    def __init__(self, bus: Any, quit: asyncio.Event) -> None:
        super().__init__(PLUGIN_IFACE)
        self.bus = bus
        self.quit = quit
        self.state = State.INIT
        self.tunnel: settings.Tunnel | None = None
        self.attached: Any = None  # xfrmid.client.Attachment
        self.netns: str | None = None  # this process's namespace, as xfrmid names it
        self.local: settings.IPAddress | None = None
        self._task: asyncio.Task | None = None
        self._idle = asyncio.get_running_loop().call_later(IDLE_QUIT, self._idle_quit)

    # -- state ----------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state != self.state:
            log.debug("state %s -> %s", self.state.name, state.name)
            self.state = state
            self.StateChanged(int(state))
            self.emit_properties_changed({"State": int(state)})
        if state == State.STOPPED:
            # after the reply and the signals are out
            asyncio.get_running_loop().call_later(0.2, self.quit.set)

    def _idle_quit(self) -> None:
        if self.state in (State.INIT, State.STOPPED):
            log.info("no connection to bring up for %.0f s; leaving", IDLE_QUIT)
            self.quit.set()

    # -- methods NetworkManager calls -------------------------------------------

    @method()
    def NeedSecrets(self, settings_: "a{sa{sv}}") -> "s":  # noqa: F821
        missing = settings.missing_secrets(settings_)
        if missing:
            log.info("the connection lacks the secrets %s", ", ".join(missing))
            return "vpn"
        return ""

    @method()
    def Connect(self, connection: "a{sa{sv}}"):  # noqa: F821
        self._connect(connection)

    @method()
    def ConnectInteractive(self, connection: "a{sa{sv}}", details: "a{sv}"):  # noqa: F821
        self._connect(connection)  # never asks for more secrets while connecting

    @method()
    def NewSecrets(self, connection: "a{sa{sv}}"):  # noqa: F821
        raise DBusError(ERROR + "WrongState", "nm-xfrmid-service never asks for secrets while connecting.")

    @method()
    async def Disconnect(self):
        if self.state == State.STOPPING:
            raise DBusError(ERROR + "StoppingInProgress", "The connection is already being stopped.")
        if self.state == State.STOPPED:
            raise DBusError(ERROR + "AlreadyStopped", "No connection is active.")
        await self.stop()

    @method()
    def SetConfig(self, config: "a{sv}"):  # noqa: F821
        self.Config(config)

    @method()
    def SetIp4Config(self, config: "a{sv}"):  # noqa: F821
        self.Ip4Config(config)

    @method()
    def SetIp6Config(self, config: "a{sv}"):  # noqa: F821
        self.Ip6Config(config)

    @method()
    def SetFailure(self, reason: "s"):  # noqa: F821
        log.error("failure reported: %s", reason)
        self.Failure(int(Failure.CONNECT_FAILED))
        asyncio.get_running_loop().create_task(self.stop())

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "u":  # noqa: F821
        return int(self.state)

    # -- signals NetworkManager listens to --------------------------------------

    @dbus_signal()
    def StateChanged(self, state: int) -> "u":  # noqa: F821
        return state

    @dbus_signal()
    def Config(self, config: dict) -> "a{sv}":  # noqa: F821
        return config

    @dbus_signal()
    def Ip4Config(self, config: dict) -> "a{sv}":  # noqa: F821
        return config

    @dbus_signal()
    def Ip6Config(self, config: dict) -> "a{sv}":  # noqa: F821
        return config

    @dbus_signal()
    def Failure(self, reason: int) -> "u":  # noqa: F821
        return reason

    @dbus_signal()
    def LoginBanner(self, banner: str) -> "s":  # noqa: F821
        return banner

    @dbus_signal()
    def SecretsRequired(self, message: str, secrets: list) -> "sas":  # noqa: F821
        return [message, secrets]

    # -- the work ----------------------------------------------------------------

    def _connect(self, connection: dict) -> None:
        if self.state not in (State.INIT, State.STOPPED):
            raise DBusError(ERROR + "WrongState", f"Cannot connect: the plugin is {self.state.name.lower()}.")
        try:
            tunnel = settings.parse(connection)
        except InvalidArgument as exc:
            raise DBusError(ERROR + "BadArguments", str(exc)) from None
        self._idle.cancel()
        self.tunnel = tunnel
        log.info("connecting %r (%s) through %s to %s", tunnel.id, tunnel.uuid, tunnel.interface, tunnel.remote)
        self._set_state(State.STARTING)
        self._task = asyncio.get_running_loop().create_task(self._bring_up(tunnel))

    async def _bring_up(self, tunnel: settings.Tunnel) -> None:
        from ..client import Client  # after the bus name is ours: NetworkManager waits 5 s for it
        from . import nm_vpn_esp as esp
        from .netns_identify import own_netns

        try:
            self.local = tunnel.local or await esp.source_for(tunnel.remote)
            client = Client(self.bus)
            self.netns = own_netns(await client.daemon_pid())
            self.attached = await client.attach(
                tunnel.interface, tunnel.uuid, netns=self.netns, bind_to_caller=True)
            log.info("xfrmid attached %s: if_id %d, output mark 0x%x/0x%x", tunnel.interface,
                     self.attached.if_id, self.attached.mark, self.attached.mask)
            await esp.install(tunnel, self.local, self.attached.if_id, self.attached.mark, self.attached.mask)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the end of a task: report it to NetworkManager, never lose it
            log.error("cannot bring up %r: %s", tunnel.id, exc, exc_info=not isinstance(exc, (XfrmidError, OSError)))
            self.Failure(int(Failure.CONNECT_FAILED))
            await self.stop()
            return
        self.Config(settings.config(tunnel))
        if 4 in tunnel.families():
            self.Ip4Config(settings.ip4_config(tunnel))
        if 6 in tunnel.families():
            self.Ip6Config(settings.ip6_config(tunnel))
        self._set_state(State.STARTED)
        log.info("%r is up on %s (%s <-> %s)", tunnel.id, tunnel.interface, self.local, tunnel.remote)

    async def stop(self) -> None:
        """Tear the tunnel down (what exists of it) and report STOPPED."""
        if self.state in (State.STOPPING, State.STOPPED):
            return
        self._set_state(State.STOPPING)
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._tear_down()
        self._set_state(State.STOPPED)

    async def _tear_down(self) -> None:
        tunnel, attached, local = self.tunnel, self.attached, self.local
        self.attached = None
        if tunnel is None or attached is None:
            return
        from ..client import Client
        from . import nm_vpn_esp as esp

        if local is not None:
            await esp.remove(tunnel, local, attached.if_id)
        try:
            await Client(self.bus).detach(tunnel.interface, tunnel.uuid, netns=self.netns)
            log.info("xfrmid detached %s", tunnel.interface)
        except NotFound:
            pass
        except XfrmidError as exc:  # the bus connection's end releases it anyway
            log.warning("detaching %s: %s", tunnel.interface, exc)


def _watch_network_manager(bus: Any, plugin: Plugin) -> None:
    """Disconnect when NetworkManager leaves the bus (it would never say Disconnect)."""

    def handler(msg: Message) -> bool:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.body and msg.body[0] == NM_NAME and not msg.body[2]):
            log.warning("NetworkManager left the bus; disconnecting")
            asyncio.get_running_loop().create_task(plugin.stop())
            if plugin.state in (State.INIT, State.STOPPED):
                plugin.quit.set()
        return False

    bus.add_message_handler(handler)
    rule = f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{NM_NAME}'"
    bus.send(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                     interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))


async def serve(bus_name: str, address: str) -> int:
    bus = await new_bus(address).connect()
    quit = asyncio.Event()
    plugin = Plugin(bus, quit)
    bus.export(PLUGIN_PATH, plugin)
    reply = await bus.request_name(bus_name, NameFlag.DO_NOT_QUEUE)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        log.error("the bus name %s is taken (%s); is another nm-xfrmid-service running?", bus_name, reply.name)
        bus.disconnect()
        return 1
    log.info("serving %s", bus_name)
    _watch_network_manager(bus, plugin)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: loop.create_task(_stop_and_quit(plugin)))
    await quit.wait()
    bus.disconnect()
    return 0


async def _stop_and_quit(plugin: Plugin) -> None:
    await plugin.stop()
    plugin.quit.set()


def _log_level() -> int:
    """NetworkManager passes its level as a syslog priority in NM_VPN_LOG_LEVEL."""
    try:
        priority = int(os.environ.get("NM_VPN_LOG_LEVEL", "6"))
    except ValueError:
        priority = 6
    return logging.DEBUG if priority >= 7 else logging.INFO if priority == 6 else logging.WARNING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nm-xfrmid-service",
        description="NetworkManager VPN service plugin for IPsec through an xfrmid interface with static keys. "
                    "NetworkManager starts it; it is not meant to be run by hand.",
    )
    parser.add_argument("--bus-name", default=settings.SERVICE,
                        help=f"the D-Bus name to serve (NetworkManager passes one per connection; default {settings.SERVICE})")
    parser.add_argument("--bus", default="system", help="system (default), session or a D-Bus address")
    args = parser.parse_args(argv)
    if not args.bus_name.startswith(settings.SERVICE):
        parser.error(f"--bus-name must start with {settings.SERVICE}")
    logging.basicConfig(level=_log_level(), stream=sys.stderr, format="nm-xfrmid-service[%(process)d]: %(message)s")
    try:
        return asyncio.run(serve(args.bus_name, args.bus))
    except Exception as exc:  # dbus-fast raises several types when the bus cannot be reached
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
