"""Fixed D-Bus names of the contract and the object paths of interfaces.

Paths are stable for as long as an interface exists with one name in one
network namespace. Labels are escaped the way systemd's sd_bus_path_encode()
does it (``_xx`` hex for anything outside [A-Za-z0-9], a leading digit
included, ``_`` alone for the empty string), so C callers can decode them.
"""

from __future__ import annotations

BUS_NAME = "org.xfrmid1"
MANAGER_PATH = "/org/xfrmid1"
MANAGER_IFACE = "org.xfrmid1.Manager"
INTERFACE_IFACE = "org.xfrmid1.Interface"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"

INTERFACE_PREFIX = MANAGER_PATH + "/interface/"
NETNS_PREFIX = MANAGER_PATH + "/netns/"


def escape_label(text: str) -> str:
    """One object path element for arbitrary text (systemd's bus_label_escape)."""
    if not text:
        return "_"
    if text.isascii() and text.isalnum() and not text[0].isdigit():
        return text  # the usual name (ipsec5): nothing to escape, no loop per byte (every call's reply has a path)
    out = []
    for i, ch in enumerate(text.encode()):
        c = chr(ch)
        if ("A" <= c <= "Z") or ("a" <= c <= "z") or (i > 0 and "0" <= c <= "9"):
            out.append(c)
        else:
            out.append(f"_{ch:02x}")
    return "".join(out)


def unescape_label(label: str) -> str:
    """Reverse escape_label; raises ValueError on text escape_label never produces."""
    if label == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(label):
        c = label[i]
        if c == "_":
            pair = label[i + 1 : i + 3]
            if len(pair) != 2 or any(x not in "0123456789abcdef" for x in pair):
                raise ValueError(f"Object path element {label!r} has a malformed escape.")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw.append(ord(c))
            i += 1
    return raw.decode()


def interface_path(name: str, netns: str | None = None) -> str:
    """Object path of the interface ``name`` in ``netns`` (None or "": the daemon's own)."""
    if netns:
        return f"{NETNS_PREFIX}{escape_label(netns)}/interface/{escape_label(name)}"
    return INTERFACE_PREFIX + escape_label(name)


def parse_interface_path(path: str) -> tuple[str, str]:
    """(netns, name) of an interface object path; netns "" is the daemon's own."""
    if path.startswith(INTERFACE_PREFIX):
        rest = path[len(INTERFACE_PREFIX) :]
        if rest and "/" not in rest:
            return "", unescape_label(rest)
    elif path.startswith(NETNS_PREFIX):
        parts = path[len(NETNS_PREFIX) :].split("/")
        if len(parts) == 3 and parts[1] == "interface" and parts[0] and parts[2]:
            return unescape_label(parts[0]), unescape_label(parts[2])
    raise ValueError(f"{path!r} is not an xfrmid interface object path.")
