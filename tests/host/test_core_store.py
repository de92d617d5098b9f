"""The state file: atomic, durable, round-trips, survives a crash at any point of a write."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from xfrmid.core.store import StateStore
from xfrmid.errors import Failed


def state(n):
    return {"version": 1, "interfaces": [{"name": f"ipsec{n}"}], "retired": [], "namespaces": []}


async def test_round_trip_and_mode(tmp_path):
    store = StateStore.in_dir(tmp_path / "run" / "xfrmid")
    assert store.load() is None
    await store.save(lambda: state(1))
    assert store.load() == state(1)
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert oct(store.path.parent.stat().st_mode & 0o777) == "0o700"
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]  # no temp file left


async def test_crash_during_write_leaves_old_file(tmp_path, monkeypatch):
    store = StateStore.in_dir(tmp_path)
    await store.save(lambda: state(1))
    calls = []

    def crash(src, dst):  # the process dies before the rename
        calls.append((src, dst))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Failed, match="Cannot write state file"):
        await store.save(lambda: state(2))
    monkeypatch.undo()
    assert calls and store.load() == state(1)


async def test_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    await StateStore.in_dir(tmp_path).save(lambda: state(1))
    assert synced[0].endswith(".tmp") and synced[1] == str(tmp_path)


async def test_concurrent_saves_are_grouped(tmp_path):
    store = StateStore.in_dir(tmp_path)
    counter = {"n": 0}

    def snap():
        counter["n"] += 1
        return state(counter["n"])

    await asyncio.gather(*(store.save(snap) for _ in range(20)))
    assert store.writes < 20 and store.load() == state(counter["n"])


def test_corrupt_file_is_moved_aside(tmp_path):
    store = StateStore.in_dir(tmp_path)
    store.path.write_text("{not json")
    assert store.load() is None
    assert not store.path.exists()
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())


def test_unknown_version_is_not_trusted(tmp_path):
    store = StateStore.in_dir(tmp_path)
    store.path.write_text(json.dumps({"version": 99}))
    assert store.load() is None
