"""Reading introspection XML into comparable shapes (the contract check)."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def interfaces_of(xml_text: str) -> dict[str, dict[str, object]]:
    """interface name -> {"methods": {name: (in args, out sig)}, "signals": {...}, "properties": {name: (type, access)},
    "annotations": {property name: {annotation: value}} (properties that have any)}.

    In args are (name, type) pairs, so a renamed argument shows up; the DOCTYPE
    and comments are ignored.
    """
    root = ET.fromstring(xml_text.split("?>", 1)[-1] if xml_text.lstrip().startswith("<?xml") else xml_text)
    result: dict[str, dict[str, object]] = {}
    for iface in root.findall("interface"):
        methods = {}
        for m in iface.findall("method"):
            args = m.findall("arg")
            ins = tuple((a.get("name"), a.get("type")) for a in args if a.get("direction", "in") == "in")
            outs = "".join(a.get("type") for a in args if a.get("direction") == "out")
            methods[m.get("name")] = (ins, outs)
        signals = {s.get("name"): "".join(a.get("type") for a in s.findall("arg")) for s in iface.findall("signal")}
        props = {p.get("name"): (p.get("type"), p.get("access")) for p in iface.findall("property")}
        notes = {p.get("name"): {a.get("name"): a.get("value") for a in p.findall("annotation")}
                 for p in iface.findall("property") if p.find("annotation") is not None}
        result[iface.get("name")] = {"methods": methods, "signals": signals, "properties": props,
                                     "annotations": notes}
    return result
