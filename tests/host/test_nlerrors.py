"""nlerrors: what the kernel's EOPNOTSUPP means depends on what was asked."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

from xfrmid.errors import InvalidArgument, KernelUnsupported
from xfrmid.kernel.nlerrors import NO_XFRM_KIND, translate


def test_creating_a_link_of_an_unknown_kind_says_which_module_to_load():
    # the kernel's "Unknown device type": xfrm_interface is not loaded and cannot be
    err = translate(NetlinkError(errno.EOPNOTSUPP), "Creating interface 'ipsec1' in namespace 'blue'",
                    unsupported=NO_XFRM_KIND)
    assert type(err) is KernelUnsupported and err.dbus_name == "org.xfrmid1.Error.KernelUnsupported"
    text = str(err)
    assert text.startswith("Creating interface 'ipsec1' in namespace 'blue' failed: the running kernel has no XFRM")
    assert "xfrm_interface" in text and "CONFIG_XFRM_INTERFACE" in text
    assert text.endswith(".") and text.count(". ") == 0 and "\n" not in text


def test_the_override_only_applies_to_eopnotsupp():
    err = translate(NetlinkError(errno.EINVAL), "Creating interface 'ipsec1'", unsupported=NO_XFRM_KIND)
    assert type(err) is InvalidArgument and "XFRM" not in str(err)
    generic = translate(NetlinkError(errno.EOPNOTSUPP), "Adding route 10.0.0.0/8")
    assert type(generic) is KernelUnsupported and "does not support" in str(generic)
