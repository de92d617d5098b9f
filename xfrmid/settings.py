"""Daemon settings: what /etc/xfrmid/xfrmid.conf can change, with the defaults.

The configuration parser (xfrmid.config) builds one of these; the core only
reads it. Static interfaces declared in the file are desired state just like
runtime promises made over D-Bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .naming import NamePolicy

DEFAULT_STATE_DIR = "/run/xfrmid"
DEFAULT_CONFIG_PATH = "/etc/xfrmid/xfrmid.conf"


@dataclass(frozen=True)
class StaticInterface:
    """An interface declared in the configuration file, created at start and kept."""

    name: str
    if_id: int = 0  # 0: derive from the name
    netns: str | None = None
    link: str | None = None
    mtu: int | None = None
    external: bool = False
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    name_policy: NamePolicy = field(default_factory=NamePolicy)
    default_mtu: int | None = None  # None: the kernel's default
    peer_table: int = 50  # routing table of the design notes' peer pattern
    peer_rule_priority: int = 100  # the first of its four rule priorities (gate, skip, lookup, landing)
    linger: float = 0.0  # seconds an unused on-demand interface survives its last Detach
    state_dir: str = DEFAULT_STATE_DIR
    log_level: str = "info"
    static_interfaces: tuple[StaticInterface, ...] = ()
