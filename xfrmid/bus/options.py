"""Validation of the a{sv} option dictionaries, for every method in one table.

Only the shape is checked here (known key, right D-Bus type); values are
checked by the core, which owns their meaning. Both failures are
InvalidArgument sentences naming the key.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument

# option key -> D-Bus signature, per Manager method (the contract's table)
_NETNS = {"netns": "s"}
OPTIONS: dict[str, dict[str, str]] = {
    "CreateInterface": {**_NETNS, "link": "s", "mtu": "u", "external": "b", "addresses": "as"},
    "DeleteInterface": {**_NETNS, "force": "b"},
    "CreateInterfaces": dict(_NETNS),  # each entry's own: ENTRY_OPTIONS
    "DeleteInterfaces": {**_NETNS, "force": "b"},
    "Attach": {**_NETNS, "bind_to_caller": "b"},
    "Detach": dict(_NETNS),
    "AddAddress": dict(_NETNS),
    "RemoveAddress": dict(_NETNS),
    "AddRoute": {**_NETNS, "table": "u", "src": "s", "metric": "u", "peer": "s"},
    "RemoveRoute": {**_NETNS, "table": "u", "src": "s", "metric": "u", "peer": "s"},
}


# ... and of each entry of a bulk method (the call's own options hold the namespace)
ENTRY_OPTIONS: dict[str, dict[str, str]] = {
    "CreateInterfaces": {"link": "s", "mtu": "u", "external": "b", "addresses": "as"},
}


def parse_options(method: str, options: dict[str, Any], *, entry: bool = False) -> dict[str, Any]:
    """Plain Python values of a method's options (``entry``: of one entry of a bulk
    method), keyed by option name.

    ``options`` maps keys to dbus_fast Variants (as received from the bus).
    """
    allowed = (ENTRY_OPTIONS if entry else OPTIONS).get(method, {})
    result: dict[str, Any] = {}
    for key, variant in options.items():
        want = allowed.get(key)
        if want is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument(f"Option {key!r} is not known to {method} (known options: {known}).")
        got = getattr(variant, "signature", None)
        if got != want:
            raise InvalidArgument(f"Option {key!r} of {method} must have D-Bus type {want!r}, not {got!r}.")
        value = variant.value
        if want == "as":
            value = tuple(value)
        result[key] = value
    return result
