"""The state file's journal: small appends that keep the crash-safety of whole-file writes.

A call appends one compact record per changed interface and fsyncs it; the
journal is compacted into a fresh snapshot (temp file, fsync, rename) when it
outgrows the snapshot. A crash at any point of any write leaves a file that
loads to the state before or after that write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import replace
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from xfrmid.core.desired import DesiredInterface, Owner
from xfrmid.core.desired_state import DesiredState
from xfrmid.core.manager import Manager
from xfrmid.core.routes_policy import RouteRequest
from xfrmid.core import store as store_module
from xfrmid.core import store_image
from xfrmid.core.store import StateStore
from xfrmid.errors import Failed
from xfrmid.settings import Settings

from fake_kernel import FakeKernel


def canonical(data: dict | None) -> dict:
    """A loaded file as the desired state it stands for (order-free)."""
    return DesiredState.from_json(data or {}).to_json()


def lines(store: StateStore) -> list[str]:
    return store.path.read_text().splitlines()


@pytest.fixture
def kernel():
    return FakeKernel()


async def test_a_call_appends_one_compact_record(manager, settings):
    store = manager.store
    await manager.attach("ipsec1", "a")
    size = store.path.stat().st_size
    await manager.add_address("ipsec1", "a", "192.0.2.1/24")
    record = json.loads(lines(store)[-1])
    assert record["key"] == [None, "ipsec1"] and record["iface"]["owners"]["a"]["addresses"] == ["192.0.2.1/24"]
    assert " " not in lines(store)[-1]  # compact: no indent, no spaces
    assert store.path.stat().st_size - size == len(lines(store)[-1]) + 1
    assert canonical(StateStore.in_dir(settings.state_dir).load()) == manager.desired.to_json()


async def test_idempotent_calls_write_nothing(manager):
    await manager.attach("ipsec2", "a", caller=":1.5")
    await manager.add_address("ipsec2", "a", "192.0.2.2/24")
    before = (manager.store.path.read_bytes(), manager.store.bytes_written, manager.store.appends)
    await manager.attach("ipsec2", "a", caller=":1.5")  # same owner, same binding
    await manager.add_address("ipsec2", "a", "192.0.2.2/24")
    await manager.detach("ipsec2", "nobody")
    assert (manager.store.path.read_bytes(), manager.store.bytes_written, manager.store.appends) == before
    await manager.attach("ipsec2", "a")  # the binding changes: written
    assert manager.store.appends == before[2] + 1


async def test_removal_is_a_null_record_and_reload_equals(manager, settings):
    await manager.attach("ipsec3", "a")
    await manager.add_address("ipsec3", "a", "192.0.2.3/24")
    await manager.create_interface("ipsec4")
    assert await manager.detach("ipsec3", "a")
    assert json.loads(lines(manager.store)[-1])["iface"] is None
    loaded = StateStore.in_dir(settings.state_dir).load()
    assert [i["name"] for i in loaded["interfaces"]] == ["ipsec4"]
    assert canonical(loaded) == manager.desired.to_json()


async def test_restart_reads_the_journal_and_compacts(kernel, settings):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec5", "a")
    await m1.add_route("ipsec5", "a", "10.5.0.0/16", peer="10.5.0.1")
    await m1.stop()
    assert len(lines(m1.store)) == 3  # snapshot + two records
    m2 = Manager(kernel, settings)
    assert await m2.start() == {"created": 0, "repaired": 0, "adopted": 0, "removed": 0}
    assert m2.get("ipsec5").routes == (("10.5.0.0/16", 50, ""),)
    assert len(lines(m2.store)) == 1  # the start wrote one fresh snapshot
    await m2.stop()


async def test_after_the_start_compacted_a_journal_the_next_call_appends(kernel, settings):
    m1 = Manager(kernel, settings)
    await m1.start()
    await m1.attach("ipsec5", "a")
    await m1.attach("ipsec5", "b")
    await m1.stop()
    m2 = Manager(kernel, settings)
    await m2.start()
    assert len(lines(m2.store)) == 1  # the start compacted the journal
    await m2.attach("ipsec5", "c")
    assert len(lines(m2.store)) == 2  # one record appended, not a second snapshot
    await m2.stop()


async def test_restart_of_a_compact_file_writes_nothing_and_then_appends(kernel, settings):
    """The start knows what the file it read says: nothing is encoded or written again
    (10,000 interfaces at scale), and the next call appends to that file."""
    m1 = Manager(kernel, settings)
    await m1.start()
    for i in (1, 2, 3):
        await m1.attach(f"ipsec{i}", "a")
    await m1.stop()
    m1.store.write(m1.desired.to_json())  # one compact snapshot, no journal (as the bench writes it)
    before = m1.store.path.read_bytes()
    m2 = Manager(kernel, settings)
    await m2.start()
    assert (m2.store.writes, m2.store.bytes_written) == (0, 0)
    assert m2.store.path.read_bytes() == before
    await m2.attach("ipsec4", "b")
    await m2.detach("ipsec1", "a")
    assert (m2.store.writes, m2.store.appends) == (0, 2)
    assert canonical(StateStore.in_dir(settings.state_dir).load()) == m2.desired.to_json()
    await m2.stop()


async def test_restart_writes_what_the_configuration_changed(kernel, tmp_path):
    """A configured interface changed or gone while the daemon was down is written at the start."""
    from xfrmid.settings import StaticInterface

    first = Settings(state_dir=str(tmp_path / "state"),
                     static_interfaces=(StaticInterface(name="ipsec20", if_id=20, addresses=("192.0.2.20/24",)),))
    m1 = Manager(kernel, first)
    await m1.start()
    await m1.attach("ipsec20", "a")
    await m1.stop()
    m2 = Manager(kernel, Settings(state_dir=first.state_dir))  # no longer configured
    await m2.start()
    assert canonical(StateStore.in_dir(first.state_dir).load()) == m2.desired.to_json()
    assert m2.desired.get((None, "ipsec20")).static is False
    await m2.stop()


def test_torn_last_line_is_ignored(tmp_path, caplog):
    store = StateStore.in_dir(tmp_path)
    state = DesiredState()
    state.put(DesiredInterface(netns=None, name="ipsec6", if_id=6))
    store.write(state.to_json())
    with open(store.path, "a") as f:
        f.write('{"key":[null,"ipsec7"],"iface":{"netns":null,"name":"ipsec7","if_')  # cut short
    with caplog.at_level(logging.WARNING, logger="xfrmid.core"):
        assert canonical(store.load()) == state.to_json()
    assert "incomplete record" in caplog.text


def test_bad_record_before_the_end_keeps_the_prefix(tmp_path, caplog):
    store = StateStore.in_dir(tmp_path)
    store.write(DesiredState().to_json())
    good = {"key": [None, "ipsec8"], "iface": DesiredInterface(netns=None, name="ipsec8", if_id=8).to_json(),
            "retired": []}
    later = {"key": [None, "ipsec9"], "iface": DesiredInterface(netns=None, name="ipsec9", if_id=9).to_json(),
             "retired": []}
    with open(store.path, "a") as f:
        f.write(json.dumps(good) + "\n" + "garbage\n" + json.dumps(later) + "\n")
    with caplog.at_level(logging.ERROR, logger="xfrmid.core"):
        loaded = store.load()
    assert [i["name"] for i in loaded["interfaces"]] == ["ipsec8"]
    assert "bad journal record" in caplog.text
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())
    assert store.path.exists()  # kept: it is still the state


@pytest.mark.parametrize("bad", ["{}, {}", "[]", "1 2"])
def test_a_line_holding_other_than_one_record_is_bad(tmp_path, caplog, bad):
    """The journal is decoded in one call when whole; a line that is not exactly one record
    still stops it there, as line by line."""
    store = StateStore.in_dir(tmp_path)
    store.write(DesiredState().to_json())
    good = {"key": [None, "ipsec8"], "iface": DesiredInterface(netns=None, name="ipsec8", if_id=8).to_json(),
            "retired": []}
    with open(store.path, "a") as f:
        f.write(json.dumps(good) + "\n" + bad + "\n" + json.dumps(good) + "\n")
    with caplog.at_level(logging.ERROR, logger="xfrmid.core"):
        loaded = store.load()
    assert [i["name"] for i in loaded["interfaces"]] == ["ipsec8"]
    assert "bad journal record" in caplog.text


def test_old_indented_file_and_plain_snapshot_load(tmp_path):
    state = DesiredState()
    state.put(DesiredInterface(netns="blue", name="ipsec10", if_id=10,
                               owners={"a": Owner("a", addresses={"192.0.2.10/24"})}))
    store = StateStore.in_dir(tmp_path)
    store.path.write_text(json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n")  # the indented format of earlier versions
    assert canonical(store.load()) == state.to_json()
    store.write(state.to_json())  # the bench and the restart test write this way
    assert len(lines(store)) == 1 and canonical(store.load()) == state.to_json()


async def test_journal_is_compacted_when_it_outgrows_the_snapshot(tmp_path):
    store = StateStore.in_dir(tmp_path, compact_min=0)
    state = DesiredState()
    await store.commit(state)
    for i in range(1, 40):
        state.put(DesiredInterface(netns=None, name=f"ipsec{i}", if_id=i))
        await store.commit(state, {(None, f"ipsec{i}")})
        assert canonical(StateStore.in_dir(tmp_path).load()) == state.to_json()
        journal = sum(len(line) + 1 for line in lines(store)[1:])
        assert journal <= len(lines(store)[0]) + 1 + 400  # never much longer than the snapshot
    assert store.writes > 2 and store.appends > 10


async def test_file_removed_or_changed_behind_the_store_is_written_whole(tmp_path):
    store = StateStore.in_dir(tmp_path)
    state = DesiredState()
    state.put(DesiredInterface(netns=None, name="ipsec11", if_id=11))
    await store.commit(state)
    store.path.unlink()
    state.put(DesiredInterface(netns=None, name="ipsec12", if_id=12))
    await store.commit(state, {(None, "ipsec12")})
    assert canonical(StateStore.in_dir(tmp_path).load()) == state.to_json()  # ipsec11 too
    with open(store.path, "a") as f:
        f.write("\n")  # someone touched it: never append after bytes we did not write
    state.put(DesiredInterface(netns=None, name="ipsec13", if_id=13))
    await store.commit(state, {(None, "ipsec13")})
    assert len(lines(store)) == 1 and canonical(store.load()) == state.to_json()


# --- crashes at each step of a write ---------------------------------------------------


@pytest.mark.parametrize("owner", ["a", 'odd},{"netns":"x', "hub"])
def test_a_loaded_snapshot_is_known_by_its_own_texts(tmp_path, owner):
    """The image of a loaded snapshot is cut from the file, not encoded again; it is what
    encoding each interface gives, also when a name holds the separator the cut uses (its
    quotes are escaped in the file) and for a hub (kept by parts)."""
    state = DesiredState()
    for i in range(1, 6):
        owners = {f"o{j}": Owner(f"o{j}") for j in range(store_image.SPLIT_OWNERS)} if owner == "hub" and i == 3 \
            else {owner: Owner(owner, routes={RouteRequest(f"10.{i}.0.0/16"), RouteRequest(f"10.{i}.1.0/24")})}
        state.put(DesiredInterface(netns="ns" if i == 5 else None, name=f"ipsec{i}", if_id=i, owners=owners))
    data = state.to_json()
    StateStore.in_dir(tmp_path).write(data)
    snapshot = (tmp_path / "state.json").read_text()
    texts = store_image.item_texts(snapshot, data["interfaces"])
    assert texts == [store_image.dumps(item) for item in data["interfaces"]]
    store = StateStore.in_dir(tmp_path)
    assert canonical(store.load()) == canonical(data)
    assert store._image.ifaces.keys() == store_image.known(data).ifaces.keys()
    for key, text in store_image.known(data).ifaces.items():
        got = store._image.ifaces[key]
        assert (got.head, got.owners) == (text.head, text.owners) if owner == "hub" and key[1] == "ipsec3" \
            else got == text


class Crash(OSError):
    def __init__(self) -> None:
        super().__init__(5, "Input/output error")


def two_states():
    old, new = DesiredState(), DesiredState()
    for state in (old, new):
        state.put(DesiredInterface(netns=None, name="ipsec20", if_id=20))
    new.put(DesiredInterface(netns=None, name="ipsec21", if_id=21,
                             owners={"a": Owner("a", routes={RouteRequest("10.21.0.0/16")})}))
    return old, new


@pytest.mark.parametrize("compaction, step", [
    (False, "write"), (False, "fsync"),  # an append: write the records, fsync
    (True, "write"), (True, "fsync"), (True, "replace"), (True, "fsync-dir"),  # a snapshot
])
async def test_crash_at_each_step_loads_old_or_new(tmp_path, monkeypatch, step, compaction):
    store = StateStore.in_dir(tmp_path)
    old, new = two_states()
    await store.commit(old)
    expected_old = old.to_json()
    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace

    def write(fd, data):  # half the bytes reach the file, then the process dies
        if step == "write":
            real_write(fd, bytes(data)[: len(data) // 2])
            raise Crash()
        return real_write(fd, data)

    def fsync(fd):
        is_dir = os.path.isdir(os.readlink(f"/proc/self/fd/{fd}"))
        if (step == "fsync" and not is_dir) or (step == "fsync-dir" and is_dir):
            raise Crash()
        return real_fsync(fd)

    def replace(src, dst):
        if step == "replace":
            raise Crash()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Failed, match="Cannot write state file"):
        await store.commit(new, None if compaction else {(None, "ipsec21")})
    monkeypatch.undo()
    loaded = canonical(StateStore.in_dir(tmp_path).load())
    assert loaded in (expected_old, new.to_json())
    if step in ("write", "replace") or (step == "fsync" and compaction):
        assert loaded == expected_old  # nothing of the new state can be visible yet
    # the store does not trust the file after a failed write: the next write is whole
    await store.commit(new, set())
    assert len(lines(store)) == 1 and canonical(StateStore.in_dir(tmp_path).load()) == new.to_json()


# --- property: any sequence of changes, cut at any byte of the last write ----------------

OPS = st.lists(
    st.tuples(st.sampled_from(["put", "owner", "route", "drop", "retire"]), st.integers(1, 6), st.integers(0, 3)),
    min_size=1, max_size=25,
)


def mutate(state: DesiredState, op: str, n: int, m: int) -> tuple:
    """Change the state; (the key changed, the owners changed: None when any may have)."""
    key = (None if n % 2 else "blue", f"ipsec{n}")
    iface = state.get(key)
    if op == "put" or iface is None:
        state.put(DesiredInterface(netns=key[0], name=key[1], if_id=n, mtu=1400 + m))
    elif op == "owner":
        name = f"o{m}"
        iface.set_owner(name, None if name in iface.owners else Owner(name, addresses={f"192.0.2.{m}/24"}))
        return key, {name}
    elif op == "route":
        owner = iface.owners.get("r") or Owner("r")
        iface.set_owner("r", replace(owner, routes=owner.routes | {RouteRequest(f"10.{n}.{m}.0/24", metric=m or None)}))
        return key, {"r"}
    elif op == "drop":
        state.drop(key)
    else:
        state.retired.setdefault(key, set()).add(f"198.51.100.{m}/24")
        return key, set()
    return key, None


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, compact_min=st.sampled_from([0, 300, 1 << 20]), cut=st.floats(0, 1), split=st.sampled_from([1, 32]))
async def test_any_sequence_reloads_and_a_cut_write_loads_before_or_after(tmp_path_factory, ops, compact_min, cut,
                                                                         split):
    """``split``: from how many owners on an interface is written by parts (1: every one with an owner)."""
    with mock.patch.object(store_image, "SPLIT_OWNERS", split):
        await _any_sequence(tmp_path_factory, ops, compact_min, cut)


async def _any_sequence(tmp_path_factory, ops, compact_min, cut):
    directory = tmp_path_factory.mktemp("journal")
    store = StateStore.in_dir(directory, compact_min=compact_min)
    state = DesiredState()
    await store.commit(state)
    for op, n, m in ops:
        before_bytes, before_state = store.path.read_bytes(), state.to_json()
        key, owners = mutate(state, op, n, m)
        await store.commit(state, {key}, owners=None if owners is None else {key: owners})
        after_bytes = store.path.read_bytes()
        assert canonical(StateStore.in_dir(directory).load()) == state.to_json()
        if after_bytes.startswith(before_bytes):  # an append: cut it anywhere
            torn = after_bytes[: len(before_bytes) + int(cut * (len(after_bytes) - len(before_bytes)))]
            probe = directory / "probe" / "state.json"
            probe.parent.mkdir(exist_ok=True)
            probe.write_bytes(torn)
            assert canonical(StateStore(probe).load()) in (before_state, state.to_json())


async def test_concurrent_commits_share_one_append(tmp_path):
    """On a disk slow enough for the write thread, calls that come meanwhile share the next write."""
    store = StateStore.in_dir(tmp_path)
    state = DesiredState()
    await store.commit(state)
    store.append_seconds = 1.0  # as if the last append had waited a second for the disk

    async def call(i):
        state.put(DesiredInterface(netns=None, name=f"ipsec{i}", if_id=i))
        await store.commit(state, {(None, f"ipsec{i}")})

    await asyncio.gather(*(call(i) for i in range(1, 21)))
    assert store.appends < 20 and len(lines(store)) == 21  # one record per interface, fewer fsyncs
    assert canonical(StateStore.in_dir(tmp_path).load()) == state.to_json()


async def test_quick_appends_are_written_on_the_loop_slow_ones_by_the_write_thread(tmp_path, monkeypatch):
    from xfrmid.core import store as store_module

    threaded: list[object] = []
    real_run = store_module.WRITER.run

    async def run(job):
        threaded.append(job)
        await real_run(job)

    monkeypatch.setattr(store_module.WRITER, "run", run)
    # a clock that never moves: every append is as quick as /run's tmpfs, however busy the host
    store = StateStore.in_dir(tmp_path, clock=lambda: 0.0)
    state = DesiredState()
    await store.commit(state)  # the first write is a whole file: always the thread
    assert len(threaded) == 1
    state.put(DesiredInterface(netns=None, name="ipsec1", if_id=1))
    await store.commit(state, {(None, "ipsec1")})
    assert len(threaded) == 1 and store.appends == 1  # /run is tmpfs: at once, no hand-off
    store.append_seconds = store_module.INLINE_APPEND_S  # a disk that took that long
    state.put(DesiredInterface(netns=None, name="ipsec2", if_id=2))
    await store.commit(state, {(None, "ipsec2")})
    assert len(threaded) == 2 and store.appends == 2
    assert store.append_seconds < store_module.INLINE_APPEND_S  # fast again: the next is inline
    assert canonical(StateStore.in_dir(tmp_path).load()) == state.to_json()


async def test_an_append_notices_a_file_replaced_behind_its_back(tmp_path):
    store = StateStore.in_dir(tmp_path)
    state = DesiredState()
    state.put(DesiredInterface(netns=None, name="ipsec1", if_id=1))
    await store.commit(state)
    state.put(DesiredInterface(netns=None, name="ipsec2", if_id=2))
    await store.commit(state, {(None, "ipsec2")})  # the file is held open from here
    text = store.path.read_text()
    replacement = store.path.with_name("other")
    replacement.write_text(text)
    os.replace(replacement, store.path)  # same size, another file
    state.put(DesiredInterface(netns=None, name="ipsec3", if_id=3))
    await store.commit(state, {(None, "ipsec3")})
    assert canonical(StateStore.in_dir(tmp_path).load()) == state.to_json()
    store.path.unlink()
    state.put(DesiredInterface(netns=None, name="ipsec4", if_id=4))
    await store.commit(state, {(None, "ipsec4")})
    assert canonical(StateStore.in_dir(tmp_path).load()) == state.to_json()
