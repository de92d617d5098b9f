"""What the running kernel can do for xfrmid (``Features``), and what is missing.

A plain value: probe.py fills it in by trying for real; the core and the
bus layer read it. The kernel versions where each feature arrived are here,
for the probe's fall-back guess and for the explanations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_XFRM_INTERFACE = (4, 19)
MIN_SET_MARK_MASK = (4, 20)
MIN_COLLECT_MD = (6, 1)


@dataclass(frozen=True)
class Features:
    """What the running kernel supports."""

    xfrm_interface: bool
    collect_md: bool
    set_mark_mask: bool
    kernel: str  # uname release
    modprobe: str = ""  # what `modprobe xfrm_interface` said, "" if it worked
    method: str = "probe"  # "probe": tried for real; "guess": from /sys and versions

    def as_dict(self) -> dict[str, bool]:
        """The D-Bus KernelFeatures property (a{sb})."""
        return {
            "xfrm_interface": self.xfrm_interface,
            "collect_md": self.collect_md,
            "set_mark_mask": self.set_mark_mask,
        }

    def explanation(self) -> str | None:
        """One sentence saying what is missing and what to do, or None if nothing is."""
        return missing_explanation(self)


def missing_explanation(features: Features) -> str | None:
    if features.xfrm_interface:
        return None
    said = f" (modprobe xfrm_interface: {features.modprobe})" if features.modprobe else ""
    return (
        f"Kernel {features.kernel} has no XFRM interfaces{said}: load the xfrm_interface module, "
        "or boot a kernel built with CONFIG_XFRM_INTERFACE (Linux 4.19 or later)."
    )


def kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)
