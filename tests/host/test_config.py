"""xfrmid.config: the TOML file, its defaults, and errors that name the line and key."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from xfrmid import config
from xfrmid.config import ConfigError, load, load_or_default, loads, locate
from xfrmid.errors import Failed, InvalidArgument, NotFound
from xfrmid.naming import NamePolicy
from xfrmid.settings import Settings, StaticInterface

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "xfrmid.conf"


def parse(text: str) -> Settings:
    return loads(textwrap.dedent(text), "xfrmid.conf")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert isinstance(info.value, InvalidArgument)
    assert "\n" not in str(info.value)  # one message
    return info.value


# ------------------------------------------------------------------ good files

def test_empty_file_is_defaults():
    assert parse("") == Settings()


def test_shipped_file_is_defaults():
    assert load(str(SHIPPED)) == Settings()


def test_shipped_examples_parse_and_show_the_defaults():
    # Uncomment every example line: the daemon settings shown must be the defaults.
    text = re.sub(r"(?m)^#(?=[\[a-z])", "", SHIPPED.read_text())
    got = loads(text, "example")
    defaults = Settings()
    assert (got.log_level, got.linger, got.name_policy, got.peer_table, got.peer_rule_priority) == (
        defaults.log_level,
        defaults.linger,
        defaults.name_policy,
        defaults.peer_table,
        defaults.peer_rule_priority,
    )
    assert [i.name for i in got.static_interfaces] == ["ipsec1", "ipsec-ext"]


def test_full_file():
    got = parse(
        """
        [daemon]
        log_level = "DEBUG"
        linger = 2.5
        default_mtu = 1400

        [names]
        any_name = true
        mark_mask = 0x00ffffff

        [peer_routes]
        table = 60
        rule_priority = 200

        [[interface]]
        name = "ipsec0"
        addresses = ["192.0.2.1/24", "2001:db8::1", "192.0.2.1/24"]

        [[interface]]
        name = "vpn-office"
        if_id = 0x10000
        link = "eth0"
        mtu = 1380
        netns = "blue"

        [[interface]]
        name = "ext"
        external = true
        """
    )
    assert got.log_level == "debug" and got.linger == 2.5 and got.default_mtu == 1400
    assert got.name_policy == NamePolicy(any_name=True, mark_mask=0x00FFFFFF)
    assert (got.peer_table, got.peer_rule_priority) == (60, 200)
    assert got.static_interfaces == (
        StaticInterface(name="ipsec0", if_id=16384, addresses=("192.0.2.1/24", "2001:db8::1/128")),
        StaticInterface(name="vpn-office", if_id=0x10000, link="eth0", mtu=1380, netns="blue"),
        StaticInterface(name="ext", if_id=0, external=True),
    )


def test_dotted_keys_and_inline_tables():
    got = parse(
        """
        daemon.log_level = "warning"
        names = { any_name = true }
        interface = [{ name = "a", if_id = 5 }]
        """
    )
    assert got.log_level == "warning" and got.name_policy.any_name
    assert got.static_interfaces == (StaticInterface(name="a", if_id=5),)


def test_base_settings_are_kept():
    base = Settings(state_dir="/tmp/x", log_level="debug")
    got = loads("[daemon]\nlinger = 1\n", "f", base)
    assert got.state_dir == "/tmp/x" and got.log_level == "debug" and got.linger == 1.0


def test_same_name_in_two_namespaces():
    got = parse(
        """
        [[interface]]
        name = "ipsec1"
        [[interface]]
        name = "ipsec1"
        netns = "blue"
        """
    )
    assert len(got.static_interfaces) == 2


# ------------------------------------------------------------------ errors name line and key

def test_typo_in_interface_key():
    exc = error(
        """\
        # comment
        [daemon]
        log_level = "info"

        [[interface]]
        name = "ipsec1"
        mtuu = 1400
        """
    )
    assert str(exc) == "xfrmid.conf line 7: unknown key 'mtuu' in [[interface]] 'ipsec1'; did you mean 'mtu'?"
    assert (exc.line, exc.key) == (7, "mtuu")


def test_typo_in_section_name():
    exc = error("[deamon]\nlog_level = 'info'\n")
    assert str(exc) == "xfrmid.conf line 1: unknown section [deamon]; did you mean [daemon]?"


def test_key_outside_its_section():
    exc = error("\nlinger = 3\n")
    assert str(exc) == "xfrmid.conf line 2: key 'linger' belongs in [daemon]."


def test_unknown_key_without_a_guess_lists_known_keys():
    exc = error("[peer_routes]\nzzz = 1\n")
    assert str(exc).startswith("xfrmid.conf line 2: unknown key 'zzz' in [peer_routes]; known keys: table, rule_priority")


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("[daemon]\nlog_level = 'loud'\n", 2, "log_level", "Log level 'loud'"),
        ("[daemon]\nlinger = -1\n", 2, "linger", "linger -1"),
        ("[daemon]\nlinger = nan\n", 2, "linger", "linger nan"),
        ("[daemon]\nlinger = '5s'\n", 2, "linger", "'5s' is not a number of seconds"),
        ("[daemon]\ndefault_mtu = 40\n", 2, "default_mtu", "MTU 40 is outside 68..65535"),
        ("[names]\nany_name = 1\n", 2, "any_name", "1 is not true or false"),
        ("[names]\n\nmark_mask = 0\n", 3, "mark_mask", "Mark mask 0 "),
        ("[peer_routes]\ntable = 254\n", 2, "table", "main table"),
        ("[peer_routes]\nrule_priority = 32763\n", 2, "rule_priority", "1 to 32762"),
        ("[[interface]]\nname = 'eth0'\n", 2, "name", "not of the form ipsec<N>"),
        ("[[interface]]\nname = 'ipsec2'\nif_id = 3\n", 3, "if_id", "implies if_id 2"),
        ("[[interface]]\nname = 'ipsec1'\nmtu = true\n", 3, "mtu", "true is not an integer"),
        ("[[interface]]\nname = 'ipsec1'\naddresses = '10.0.0.1'\n", 3, "addresses", "not a list"),
        ("[[interface]]\nname = 'ipsec1'\naddresses = ['10.0.0.300/8']\n", 3, "addresses", "'10.0.0.300/8'"),
        ("[[interface]]\nname = 'ipsec1'\nnetns = 'a/b'\n", 3, "netns", "'a/b'"),
        ("[[interface]]\nname = 'has space'\n", 2, "name", "white space"),
        ("[[interface]]\nif_id = 4\n", 1, "name", "has no 'name'"),
        ("[[interface]]\nname = 'x'\nexternal = true\nlink = 'eth0'\n", 4, "link", "neither link nor if_id"),
        ("[names]\nmark_mask = 0xff\n[[interface]]\nname = 'ipsec300'\n", 4, "name", "does not fit the mark mask"),
    ],
)
def test_bad_values(text, line, key, fragment):
    exc = error(text)
    assert exc.line == line and exc.key == key, str(exc)
    assert str(exc).startswith(f"xfrmid.conf line {line}: key '{key}'") or "has no 'name'" in str(exc)
    assert fragment in str(exc)


def test_duplicates():
    exc = error("[[interface]]\nname = 'ipsec1'\n[[interface]]\nname = 'ipsec1'\n")
    assert str(exc) == "xfrmid.conf line 4: interface 'ipsec1' is declared twice."
    exc = error("[names]\nany_name = true\n[[interface]]\nname = 'ipsec1'\n[[interface]]\nname = 'a'\nif_id = 1\n")
    assert str(exc) == "xfrmid.conf line 7: interface 'a': if_id 1 is already used by 'ipsec1'."
    exc = error("[[interface]]\nname = 'x1'\nexternal = true\n[[interface]]\nname = 'x2'\nexternal = true\n")
    assert exc.line == 6 and "one per network namespace" in str(exc)


def test_section_written_as_value():
    assert str(error("daemon = 3\n")) == "xfrmid.conf line 1: 'daemon' must be a section [daemon], not a value."
    assert "[[interface]] tables" in str(error("interface = 3\n"))
    assert "[[interface]] tables" in str(error("interface = [1]\n"))


def test_syntax_error_has_line():
    exc = error("[daemon]\nlog_level = verbose\n")
    assert exc.line == 2
    assert str(exc).startswith("xfrmid.conf line 2: Invalid value (column 13)")
    exc = error("[daemon]\nlog_level = 'info'\nlog_level = 'debug'\n")
    assert exc.line == 3
    exc = error("[daemon]\nlog_level = 'info")
    assert str(exc).startswith("xfrmid.conf")


# ------------------------------------------------------------------ files

def test_load_missing_and_default(tmp_path):
    missing = str(tmp_path / "none.conf")
    with pytest.raises(NotFound, match="none.conf does not exist"):
        load(missing)
    assert load_or_default(missing) == Settings()
    base = Settings(state_dir="/x")
    assert load_or_default(missing, base) is base


def test_load_names_the_path(tmp_path):
    path = tmp_path / "xfrmid.conf"
    path.write_text("[daemon]\nlog_levle = 'info'\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} line 2: unknown key 'log_levle' in \[daemon\]; did you mean 'log_level'\?$"):
        load_or_default(str(path))


def test_load_not_utf8(tmp_path):
    path = tmp_path / "xfrmid.conf"
    path.write_bytes(b"[daemon]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="line 2: the file is not UTF-8"):
        load(str(path))


def test_load_directory(tmp_path):
    with pytest.raises(Failed, match="cannot be read"):
        load(str(tmp_path))


def test_locate():
    lines = locate('a = 1\n[x]\n"q.r" = 2\ny . z = 3\n[[i]]\nk=1\n[[i]]\n  k = 2 # c\n# k = 3\n')
    assert lines[("a",)] == 1 and lines[("x",)] == 2
    assert lines[("x", "q.r")] == 3 and lines[("x", "y", "z")] == 4
    assert lines[("i", 0, "k")] == 6 and lines[("i", 1, "k")] == 8


# ------------------------------------------------------------------ properties

_any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@hsettings(max_examples=300, deadline=None)
@given(_any_text)
def test_any_text_gives_settings_or_one_config_error(text):
    try:
        got = loads(text, "f")
    except ConfigError as exc:
        assert str(exc).startswith("f")
        assert "\n" not in str(exc)
    else:
        assert isinstance(got, Settings)


_keys = st.sampled_from(
    ["name", "if_id", "link", "mtu", "external", "addresses", "netns", "mtuu", "ifid", "adresses"]
)
_values = st.one_of(
    st.integers(-2, 2**33),
    st.booleans(),
    st.sampled_from(["ipsec1", "ipsec0", "eth0", "", "a/b", "blue", "10.0.0.1/8"]),
    st.lists(st.sampled_from(["10.0.0.1/8", "::1", "bad"]), max_size=2),
)


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5), st.integers(0, 5))
def test_interface_errors_point_at_a_key_line(table, blank_lines):
    import tomllib

    body = "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
    text = "\n" * blank_lines + "[[interface]]\n" + body
    tomllib.loads(text)  # the generator writes valid TOML
    try:
        got = loads(text, "f")
    except ConfigError as exc:
        assert exc.line is not None and blank_lines < exc.line <= blank_lines + 1 + len(table)
        if exc.key is not None and exc.key in table:
            assert text.splitlines()[exc.line - 1].startswith(f"{exc.key} =")
    else:
        (iface,) = got.static_interfaces
        assert iface.name == table["name"]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@given(st.integers(1, 0xFFFFFFFF))
def test_ipsec_names_round_trip(n):
    name = f"ipsec{n}" if n != 16384 else "ipsec0"
    (iface,) = parse(f"[[interface]]\nname = '{name}'\n").static_interfaces
    assert iface.if_id == n
