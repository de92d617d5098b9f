"""Man pages: render cleanly and describe the commands, options and keys that exist."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xfrmid import config
from xfrmid.cli.parser import build_parser as xfrmctl_parser
from xfrmid.daemon import build_parser as xfrmid_parser

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = ["xfrmid.8", "xfrmctl.8", "xfrmid.conf.5"]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        pytest.fail(f"{cmd[0]} is not installed; run 'make deps'")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"})


def rendered(page: str) -> str:
    result = _run("man", "-l", str(MAN / page))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("page", PAGES)
def test_renders_with_man(page):
    text = rendered(page)
    assert "NAME" in text and "SEE ALSO" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("page", PAGES)
def test_groff_has_no_warnings(page):
    result = _run("groff", "-ww", "-z", "-man", str(MAN / page))
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_is_clean(page):
    result = _run("mandoc", "-T", "lint", "-W", "all", str(MAN / page))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def _subcommands(parser) -> dict[str, object]:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return dict(action.choices)
    return {}


def _long_options(parser) -> set[str]:
    """Documented long options (help=SUPPRESS marks testing-only ones, left out of --help too)."""
    return {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings if o.startswith("--")}


def test_xfrmctl_page_covers_the_cli():
    text = rendered("xfrmctl.8")
    parser = xfrmctl_parser()
    options = _long_options(parser)
    for name, sub in _subcommands(parser).items():
        assert re.search(rf"^\s+{name}\b", text, re.M), f"command {name} missing from xfrmctl(8)"
        options |= _long_options(sub)
        for action_name, action in _subcommands(sub).items():
            assert f"{name} {action_name}" in text
            options |= _long_options(action)
    for option in options - {"--help"}:
        assert option in text, f"option {option} missing from xfrmctl(8)"


def test_xfrmid_page_covers_the_options():
    text = rendered("xfrmid.8")
    for option in _long_options(xfrmid_parser()):
        assert option in text, f"option {option} missing from xfrmid(8)"


def test_conf_page_covers_every_key():
    text = rendered("xfrmid.conf.5")
    for section, keys in config.SECTIONS.items():
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^\s+{key}=", text, re.M), f"{section}.{key} missing from xfrmid.conf(5)"
    for key in config.INTERFACE_KEYS:
        assert re.search(rf"^\s+{key}=", text, re.M), f"interface key {key} missing"
