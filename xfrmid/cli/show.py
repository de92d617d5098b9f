"""Text output of xfrmctl, in the style of networkctl: aligned, no decoration."""

from __future__ import annotations

import os
import time
from typing import Any

from dbus_fast import Message

from ..bus.names import INTERFACE_IFACE, MANAGER_IFACE
from ..client import unwrap


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def interface_list(objects: list[dict[str, Any]]) -> str:
    rows = [
        [
            o["Name"], str(o["IfId"]), o["Netns"] or "-", o["OperState"],
            "yes" if o["Owned"] else "adopted", ",".join(o["Owners"]) or "-",
        ]
        for o in objects
    ]
    text = table(rows, ["NAME", "IF_ID", "NETNS", "STATE", "OWNED", "OWNERS"])
    return f"{text}\n\n{len(rows)} interface{'s' if len(rows) != 1 else ''} listed."


def interface_status(p: dict[str, Any]) -> str:
    routes = [
        f"{dst}" + (f" table {table_id}" if table_id not in (0, 254) else "") + (f" src {src}" if src else "")
        for dst, table_id, src in p["Routes"]
    ]
    pairs = [
        ("Name", p["Name"]),
        ("Network namespace", p["Netns"] or "(daemon's own)"),
        ("Interface index", p["Ifindex"]),
        ("If id", f"{p['IfId']} (0x{p['IfId']:x})"),
        ("Output mark", f"0x{p['Mark']:x}/0x{p['MarkMask']:x}"),
        ("Underlying link", p["Link"] or "-"),
        ("MTU", p["Mtu"]),
        ("External", "yes" if p["External"] else "no"),
        ("State", p["OperState"]),
        ("Created by xfrmid", "yes" if p["Owned"] else "no (adopted; never deleted by xfrmid)"),
        ("Owners", p["Owners"]),
        ("Addresses", p["Addresses"]),
        ("Routes", routes),
    ]
    return _aligned(pairs)


def process_start(pid: int | None) -> str | None:
    """When ``pid`` started, as systemctl prints it, or None when /proc cannot say.

    The daemon may run in another PID namespace than xfrmctl; then there is no answer.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    started = boot + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(started))


def daemon_status(s: dict[str, Any], started: str | None = None) -> str:
    """The daemon's state in the shape of `systemctl status`: a headline, then aligned facts."""
    interfaces = s.get("Interfaces", [])
    created = sum(1 for o in interfaces if o["Owned"])
    per_netns: dict[str, int] = {}
    for o in interfaces:
        per_netns[o["Netns"] or "(daemon's own)"] = per_netns.get(o["Netns"] or "(daemon's own)", 0) + 1
    owners = sum(len(o["Owners"]) for o in interfaces)
    features = s.get("KernelFeatures", {})
    pairs = [
        ("Active", "active (running)" + (f" since {started}" if started else "")),
        ("Main PID", s["Pid"] if s.get("Pid") is not None else "unknown"),
        ("Version", s.get("Version", "?")),
        ("Kernel", [f"{name}: {'yes' if ok else 'NO'}" for name, ok in sorted(features.items())]),
        ("Interfaces", f"{s.get('InterfaceCount', len(interfaces))} managed: {created} created by xfrmid, "
                       f"{len(interfaces) - created} adopted"),
        ("Namespaces", [f"{ns}: {n}" for ns, n in sorted(per_netns.items())]),
        ("Attachments", owners),
    ]
    return "\n".join(["\u25cf xfrmid - XFRM interface manager (org.xfrmid1)", _aligned(pairs, indent=4)])


def _aligned(pairs: list[tuple[str, Any]], indent: int = 0) -> str:
    width = max(len(k) for k, _ in pairs) + indent
    lines = []
    for key, value in pairs:
        values = value if isinstance(value, list) else [value]
        if not values:
            values = ["-"]
        for i, v in enumerate(values):
            lines.append(f"{(key + ':') if i == 0 else '':>{width + 1}} {v}")
    return "\n".join(lines)


def signal_event(msg: Message) -> dict[str, Any] | None:
    """One monitor event for a signal, or None for signals the monitor does not show."""
    body = [unwrap(b) for b in msg.body]
    if msg.member == "InterfacesAdded" and INTERFACE_IFACE in body[1]:
        props = body[1][INTERFACE_IFACE]
        return {"event": "added", "path": body[0], "properties": props}
    if msg.member == "InterfacesRemoved":
        return {"event": "removed", "path": body[0]}
    if msg.member == "PropertiesChanged" and body[0] in (INTERFACE_IFACE, MANAGER_IFACE):
        kind = "changed" if body[0] == INTERFACE_IFACE else "manager-changed"
        # Owners, Addresses and Routes come named, without their values (invalidated)
        return {"event": kind, "path": msg.path, "properties": body[1], "invalidated": body[2]}
    if msg.member == "Repaired" and msg.interface == INTERFACE_IFACE:
        return {"event": "repaired", "path": msg.path, "what": body[0]}
    return None


def event_line(event: dict[str, Any]) -> str:
    props = event.get("properties", {})
    if event["event"] == "added":
        return f"added    {event['path']} name={props.get('Name')} if_id={props.get('IfId')} owners={','.join(props.get('Owners', []))}"
    if event["event"] == "removed":
        return f"removed  {event['path']}"
    if event["event"] == "repaired":
        return f"repaired {event['path']} {event['what']}"
    changes = " ".join([f"{k}={_short(v)}" for k, v in props.items()]
                       + [f"{k} changed" for k in event.get("invalidated", ())])
    return f"{'changed ' if event['event'] == 'changed' else 'manager '} {event['path']} {changes}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_short(v) for v in value) or "-"
    return str(value)
