"""xfrmid-updown's namespace detection, without the capabilities to read other processes' ns/net.

The kernel test (test_updown.test_namespace_found_with_plutos_capabilities) runs it for
real under pluto's capability set; here the decisions on a file tree shaped like /proc and
/run/netns.
"""

import os

import pytest

from xfrmid.errors import InvalidArgument
from xfrmid.integrations import netns_identify
from xfrmid.integrations.netns_identify import name_of, own_netns, shares_namespace_with


def identity(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_name_of_finds_the_entry_bound_to_the_namespace(tmp_path):
    for name in ("blue", "red"):
        (tmp_path / name).write_text("")
    assert name_of(identity(tmp_path / "red"), tmp_path) == "red"
    assert name_of((0, 0), tmp_path) is None
    assert name_of(identity(tmp_path / "red"), tmp_path / "missing") is None


def fake_proc(tmp_path, same: bool):
    """/proc/self and /proc/42 with ns/net (which refuses pid 42, as for pluto's children) and net/dev."""
    for pid in ("self", "42"):
        (tmp_path / pid / "ns").mkdir(parents=True)
        (tmp_path / pid / "net").mkdir()
    (tmp_path / "self/ns/net").write_text("")
    (tmp_path / "self/net/dev").write_text("")
    if same:
        os.link(tmp_path / "self/net/dev", tmp_path / "42/net/dev")
    else:
        (tmp_path / "42/net/dev").write_text("")
    (tmp_path / "42/ns/net").write_text("")
    return tmp_path


@pytest.fixture
def refuse_ns_net(monkeypatch):
    real = netns_identify._identity

    def identity_(path):
        if str(path).endswith("42/ns/net"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(netns_identify, "_identity", identity_)


@pytest.mark.parametrize("same", [True, False])
def test_shares_namespace_through_proc_net_when_ns_net_is_refused(tmp_path, refuse_ns_net, same):
    assert shares_namespace_with(42, fake_proc(tmp_path, same)) is same


def test_shares_namespace_cannot_tell_for_a_missing_process(tmp_path):
    assert shares_namespace_with(99, tmp_path) is None


def test_own_netns_here(tmp_path, monkeypatch):
    # this process's namespace has no name in an empty directory, and it is its own pid's
    assert own_netns(os.getpid(), tmp_path) is None
    assert own_netns(None, tmp_path) is None
    # a daemon in another namespace: one sentence naming the way out
    monkeypatch.setattr(netns_identify, "shares_namespace_with", lambda pid: False)
    with pytest.raises(InvalidArgument) as err:
        own_netns(1, tmp_path)
    assert "has no name under" in str(err.value) and "--netns" in str(err.value)
