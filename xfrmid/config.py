"""/etc/xfrmid/xfrmid.conf: TOML, read with tomllib, turned into Settings.

    [daemon]       log_level, linger, default_mtu
    [names]        any_name, mark_mask
    [peer_routes]  table, rule_priority
    [[interface]]  name, if_id, link, mtu, external, addresses, netns  (one per interface)

Every error is one InvalidArgument (a ConfigError) whose message names the
file, the line and the key, e.g. "/etc/xfrmid/xfrmid.conf line 7: unknown key
'mtuu' in [[interface]] 'ipsec1'; did you mean 'mtu'?". tomllib does not
report where keys are, so a small scanner of the text finds their lines.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from . import naming, validate
from .errors import Failed, InvalidArgument, NotFound, XfrmidError
from .journal import parse_level
from .settings import DEFAULT_CONFIG_PATH, Settings, StaticInterface

# Route tables the peer pattern must not use: unspec, default, main, local.
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
MAIN_RULE_PRIORITY = 32766  # the peer rules must be consulted before the main table's rule
PEER_RULE_SPAN = 4  # the peer pattern uses rule_priority .. rule_priority + 3
MTU_MIN, MTU_MAX = 68, 65535  # IPv4's minimum; xfrm links cap at IP_MAX_MTU

Path = tuple[Any, ...]  # ("daemon", "log_level") or ("interface", 0, "mtu")


class ConfigError(InvalidArgument):
    """A configuration file error, with where it is."""

    def __init__(self, message: str, path: str, line: int | None = None, key: str | None = None) -> None:
        where = f"{path} line {line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.key = key


# ---------------------------------------------------------------- locating keys

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]\s][^\]]*?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _split_key(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", text)]


def locate(text: str) -> dict[Path, int]:
    """Map table and key paths to the 1-based line they are defined on.

    Array-of-tables entries are numbered in order: ("interface", 0, "mtu").
    Lines inside multi-line strings are not understood; they only lose a
    line number in a message, never change what is parsed.
    """
    lines: dict[Path, int] = {}
    counts: dict[Path, int] = {}
    table: Path = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and not line.lstrip().startswith("#"):
            name = tuple(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                table = (*name, index)
            else:
                table = name
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key and not line.lstrip().startswith("#"):
            lines.setdefault((*table, *_split_key(key.group(1))), number)
    return lines


# ---------------------------------------------------------------- schema

@dataclass(frozen=True)
class _Key:
    check: Callable[[Any], Any]
    field: str  # Settings / StaticInterface field


def _typed(kind: type | tuple[type, ...], words: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise InvalidArgument(f"{_show(value)} is not {words}.")
        if not isinstance(value, kind):
            raise InvalidArgument(f"{_show(value)} is not {words}.")
        return value

    return check


def _show(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else repr(value)


def _mtu(value: Any) -> int:
    _typed(int, "an integer")(value)
    if not MTU_MIN <= value <= MTU_MAX:
        raise InvalidArgument(f"MTU {value} is outside {MTU_MIN}..{MTU_MAX}.")
    return value


def _linger(value: Any) -> float:
    _typed((int, float), "a number of seconds")(value)
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgument(f"linger {value!r} is not a number of seconds of 0 or more.")
    return float(value)


def _log_level(value: Any) -> str:
    parse_level(value)
    return value.strip().lower()


def _table(value: Any) -> int:
    naming.check_u32("Route table", value)
    if value in RESERVED_TABLES:
        raise InvalidArgument(
            f"Route table {value} is the {RESERVED_TABLES[value]} table; "
            "the peer pattern needs a table of its own (e.g. 50)."
        )
    return value


def _priority(value: Any) -> int:
    naming.check_u32("Rule priority", value)
    highest = MAIN_RULE_PRIORITY - PEER_RULE_SPAN
    if not 0 < value <= highest:
        raise InvalidArgument(
            f"Rule priority {value} must be from 1 to {highest}, "
            f"so the peer pattern's rules ({value}..{value + PEER_RULE_SPAN - 1}) come before the main table's."
        )
    return value


def _addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidArgument(f"{_show(value)} is not a list of addresses like [\"192.0.2.1/24\"].")
    cidrs = tuple(validate.parse_interface_cidr(item) for item in value)
    return tuple(dict.fromkeys(cidrs))  # a repeated address is the same address


def _ifname(value: Any) -> str:
    return naming.check_ifname(value)


SECTIONS: dict[str, dict[str, _Key]] = {
    "daemon": {
        "log_level": _Key(_log_level, "log_level"),
        "linger": _Key(_linger, "linger"),
        "default_mtu": _Key(_mtu, "default_mtu"),
    },
    "names": {
        "any_name": _Key(_typed(bool, "true or false"), "any_name"),
        "mark_mask": _Key(naming.check_mask, "mark_mask"),
    },
    "peer_routes": {
        "table": _Key(_table, "peer_table"),
        "rule_priority": _Key(_priority, "peer_rule_priority"),
    },
}
INTERFACE_KEYS: dict[str, _Key] = {
    "name": _Key(_ifname, "name"),
    "if_id": _Key(naming.check_if_id, "if_id"),
    "link": _Key(_ifname, "link"),
    "mtu": _Key(_mtu, "mtu"),
    "external": _Key(_typed(bool, "true or false"), "external"),
    "addresses": _Key(_addresses, "addresses"),
    "netns": _Key(validate.check_netns, "netns"),
}


# ---------------------------------------------------------------- parsing

class _Reader:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.lines = locate(text)

    def error(self, message: str, where: Path, key: str | None = None) -> ConfigError:
        line = None
        for cut in range(len(where), 0, -1):  # the key's line, else its table's
            line = self.lines.get(where[:cut])
            if line:
                break
        return ConfigError(message, self.path, line, key)

    def unknown(self, key: str, known: list[str], where: Path, section: str) -> ConfigError:
        guess = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else f"; known keys: {', '.join(known)}."
        return self.error(f"unknown key '{key}' in {section}{hint}", (*where, key), key)

    def check(self, spec: _Key, value: Any, where: Path, key: str, section: str) -> Any:
        try:
            return spec.check(value)
        except XfrmidError as exc:
            raise self.error(f"key '{key}' in {section}: {exc}", (*where, key), key) from None


def _section_values(reader: _Reader, data: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, table in data.items():
        if name == "interface":
            continue
        if name not in SECTIONS:
            owner = next((s for s, keys in SECTIONS.items() if name in keys), None)
            if owner is not None or name in INTERFACE_KEYS:
                home = f"[{owner}]" if owner else "[[interface]]"
                raise reader.error(f"key '{name}' belongs in {home}.", (name,), name)
            guess = difflib.get_close_matches(name, [*SECTIONS, "interface"], n=1)
            hint = f"; did you mean [{guess[0]}]?" if guess else f"; sections are {', '.join(f'[{s}]' for s in SECTIONS)} and [[interface]]."
            raise reader.error(f"unknown section [{name}]{hint}", (name,), name)
        if not isinstance(table, dict):
            raise reader.error(f"'{name}' must be a section [{name}], not a value.", (name,), name)
        for key, value in table.items():
            spec = SECTIONS[name].get(key)
            if spec is None:
                raise reader.unknown(key, list(SECTIONS[name]), (name,), f"[{name}]")
            values[spec.field] = reader.check(spec, value, (name,), key, f"[{name}]")
    return values


def _interface(reader: _Reader, index: int, table: Any, policy: naming.NamePolicy) -> StaticInterface:
    where: Path = ("interface", index)
    if not isinstance(table, dict):
        raise reader.error("'interface' must be written as [[interface]] tables.", ("interface",), "interface")
    raw_name = table.get("name")
    label = f"[[interface]] '{raw_name}'" if isinstance(raw_name, str) and raw_name else f"[[interface]] #{index + 1}"
    values: dict[str, Any] = {}
    for key, value in table.items():
        spec = INTERFACE_KEYS.get(key)
        if spec is None:
            raise reader.unknown(key, list(INTERFACE_KEYS), where, label)
        values[spec.field] = reader.check(spec, value, where, key, label)
    if "name" not in values:
        raise reader.error(f"{label} has no 'name'.", where, "name")
    name = values["name"]
    if values.get("external"):
        # The kernel's rule for collect_md links: no underlying device, if_id 0;
        # the if_id comes from each SA's metadata instead.
        for key in ("link", "if_id"):
            if key in values:
                raise reader.error(
                    f"key '{key}' in {label}: an external (collect_md) interface takes neither link nor if_id.",
                    (*where, key),
                    key,
                )
        values["if_id"] = 0
    else:
        try:
            identity = naming.resolve(name, values.get("if_id", 0), policy)
        except XfrmidError as exc:
            key = "if_id" if "if_id" in values else "name"
            raise reader.error(f"key '{key}' in {label}: {exc}", (*where, key), key) from None
        values["if_id"] = identity.if_id
    return StaticInterface(**values)


def _check_unique(reader: _Reader, interfaces: list[StaticInterface]) -> None:
    seen_names: dict[tuple[str | None, str], int] = {}
    seen_ids: dict[tuple[str | None, int], str] = {}
    external: dict[str | None, str] = {}
    for index, iface in enumerate(interfaces):
        where: Path = ("interface", index)
        ns = f" in network namespace '{iface.netns}'" if iface.netns else ""
        if (iface.netns, iface.name) in seen_names:
            raise reader.error(f"interface '{iface.name}'{ns} is declared twice.", (*where, "name"), "name")
        seen_names[(iface.netns, iface.name)] = index
        if iface.external:
            if iface.netns in external:
                raise reader.error(
                    f"interface '{iface.name}'{ns}: '{external[iface.netns]}' is already the external "
                    "interface there, and the kernel allows one per network namespace.",
                    (*where, "external"),
                    "external",
                )
            external[iface.netns] = iface.name
        elif (iface.netns, iface.if_id) in seen_ids:
            other = seen_ids[(iface.netns, iface.if_id)]
            raise reader.error(
                f"interface '{iface.name}'{ns}: if_id {iface.if_id} is already used by '{other}'.",
                (*where, "if_id" if (*where, "if_id") in reader.lines else "name"),
                "if_id",
            )
        else:
            seen_ids[(iface.netns, iface.if_id)] = iface.name


def loads(text: str, path: str = DEFAULT_CONFIG_PATH, base: Settings | None = None) -> Settings:
    """Settings from configuration text; ``base`` supplies what the file does not set."""
    base = base or Settings()
    reader = _Reader(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, path) from None
    values = _section_values(reader, data)
    policy = naming.NamePolicy(
        any_name=values.pop("any_name", base.name_policy.any_name),
        mark_mask=values.pop("mark_mask", base.name_policy.mark_mask),
    )
    tables = data.get("interface", [])
    if not isinstance(tables, list):
        raise reader.error("'interface' must be written as [[interface]] tables.", ("interface",), "interface")
    interfaces = [_interface(reader, i, table, policy) for i, table in enumerate(tables)]
    _check_unique(reader, interfaces)
    return replace(base, name_policy=policy, static_interfaces=tuple(interfaces), **values)


def _syntax_error(exc: tomllib.TOMLDecodeError, path: str) -> ConfigError:
    text = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
    if match:
        reason = text[: match.start()]
        return ConfigError(f"{reason} (column {match.group(2)}); this is not valid TOML.", path, int(match.group(1)))
    reason = re.sub(r"\s*\(at end of document\)$", "", text)
    return ConfigError(f"{reason} at the end of the file; this is not valid TOML.", path)


def load(path: str = DEFAULT_CONFIG_PATH, base: Settings | None = None) -> Settings:
    """Settings from a configuration file.

    Raises NotFound when it does not exist, Failed when it cannot be read,
    ConfigError (an InvalidArgument) when it is wrong.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise NotFound(f"Configuration file {path} does not exist.") from None
    except OSError as exc:
        raise Failed(f"Configuration file {path} cannot be read: {exc.strerror}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not UTF-8 text.", path, line) from None
    return loads(text, path, base)


def load_or_default(path: str = DEFAULT_CONFIG_PATH, base: Settings | None = None) -> Settings:
    """load(), but a missing file means the built-in defaults."""
    try:
        return load(path, base)
    except NotFound:
        return base or Settings()
