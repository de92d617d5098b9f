"""dbus/org.xfrmid1.xml against the exported objects and the contract's names."""

from pathlib import Path

from xfrmid.bus.introspection import interfaces_of
from xfrmid.bus.objects import InterfaceObject, ManagerInterface
from xfrmid.core.views import InterfaceInfo

XML = Path(__file__).resolve().parents[2] / "dbus" / "org.xfrmid1.xml"

INFO = InterfaceInfo("ipsec1", 1, "", 5, "", 1500, False, "up", True, (), (), (), 1, 0xFFFFFFFF)



def _node_xml(obj) -> str:
    import xml.etree.ElementTree as ET

    node = ET.Element("node")
    node.append(obj.introspect().to_xml())
    return ET.tostring(node, encoding="unicode")


def test_file_matches_the_exported_interfaces():
    file = interfaces_of(XML.read_text())
    assert file["org.xfrmid1.Manager"] == interfaces_of(_node_xml(ManagerInterface(None, None)))["org.xfrmid1.Manager"]
    assert file["org.xfrmid1.Interface"] == interfaces_of(_node_xml(InterfaceObject(INFO)))["org.xfrmid1.Interface"]


def test_contract_names_and_signatures():
    file = interfaces_of(XML.read_text())
    sigs = {name: ("".join(t for _, t in ins), out) for name, (ins, out) in file["org.xfrmid1.Manager"]["methods"].items()}
    assert sigs == {
        "CreateInterface": ("sua{sv}", "o"),
        "DeleteInterface": ("sa{sv}", ""),
        "CreateInterfaces": ("a(sua{sv})a{sv}", "ao"),  # bulk creation
        "DeleteInterfaces": ("asa{sv}", ""),  # bulk deletion (an addition to the contract)
        "Attach": ("ssa{sv}", "ouuu"),
        "Detach": ("ssa{sv}", "b"),
        "AddAddress": ("sssa{sv}", ""),
        "RemoveAddress": ("sssa{sv}", ""),
        "AddRoute": ("sssa{sv}", ""),
        "RemoveRoute": ("sssa{sv}", ""),
        "ListInterfaces": ("", "a(suso)"),
        "Reconcile": ("", "a{sv}"),
        "Reload": ("", ""),
    }
    assert file["org.xfrmid1.Manager"]["properties"] == {
        "Version": ("s", "read"), "KernelFeatures": ("a{sb}", "read"), "InterfaceCount": ("u", "read"),
    }
    assert {k: v[0] for k, v in file["org.xfrmid1.Interface"]["properties"].items()} == {
        "Name": "s", "IfId": "u", "Netns": "s", "Ifindex": "i", "Link": "s", "Mtu": "u", "External": "b",
        "OperState": "s", "Owned": "b", "Owners": "as", "Addresses": "as", "Routes": "a(sus)", "Mark": "u",
        "MarkMask": "u",
    }
    # big, fast-changing lists are invalidated in PropertiesChanged, not sent (an addition to the contract)
    invalidates = {"org.freedesktop.DBus.Property.EmitsChangedSignal": "invalidates"}
    assert file["org.xfrmid1.Interface"]["annotations"] == {
        "Owners": invalidates, "Addresses": invalidates, "Routes": invalidates,
    }
    assert file["org.xfrmid1.Interface"]["signals"] == {"Repaired": "s"}  # drift repaired
    assert file["org.freedesktop.DBus.ObjectManager"]["signals"] == {
        "InterfacesAdded": "oa{sa{sv}}", "InterfacesRemoved": "oas",
    }
