"""The command line of xfrmctl (argparse), kept apart so --help is testable."""

from __future__ import annotations

import argparse

from .exitcodes import EPILOG

DESCRIPTION = (
    "Ask xfrmid for XFRM (IPsec) interfaces, share them between connections and give them back; "
    "show what xfrmid manages. Talks to the daemon over D-Bus (org.xfrmid1)."
)


def _u32(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 4294967295")
    return value


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common(json_help: bool) -> argparse.ArgumentParser:
    """Options every subcommand accepts, also after the subcommand name.

    SUPPRESS keeps a subcommand from resetting what was given before it.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--netns", metavar="NAME", default=argparse.SUPPRESS,
        help="network namespace (a name under /run/netns) the interface lives in; "
        "default: the daemon's own",
    )
    common.add_argument(
        "--bus", metavar="system|session|ADDRESS", default=argparse.SUPPRESS,
        help="message bus where xfrmid runs (default: system)",
    )
    if json_help:
        common.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS,
            help="print machine-readable JSON instead of text",
        )
    return common


def _actions(
    parent: argparse.ArgumentParser, common: argparse.ArgumentParser,
    texts: tuple[str, str], last: tuple[str, str, str],
) -> list[argparse.ArgumentParser]:
    """The add|del pair of 'address' and 'route': NAME OWNER and one more positional."""
    sub = parent.add_subparsers(dest="action", metavar="add|del", required=True)
    result = []
    for action, text in zip(("add", "del"), texts):
        q = sub.add_parser(action, help=text, description=text, parents=[common], epilog=EPILOG,
                           formatter_class=_Formatter)
        q.add_argument("name", metavar="NAME", help="interface name")
        q.add_argument("owner", metavar="OWNER", help="connection it belongs to")
        q.add_argument(last[0], metavar=last[1], help=last[2])
        result.append(q)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfrmctl", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter,
    )
    parser.add_argument("--bus", metavar="system|session|ADDRESS", default="system",
                        help="message bus where xfrmid runs: 'system' (default), 'session' or a D-Bus address")
    parser.add_argument("--netns", metavar="NAME", default=None,
                        help="network namespace (a name under /run/netns); default: the daemon's own")
    parser.add_argument("--json", action="store_true", default=False,
                        help="print machine-readable JSON (read commands and attach)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    read = _common(True)
    write = _common(False)

    def add(name: str, help: str, parents: list[argparse.ArgumentParser], description: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, description=description or help, parents=parents,
            epilog=EPILOG, formatter_class=_Formatter,
        )

    add("list", "list the interfaces xfrmid manages or adopted", [read],
        "List every interface xfrmid manages or adopted, in all network namespaces, "
        "with its if_id, state and owners.")

    p = add("status", "show the daemon, or one interface in detail", [read],
            "Without NAME: the daemon's state in the style of 'systemctl status' (version, "
            "process, kernel features, interfaces per namespace, attachments). With NAME: every "
            "property of that interface: if_id, output mark and mask, owners, addresses and routes.")
    p.add_argument("name", metavar="NAME", nargs="?", default=None,
                   help="interface name, e.g. ipsec1; leave out for the daemon's status")

    p = add("create", "create an interface that stays until 'delete'", [write],
            "Create an interface (or confirm the identical existing one). It stays until "
            "'xfrmctl delete', whatever connections attach and detach.")
    p.add_argument("name", metavar="NAME", help="interface name, e.g. ipsec1 (if_id derived: ipsecN -> N, ipsec0 -> 16384)")
    p.add_argument("--if-id", type=_u32, default=0, metavar="N", help="explicit if_id (default 0: derive from the name)")
    p.add_argument("--link", metavar="DEV", help="underlying device (for hardware offload)")
    p.add_argument("--mtu", type=_u32, metavar="N", help="MTU of the interface")
    p.add_argument("--external", action="store_true", default=None, help="collect_md (external) mode")
    p.add_argument("--address", action="append", metavar="CIDR", dest="addresses",
                   help="address to put on the interface; may be repeated")

    p = add("delete", "delete interfaces xfrmid created", [write],
            "Delete interfaces xfrmid created. Refused (exit 4) while connections are attached, "
            "unless --force; refused (exit 6) for interfaces xfrmid adopted. Several names are "
            "deleted in one change, all checked first: if one is refused, none is deleted.")
    p.add_argument("names", metavar="NAME", nargs="+", help="interface name")
    p.add_argument("--force", action="store_true", default=None, help="delete even with connections attached")

    p = add("attach", "reference an interface for a connection, creating it on demand", [read],
            "Reference NAME on behalf of OWNER (a connection name), creating it on demand, and print "
            "the object path, the if_id and the output mark/mask to put on the SAs and policies. "
            "Repeating it for the same OWNER changes nothing.")
    p.add_argument("name", metavar="NAME", help="interface name, e.g. ipsec1")
    p.add_argument("owner", metavar="OWNER", help="who holds the reference (connection name or UUID)")

    p = add("detach", "drop a connection's reference and what it added", [write],
            "Drop OWNER's reference to NAME and the addresses and routes it added. An interface "
            "xfrmid created on demand goes away with its last reference; exit 0 either way.")
    p.add_argument("name", metavar="NAME", help="interface name")
    p.add_argument("owner", metavar="OWNER", help="who held the reference")

    p = add("address", "add or remove an address on an interface", [],
            "Add or remove an address (IPv4 or IPv6, counted per owner: it leaves the kernel "
            "when no owner holds it).")
    _actions(p, write, ("add an address for OWNER", "remove OWNER's claim on an address"),
             ("cidr", "CIDR", "address with prefix, e.g. 192.0.2.1/24 or 2001:db8::1/64"))

    p = add("route", "add or remove a route through an interface", [],
            "Add or remove a route through the interface (IPv4 or IPv6, counted per owner). "
            "0.0.0.0/0 and ::/0 are split so they never replace the default route. With --peer "
            "(the IKE peer inside DESTINATION) the route goes to a dedicated table, looked up by "
            "rules that let packets with the interface's output mark to DESTINATION pass by it, so "
            "ESP and IKE to the peer keep the underlying route.")
    for q in _actions(p, write, ("add a route for OWNER", "remove OWNER's claim on a route"),
                      ("destination", "DESTINATION", "prefix, e.g. 10.0.0.0/8, 0.0.0.0/0 or ::/0")):
        q.add_argument("--table", type=_u32, metavar="N", help="routing table (default: main)")
        q.add_argument("--src", metavar="ADDR", help="preferred source address")
        q.add_argument("--metric", type=_u32, metavar="N", help="route metric")
        q.add_argument("--peer", metavar="ADDR", help="IKE peer address inside DESTINATION (installs the peer pattern)")

    add("reconcile", "compare kernel and desired state now and repair", [read],
        "Compare the kernel with the desired state now, repair differences and print how many "
        "interfaces were created, repaired, adopted and removed.")
    add("reload", "make the daemon re-read its configuration file", [write])
    add("monitor", "print xfrmid's signals as they come (Ctrl-C stops)", [read],
        "Print interfaces appearing, changing and going away as xfrmid announces them, "
        "one line (or one JSON object) per event, until interrupted.")
    return parser
