"""The persisted desired state: one file under the runtime directory, a snapshot plus a journal.

``/run/xfrmid/state.json`` holds the runtime promises (on-demand and
explicitly created interfaces, attachments, addresses, routes), so a daemon
restart keeps them and a reboot forgets them, as /run is.

The file is one compact JSON snapshot (the format ``DesiredState.to_json``
returns) followed by journal lines, one compact JSON record each:

    {"key": [netns, name], "iface": {...} | null, "retired": [...]}
    {"namespaces": [...]}

A record carries the whole new persisted state of one interface (null: it is
gone), so a call writes O(its change), not O(everything). An interface with
many owners (more than ``SPLIT_OWNERS``: a road-warrior hub) is written by
parts instead, its fields and only the owners a call replaced:

    {"update": [netns, name], "head": {...}, "owners": {name: {...} | null}, "retired": [...]}

so an Attach on an interface of 10,000 owners writes one owner. Appending is
durable before the call returns (fsync); a crash mid-append leaves a torn
last line, which the loader ignores (that call was never acknowledged).
Once the journal outgrows the snapshot, the next write is a compaction:
a fresh snapshot in a temporary file, fsync, rename over the old file, fsync
the directory; a crash leaves either the old file (snapshot + journal) or
the new one, which load to the same state. Appends go only to a file this
store wrote itself and whose size it knows; anything else (first write after
start, a file removed or changed behind its back, a failed write) makes the
next write a compaction from the full state.

Concurrent writes are grouped: a call that finds its change already written
by a later write returns at once. A write that changes nothing (an idempotent
call) writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import Failed
from ..job_thread import JobThread
from .append_file import AppendFile, write_all

if TYPE_CHECKING:
    from .desired import Key

log = logging.getLogger("xfrmid.core")

STATE_FILE = "state.json"
FORMAT_VERSION = 1
COMPACT_MIN = 1 << 20  # journal bytes below which it is never compacted
# An append (a few hundred bytes and an fsync) that took less than this is written on
# the loop: the state lives in /run (tmpfs), where the fsync is free and the hand-off
# to the write thread and back costs more than the write (about 0.9 ms of an Attach's
# 4.6 ms in the daemon under emulation, bench/README.md). A slower disk (a state_dir on a real one)
# gets the thread, so the loop never waits on it; compactions always do.
INLINE_APPEND_S = 0.002
WRITER = JobThread("xfrmid-state-writer")  # one per process: the daemon has one store

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


# From this many owners on, an interface is written by parts (see the module doc).
SPLIT_OWNERS = 32


class Persistable(Protocol):
    """What the store needs of the desired state (``DesiredState`` has it)."""

    def persisted_keys(self) -> Iterable[Key]: ...
    def persisted(self, key: Key) -> dict | None: ...
    def persisted_head(self, key: Key) -> dict | None: ...
    def persisted_owners(self, key: Key, names: Iterable[str] | None = None) -> dict[str, dict | None]: ...
    def owner_count(self, key: Key) -> int: ...
    def retired_json(self, key: Key) -> list[str]: ...
    def namespaces_json(self) -> list[str]: ...


def _sort(key: Key) -> tuple:
    return (key[0] or "", key[1])


class _Parts:
    """An interface written by parts: its fields (JSON text without the owners) and each owner's text."""

    __slots__ = ("head", "owners")

    def __init__(self, head: str, owners: dict[str, str]) -> None:
        self.head, self.owners = head, owners

    @classmethod
    def of(cls, data: dict) -> "_Parts":
        """From an interface's parsed JSON."""
        owners = data.get("owners") or {}
        return cls(_dumps({k: v for k, v in data.items() if k != "owners"}),
                   {name: _dumps(owner) for name, owner in owners.items()})

    def text(self) -> str:
        """The whole interface's JSON text (a compaction)."""
        owners = ",".join(f"{_dumps(n)}:{self.owners[n]}" for n in sorted(self.owners))
        return f'{self.head[:-1]}{"," if len(self.head) > 2 else ""}"owners":{{{owners}}}}}'


class _Image:
    """What the file on disk says, per interface, as the JSON text written (to compare and compact)."""

    def __init__(self) -> None:
        self.ifaces: dict[Key, str | _Parts] = {}
        self.retired: dict[Key, list[str]] = {}
        self.namespaces: list[str] = []

    def entry(self, state: Persistable, key: Key) -> tuple[str | _Parts | None, list[str]]:
        if state.owner_count(key) >= SPLIT_OWNERS:
            head = state.persisted_head(key)
            if head is not None:
                owners = {n: _dumps(d) for n, d in state.persisted_owners(key).items() if d is not None}
                return _Parts(_dumps(head), owners), state.retired_json(key)
        data = state.persisted(key)
        return (None if data is None else _dumps(data), state.retired_json(key))

    def set(self, key: Key, text: str | _Parts | None, retired: list[str]) -> None:
        if text is None:
            self.ifaces.pop(key, None)
        else:
            self.ifaces[key] = text
        if retired:
            self.retired[key] = retired
        else:
            self.retired.pop(key, None)

    @classmethod
    def of(cls, state: Persistable) -> "_Image":
        image = cls()
        keys = set(state.persisted_keys())
        for key in keys:
            image.set(key, *image.entry(state, key))
        image.namespaces = state.namespaces_json()
        return image

    def snapshot(self) -> bytes:
        """The whole file: built from the stored texts, nothing serialised again but the small lists."""
        retired = [
            {"netns": k[0], "name": k[1], "addresses": v}
            for k, v in sorted(self.retired.items(), key=lambda kv: _sort(kv[0]))
        ]
        texts = (self.ifaces[k] for k in sorted(self.ifaces, key=_sort))
        parts = [
            '{"version":1,"interfaces":[',
            ",".join(t if isinstance(t, str) else t.text() for t in texts),
            '],"retired":', _dumps(retired), ',"namespaces":', _dumps(self.namespaces), "}\n",
        ]
        return "".join(parts).encode()

    def record(self, state: Persistable, key: Key, names: Iterable[str] | None) -> str | None:
        """The journal record of ``key``'s changes (the image takes them in); None: unchanged.
        ``names``: the owners that may have changed (None: any)."""
        retired = state.retired_json(key)
        current = self.ifaces.get(key)
        if isinstance(current, _Parts):
            head = state.persisted_head(key)
            if head is not None:
                return self._update(state, key, current, _dumps(head), names, retired)
        text, retired = self.entry(state, key)
        if isinstance(text, _Parts):  # grew past SPLIT_OWNERS: written whole once, by parts from now on
            whole = text.text()
        elif text == current and retired == self.retired.get(key, []):
            return None  # unchanged (an idempotent call)
        else:
            whole = text
        self.set(key, text, retired)
        return f'{{"key":{_dumps(list(key))},"iface":{whole or "null"},"retired":{_dumps(retired)}}}'

    def _update(self, state: Persistable, key: Key, parts: _Parts, head: str, names: Iterable[str] | None,
                retired: list[str]) -> str | None:
        owners = state.persisted_owners(key, names)
        changed: dict[str, str | None] = {}
        for name, data in owners.items():
            text = None if data is None else _dumps(data)
            if parts.owners.get(name) != text:
                changed[name] = text
        if names is None:
            changed.update(dict.fromkeys(parts.owners.keys() - owners.keys()))
        if head == parts.head and not changed and retired == self.retired.get(key, []):
            return None
        parts.head = head
        for name, text in changed.items():
            if text is None:
                parts.owners.pop(name, None)
            else:
                parts.owners[name] = text
        self.set(key, parts, retired)
        body = ",".join(f"{_dumps(n)}:{t or 'null'}" for n, t in changed.items())
        return f'{{"update":{_dumps(list(key))},"head":{head},"owners":{{{body}}},"retired":{_dumps(retired)}}}'


class _Append:
    """A journal append (``_prepare``): the one write that may be done on the loop."""

    __slots__ = ("_write",)

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write

    def __call__(self) -> None:
        self._write()


class StateStore:
    """The state file (snapshot + journal). ``path`` is the file (its directory is created 0700)."""

    def __init__(self, path: str | os.PathLike, *, compact_min: int = COMPACT_MIN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock  # times appends (tests pass their own: a busy host is no disk)
        self._file = AppendFile(self.path)
        # how long the last append took: under INLINE_APPEND_S the next one is written at
        # once, on the loop, instead of handed to the write thread (see _flush)
        self.append_seconds = 0.0
        self.compact_min = compact_min
        self._lock = asyncio.Lock()
        self._requested = 0  # bumped by every save()/commit() call
        self._written = 0  # the highest request number on disk
        # interfaces changed since the last write, with the owners that may have (None: any)
        self._keys: dict[Key, set[str] | None] = {}
        self._full = False  # a full write was asked for
        self._image: _Image | None = None  # the file's content when this store wrote it; None: unknown
        self._size: int | None = None  # the file's size after this store's last write
        self._snapshot_size = 0
        self._compact_due = False  # the file loaded has a journal: the next write compacts it
        # statistics (tests, bench): files written, records appended, bytes written
        self.writes = 0
        self.appends = 0
        self.bytes_written = 0

    @classmethod
    def in_dir(cls, state_dir: str | os.PathLike, **kw) -> "StateStore":
        return cls(Path(state_dir) / STATE_FILE, **kw)

    # --- loading ----------------------------------------------------------------

    def load(self) -> dict | None:
        """The saved state (snapshot with the journal applied), or None when there is none.

        A file whose snapshot cannot be parsed is moved aside (``state.json.corrupt-<time>``)
        and None returned: a daemon that refuses to start helps nobody, and the kernel's
        marked objects are then cleaned up by reconcile. A torn last journal line (a crash
        during an unacknowledged write) is ignored; a bad line before the end keeps the
        records before it, and a copy of the file is kept aside.
        """
        self._image, self._size = None, None  # the next write compacts, unless the file is known below
        self._compact_due = False
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            if isinstance(exc, UnicodeDecodeError):
                return self._corrupt("is not UTF-8")
            raise Failed(f"Cannot read state file {str(self.path)!r}: {exc.strerror}.") from None
        self._remove_temporaries()
        start = len(text) - len(text.lstrip())
        try:
            data, end = json.JSONDecoder().raw_decode(text, start)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError("unknown format")
        except ValueError:
            return self._corrupt("is not valid")
        records = []
        lines = text[end:].split("\n")
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not _is_record(record):
                    raise ValueError("not a record")
            except ValueError:
                if number == len(lines) - 1:
                    log.warning("state file %s ends with an incomplete record (a write cut short); ignored", self.path)
                else:
                    aside = self._keep_copy(text)
                    log.error("state file %s has a bad journal record; keeping the %d records before it "
                              "(copy in %s)", self.path, len(records), aside)
                break
            records.append(record)
        else:
            # Read whole and cleanly (no torn or bad line): the store knows what the file
            # says, so the start-up need not encode every interface again to write it
            # (a journal left by the last run is compacted by the next write).
            if not text or text.endswith("\n"):
                self._know(data, records, len(text.encode()))
        return _replay(data, records) if records else data

    def _know(self, data: dict, records: list[dict], size: int) -> None:
        image = _Image()
        try:
            for item in data.get("interfaces", ()):
                image.set((item.get("netns"), item["name"]), _text(item), [])
            for item in data.get("retired", ()):
                if item.get("name") is not None and (key := (item.get("netns"), item["name"])) in image.ifaces:
                    image.set(key, image.ifaces[key], sorted(item.get("addresses", ())))
                elif item.get("name") is not None:
                    image.retired[(item.get("netns"), item["name"])] = sorted(item.get("addresses", ()))
            image.namespaces = list(data.get("namespaces", ()))
            for record in records:
                if "namespaces" in record:
                    image.namespaces = list(record["namespaces"])
                elif "update" in record:
                    key = tuple(record["update"])
                    parts = image.ifaces.get(key)
                    if not isinstance(parts, _Parts):
                        parts = _Parts.of(json.loads(parts) if parts else {})
                    parts.head = _dumps(record["head"])
                    for name, owner in record["owners"].items():
                        if owner is None:
                            parts.owners.pop(name, None)
                        else:
                            parts.owners[name] = _dumps(owner)
                    image.set(key, parts, list(record.get("retired", [])))
                else:
                    iface = record.get("iface")
                    image.set(tuple(record["key"]), None if iface is None else _text(iface),
                              list(record.get("retired", [])))
        except (TypeError, KeyError, AttributeError):  # a hand-written file of another shape
            return
        self._image, self._size, self._snapshot_size = image, size, size
        self._compact_due = bool(records)

    def _corrupt(self, what: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        log.error("state file %s %s; moved it to %s and starting empty", self.path, what, aside)
        try:
            os.replace(self.path, aside)
        except OSError:
            pass
        return None

    def _keep_copy(self, text: str) -> Path:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            aside.write_text(text, encoding="utf-8")
        except OSError:
            pass
        return aside

    def _remove_temporaries(self) -> None:
        """Temporary files of compactions cut short by a crash."""
        try:
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        except OSError:
            pass

    # --- writing ------------------------------------------------------------------

    def close(self) -> None:
        """Let go of the file held open for appends (the next write opens it again)."""
        self._file.close()

    async def save(self, snapshot: Callable[[], dict]) -> None:
        """Persist the whole state ``snapshot()`` returns; durable when this returns."""
        self._full = True
        await self._flush(snapshot)

    async def commit(self, state: Persistable, keys: Iterable[Key] | None = None, *,
                     owners: dict[Key, Iterable[str]] | None = None) -> None:
        """Persist the changes of ``keys`` (None: everything) in ``state``; durable when this returns.
        ``owners``: of a key in it, only the owners named there may have changed (the rest of
        the interface is compared whole)."""
        if keys is None:
            self._full = True
        else:
            for key in keys:
                names = None if owners is None else owners.get(key)
                pending = self._keys.get(key, ())
                self._keys[key] = None if pending is None or names is None else set(pending).union(names)
        await self._flush(state)

    async def _flush(self, source: Persistable | Callable[[], dict]) -> None:
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._written >= mine:
                return  # a later write, prepared after our change, is already on disk
            upto = self._requested
            job = self._prepare(source)
            if job is not None:
                try:
                    if isinstance(job, _Append) and self.append_seconds < INLINE_APPEND_S:
                        job()
                    else:
                        await WRITER.run(job)
                except BaseException:
                    self._image, self._size = None, None  # the disk is unknown now: next write is full
                    raise
            self._written = upto

    def _prepare(self, source: Persistable | Callable[[], dict]) -> Callable[[], None] | None:
        """Take the pending changes and turn them into the write to do (in a thread); None: nothing."""
        keys, self._keys = self._keys, {}
        full, self._full = self._full, False
        if callable(source):  # a plain snapshot (tests, tools): the image is unknown afterwards
            self._image = None
            payload = _dumps(source()).encode() + b"\n"
            return lambda: self._compact(payload)
        if full or self._image is None or self._size is None:
            self._image = _Image.of(source)
            payload = self._image.snapshot()
            return lambda: self._compact(payload)
        image = self._image
        records = [r for key in sorted(keys, key=_sort) if (r := image.record(source, key, keys[key])) is not None]
        namespaces = source.namespaces_json()
        if namespaces != image.namespaces:
            image.namespaces = namespaces
            records.append(_dumps({"namespaces": namespaces}))
        if not records and not self._compact_due:
            return None
        journal = ("\n".join(records) + "\n").encode() if records else b""
        if self._compact_due or (
                self._size - self._snapshot_size + len(journal) > max(self.compact_min, self._snapshot_size)):
            self._compact_due = False
            return lambda: self._compact(image.snapshot())
        expected = self._size

        return _Append(lambda: self._append(journal, expected, image))

    def _append(self, journal: bytes, expected: int, image: _Image) -> None:
        """Append records to the file this store last wrote, fsync; compact when it is not that file."""
        started = self._clock()
        try:
            refused = self._file.append(journal, expected)
        except OSError as exc:
            raise Failed(f"Cannot write state file {str(self.path)!r}: {exc.strerror}.") from None
        if refused is not None:
            log.warning("state file %s %s; writing it again", self.path,
                        "disappeared" if refused == "disappeared" else "was changed by someone else")
            return self._compact(image.snapshot())
        self.append_seconds = self._clock() - started
        self._size = expected + len(journal)
        self.appends += 1
        self.bytes_written += len(journal)

    def _compact(self, payload: bytes) -> None:
        self._file.close()  # the rename leaves it on the old file
        self._write_snapshot(payload)
        self._size = self._snapshot_size = len(payload)

    def write(self, data: dict) -> None:
        """Synchronous atomic write of a whole state (a snapshot with no journal)."""
        self._image = None
        self._write_snapshot(_dumps(data).encode() + b"\n")

    def _write_snapshot(self, payload: bytes) -> None:
        """Atomic replacement: temp file, fsync, rename, fsync directory."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            raise Failed(f"Cannot write state file {str(self.path)!r}: {exc.strerror}.") from None
        self.writes += 1
        self.bytes_written += len(payload)


def _text(data: dict) -> str | _Parts:
    """What the image keeps of an interface read from the file."""
    return _Parts.of(data) if len(data.get("owners") or ()) >= SPLIT_OWNERS else _dumps(data)


def _is_key(key: object) -> bool:
    return isinstance(key, list) and len(key) == 2 and isinstance(key[1], str) and (
        key[0] is None or isinstance(key[0], str))


def _is_record(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    if "namespaces" in record:
        return isinstance(record["namespaces"], list)
    if "update" in record:
        owners = record.get("owners")
        return (_is_key(record["update"]) and isinstance(record.get("head"), dict) and isinstance(owners, dict)
                and all(o is None or isinstance(o, dict) for o in owners.values())
                and isinstance(record.get("retired", []), list))
    return (
        _is_key(record.get("key"))
        and (record.get("iface") is None or isinstance(record["iface"], dict))
        and isinstance(record.get("retired", []), list)
    )


def _replay(data: dict, records: list[dict]) -> dict:
    """The snapshot ``data`` with the journal ``records`` applied, in the snapshot's own format."""
    ifaces = {(d.get("netns"), d["name"]): d for d in data.get("interfaces", ())}
    retired = {(d.get("netns"), d["name"]): d for d in data.get("retired", ())}
    namespaces = data.get("namespaces", [])
    for record in records:
        if "namespaces" in record:
            namespaces = record["namespaces"]
            continue
        if "update" in record:  # the interface's fields and the owners that changed, in place
            netns, name = record["update"]
            key = (netns, name)
            iface = ifaces.get(key)
            owners = iface.get("owners") if iface is not None else None
            ifaces[key] = iface = dict(record["head"])
            iface["owners"] = owners = owners if isinstance(owners, dict) else {}
            for owner, value in record["owners"].items():
                if value is None:
                    owners.pop(owner, None)
                else:
                    owners[owner] = value
        else:
            netns, name = record["key"]
            key = (netns, name)
            if record.get("iface") is None:
                ifaces.pop(key, None)
            else:
                ifaces[key] = record["iface"]
        if record.get("retired"):
            retired[key] = {"netns": netns, "name": name, "addresses": record["retired"]}
        else:
            retired.pop(key, None)
    return {**data, "interfaces": list(ifaces.values()), "retired": list(retired.values()),
            "namespaces": namespaces}
