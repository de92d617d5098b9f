"""xfrmctl's command line: parsing, --help of every command, exit codes, messages."""

import subprocess
import sys

import pytest

from xfrmid import errors
from xfrmid.cli import exitcodes
from xfrmid.cli.main import main
from xfrmid.cli.parser import build_parser
from xfrmid.client import NotRunning

COMMANDS = [
    ["list"], ["status"], ["create"], ["delete"], ["attach"], ["detach"], ["address"],
    ["address", "add"], ["address", "del"], ["route"], ["route", "add"], ["route", "del"],
    ["reconcile"], ["reload"], ["monitor"],
]


def test_top_level_help_lists_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("list", "status", "create", "delete", "attach", "detach", "address", "route",
                "reconcile", "monitor"):
        assert cmd in out
    assert "exit status" in out and "access denied" in out


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*cmd, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: xfrmctl " + " ".join(cmd))
    assert "exit status" in out or cmd in (["address"], ["route"])


def test_global_and_local_options_mix():
    p = build_parser()
    a = p.parse_args(["--json", "--netns", "blue", "list"])
    assert (a.json, a.netns, a.bus) == (True, "blue", "system")
    a = p.parse_args(["list", "--json", "--netns", "red", "--bus", "session"])
    assert (a.json, a.netns, a.bus) == (True, "red", "session")
    a = p.parse_args(["route", "add", "ipsec1", "c1", "10.0.0.0/8", "--table", "0x32", "--peer", "10.0.0.1",
                      "--metric", "5", "--src", "10.9.9.9"])
    assert (a.table, a.peer, a.metric, a.src) == (50, "10.0.0.1", 5, "10.9.9.9")
    a = p.parse_args(["create", "ipsec3", "--address", "10.0.0.1/24", "--address", "fd00::1/64", "--mtu", "1400"])
    assert a.addresses == ["10.0.0.1/24", "fd00::1/64"] and a.mtu == 1400 and a.if_id == 0


@pytest.mark.parametrize("argv", [[], ["bogus"], ["route", "add", "ipsec1"], ["create", "x", "--mtu", "-1"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == exitcodes.USAGE


def test_exit_codes_distinct_per_class():
    codes = {
        errors.InvalidArgument: 2, errors.NotFound: 3, errors.Conflict: 4, errors.Busy: 4,
        errors.AccessDenied: 5, errors.NotOwned: 6, errors.KernelUnsupported: 7, errors.Failed: 1, NotRunning: 8,
    }
    for cls, code in codes.items():
        assert exitcodes.exit_code(cls("x")) == code


def test_unreachable_bus_is_one_sentence(capsys):
    rc = main(["--bus", "unix:path=/nonexistent/xfrmid-test-bus", "list"])
    err = capsys.readouterr().err
    assert rc == exitcodes.NOT_RUNNING
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("xfrmctl: ")


def test_console_script_module_runs():
    out = subprocess.run([sys.executable, "-m", "xfrmid.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "xfrmctl" in out.stdout


def test_daemon_help_and_bad_level():
    out = subprocess.run([sys.executable, "-m", "xfrmid.daemon", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for opt in ("--bus", "--config", "--log-level", "--state-dir", "--check-kernel"):
        assert opt in out.stdout
    bad = subprocess.run([sys.executable, "-m", "xfrmid.daemon", "--config", "/nonexistent", "--log-level", "loud"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "loud" in bad.stderr


def test_status_without_name_is_the_daemons_status():
    a = build_parser().parse_args(["status"])
    assert a.name is None
    from xfrmid.cli import show

    text = show.daemon_status({
        "Version": "0.1.0", "InterfaceCount": 3, "Pid": 42,
        "KernelFeatures": {"xfrm_interface": True, "collect_md": True, "set_mark_mask": False},
        "Interfaces": [
            {"Name": "ipsec1", "Netns": "", "Owned": True, "Owners": ["a", "b"]},
            {"Name": "ipsec2", "Netns": "", "Owned": False, "Owners": []},
            {"Name": "ipsec1", "Netns": "blue", "Owned": True, "Owners": ["c"]},
        ],
    }, started="Fri 2026-11-27 12:00:00 UTC")
    lines = text.splitlines()
    assert lines[0] == "\u25cf xfrmid - XFRM interface manager (org.xfrmid1)"
    assert "Active: active (running) since Fri 2026-11-27 12:00:00 UTC" in text
    assert "Main PID: 42" in text and "set_mark_mask: NO" in text
    assert "3 managed: 2 created by xfrmid, 1 adopted" in text
    assert "(daemon's own): 2" in text and "blue: 1" in text and "Attachments: 3" in text
    # continuation lines line up under the first value
    kernel = [i for i, line in enumerate(lines) if "Kernel:" in line][0]
    assert lines[kernel + 1].index("set_mark_mask") == lines[kernel].index("collect_md")


def test_process_start_of_this_process_and_of_nobody():
    import os

    from xfrmid.cli import show

    assert show.process_start(os.getpid()) is not None
    assert show.process_start(None) is None
    assert show.process_start(2**22 + 12345) is None
