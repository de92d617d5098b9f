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
from typing import TYPE_CHECKING

from ..errors import Failed
from ..job_thread import JobThread
from .append_file import AppendFile, write_all
from .store_image import Image, Persistable, known, sort_key

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
        self._image: Image | None = None  # the file's content when this store wrote it; None: unknown
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
        journal = text[end:]
        records = _whole_journal(journal)
        if records is None:  # a torn or bad line somewhere: read line by line to keep what is good
            records = self._careful_journal(text, journal)
        elif not records and (not text or text.endswith("\n")):
            # A clean snapshot alone: the store knows what the file says, so the first
            # write appends its records instead of encoding every interface again.
            # After a journal the store does not know the file, so its first write
            # compacts from the live state (knowing it would only move that work into
            # the start-up).
            self._know(data, text[start:end], len(text.encode()))
        return _replay(data, records) if records else data

    def _careful_journal(self, text: str, journal: str) -> list[dict]:
        """The journal's records up to the first one that is not (the whole file kept aside
        when that is not a torn last line)."""
        records = []
        lines = journal.split("\n")
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
        return records

    def _know(self, data: dict, snapshot: str, size: int) -> None:
        try:
            image = known(data, snapshot)
        except (TypeError, KeyError, AttributeError):  # a hand-written file of another shape
            return
        self._image, self._size, self._snapshot_size = image, size, size

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
            self._image = Image.of(source)
            payload = self._image.snapshot()
            return lambda: self._compact(payload)
        image = self._image
        records = [r for key in sorted(keys, key=sort_key) if (r := image.record(source, key, keys[key])) is not None]
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

    def _append(self, journal: bytes, expected: int, image: Image) -> None:
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


def _is_key(key: object) -> bool:
    return isinstance(key, list) and len(key) == 2 and isinstance(key[1], str) and (
        key[0] is None or isinstance(key[0], str))


def _whole_journal(journal: str) -> list[dict] | None:
    """Every record of a journal that is whole and valid, decoded in one call (a hub's
    journal has tens of thousands of lines); None when any line is not a record."""
    lines = [line for line in journal.split("\n") if line.strip()]
    if not lines:
        return [] if not journal.strip() else None
    try:
        records = json.loads("[" + ",".join(lines) + "]")
    except ValueError:
        return None
    if len(records) != len(lines) or not all(_is_record(r) for r in records):
        return None  # e.g. two values on one line
    return records


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
