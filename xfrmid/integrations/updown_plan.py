"""What a libreswan updown call asks of xfrmid: pure translation of pluto's environment.

pluto (libreswan 4.x) runs the program named in ``leftupdown=`` with the
connection described in ``PLUTO_*`` variables. Its own ``_updown.xfrm``, for
a connection with ``ipsec-interface=``, does this (and nothing else that
touches the XFRM interface):

- route-*: ``ip route replace <PLUTO_PEER_CLIENT> dev <PLUTO_VIRT_INTERFACE>``
  (``0.0.0.0/0`` as ``0.0.0.0/1`` + ``128.0.0.0/1``, ``::/0`` as
  ``2000::/3``; ``src PLUTO_MY_SOURCEIP``, ``metric PLUTO_METRIC``), no route
  when PLUTO_PEER_CLIENT == PLUTO_MY_CLIENT; with ``PLUTO_XFRMI_FWMARK`` (the
  peer inside its own client subnet) it also keeps the marked ESP/IKE packets
  to the peer on the underlying route (table 50 + ``fwmark`` rule) - xfrmid's
  ``peer`` pattern does the same job;
- up-* and route-*: ``PLUTO_MY_SOURCEIP``/32 (/128) on the interface when the
  address is not local yet (addsource);
- down-*: nothing of the interface's: the route stays while the connection is
  routed, so its traffic waits for the next SA instead of leaving in clear by
  the default route (pluto 4.x runs only ``down`` when a routed connection's
  SA goes, ``unroute`` when the connection itself goes);
- unroute-*: the route and the source address go again.

pluto itself (libreswan 4.x, and 5.x unless ``ipsec-interface-managed=no``)
creates the device and puts ``interface-ip=`` (INTERFACE_IP) on it; here
xfrmid does both (Attach, AddAddress). The interface is shared between
connections by xfrmid's per-owner references: owner is PLUTO_CONNECTION, and
Detach drops exactly what that connection added. pluto names the device
``ipsec<N>`` and puts if_id N on the SAs and policies (``ipsec0``: 16384), the
same rule as xfrmid's, so the if_id Attach returns must be that one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..naming import derived_if_id

# _updown.xfrm routes 0.0.0.0/0 as 0.0.0.0/1 + 128.0.0.0/1, which xfrmid's own
# split of 0.0.0.0/0 also installs (with one peer rule for both halves), but
# ::/0 as 2000::/3 only, where xfrmid would install ::/1 + 8000::/1.
_LIBRESWAN_DEFAULT = {"::/0": "2000::/3"}
_VERBS = ("prepare", "route", "unroute", "up", "down")


@dataclass(frozen=True)
class Step:
    """One xfrmid call: ``method`` is a xfrmid.client.Client method name."""

    method: str
    args: tuple = ()
    options: dict = field(default_factory=dict)
    unless_local: bool = False  # skip when the address is already local (addsource)

    def __str__(self) -> str:
        opts = "".join(f" {k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.method} {' '.join(map(str, self.args))}{opts}"


@dataclass(frozen=True)
class Plan:
    verb: str  # "route", "up", ... without -host/-client/-v6
    interface: str | None  # None: the connection has no ipsec-interface=
    owner: str
    steps: tuple[Step, ...]
    pluto_if_id: int | None = None  # the if_id pluto puts on the SAs and policies
    notes: tuple[str, ...] = ()


def _need(env: dict[str, str], key: str) -> str:
    value = env.get(key, "")
    if not value:
        raise InvalidArgument(f"pluto's environment lacks {key}; is this program run by pluto as leftupdown=?")
    return value


def split_verb(verb: str) -> tuple[str, str]:
    """'up-client-v6' -> ('up', 'client')."""
    parts = verb.removesuffix("-v6").split("-")
    if len(parts) != 2 or parts[0] not in _VERBS or parts[1] not in ("host", "client"):
        raise InvalidArgument(f"Unknown PLUTO_VERB {verb!r}.")
    return parts[0], parts[1]


def destination(peer_client: str) -> str:
    """The AddRoute destination giving the routes _updown.xfrm installs for PLUTO_PEER_CLIENT."""
    try:
        net = ipaddress.ip_network(peer_client, strict=False)
    except ValueError:
        raise InvalidArgument(f"PLUTO_PEER_CLIENT {peer_client!r} is not a subnet.") from None
    return _LIBRESWAN_DEFAULT.get(str(net), str(net))


def plan(env: dict[str, str]) -> Plan:
    verb, _kind = split_verb(_need(env, "PLUTO_VERB"))
    owner = _need(env, "PLUTO_CONNECTION")
    name = env.get("PLUTO_VIRT_INTERFACE", "NULL")
    if name in ("", "NULL") or env.get("PLUTO_XFRMI_ROUTE") != "yes":
        return Plan(verb, None, owner, (), notes=(f"connection {owner} has no ipsec-interface=; nothing to do",))
    if verb in ("prepare", "down"):
        # prepare always runs right before route; down leaves the route for the next SA
        return Plan(verb, name, owner, ())
    if verb == "unroute":
        return Plan(verb, name, owner, (Step("detach", (name, owner)),))

    steps = [Step("attach", (name, owner))]
    notes: list[str] = []
    interface_ip = env.get("INTERFACE_IP", "")
    if interface_ip:
        steps.append(Step("add_address", (name, owner, interface_ip)))
    source = env.get("PLUTO_MY_SOURCEIP", "") or None
    if source:
        try:
            host = ipaddress.ip_address(source)
        except ValueError:
            raise InvalidArgument(f"PLUTO_MY_SOURCEIP {source!r} is not an IP address.") from None
        # before the routes: the kernel refuses a route whose src is not local
        steps.append(Step("add_address", (name, owner, f"{host}/{host.max_prefixlen}"), unless_local=True))
    fwmark = env.get("PLUTO_XFRMI_FWMARK", "")
    peer_client, my_client = _need(env, "PLUTO_PEER_CLIENT"), env.get("PLUTO_MY_CLIENT", "")
    if peer_client == my_client:
        notes.append(f"leftsubnet == rightsubnet = {peer_client}: no route (as libreswan)")
    else:
        options: dict = {}
        if source:
            options["src"] = str(host)
        if env.get("PLUTO_METRIC"):
            options["metric"] = int(env["PLUTO_METRIC"])
        if fwmark:
            options["peer"] = _need(env, "PLUTO_PEER")
        if env.get("PLUTO_MTU"):
            notes.append(f"route MTU {env['PLUTO_MTU']} is not supported by xfrmid and is left out")
        steps.append(Step("add_route", (name, owner, destination(peer_client)), options))
    return Plan(verb, name, owner, tuple(steps), pluto_if_id=derived_if_id(name), notes=tuple(notes))
