"""What the state file holds, per interface, as the JSON texts written (core/store.py's image).

The store compares a change with these texts (an idempotent call writes
nothing), turns it into a journal record, and compacts from them without
serialising every interface again. An interface of ``SPLIT_OWNERS`` owners
or more (a road-warrior hub) is kept by parts, its fields and each owner's
text, so a record of it carries the owners a call replaced, not all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .desired import Key

dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode


# From this many owners on, an interface is kept and written by parts (see the module doc).
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


def sort_key(key: Key) -> tuple:
    return (key[0] or "", key[1])


class Parts:
    """An interface written by parts: its fields (JSON text without the owners) and each owner's text."""

    __slots__ = ("head", "owners")

    def __init__(self, head: str, owners: dict[str, str]) -> None:
        self.head, self.owners = head, owners

    @classmethod
    def of(cls, data: dict) -> "Parts":
        """From an interface's parsed JSON."""
        owners = data.get("owners") or {}
        return cls(dumps({k: v for k, v in data.items() if k != "owners"}),
                   {name: dumps(owner) for name, owner in owners.items()})

    def text(self) -> str:
        """The whole interface's JSON text (a compaction)."""
        owners = ",".join(f"{dumps(n)}:{self.owners[n]}" for n in sorted(self.owners))
        return f'{self.head[:-1]}{"," if len(self.head) > 2 else ""}"owners":{{{owners}}}}}'


class Image:
    """What the file on disk says, per interface, as the JSON text written (to compare and compact)."""

    def __init__(self) -> None:
        self.ifaces: dict[Key, str | Parts] = {}
        self.retired: dict[Key, list[str]] = {}
        self.namespaces: list[str] = []

    def entry(self, state: Persistable, key: Key) -> tuple[str | Parts | None, list[str]]:
        if state.owner_count(key) >= SPLIT_OWNERS:
            head = state.persisted_head(key)
            if head is not None:
                owners = {n: dumps(d) for n, d in state.persisted_owners(key).items() if d is not None}
                return Parts(dumps(head), owners), state.retired_json(key)
        data = state.persisted(key)
        return (None if data is None else dumps(data), state.retired_json(key))

    def set(self, key: Key, text: str | Parts | None, retired: list[str]) -> None:
        if text is None:
            self.ifaces.pop(key, None)
        else:
            self.ifaces[key] = text
        if retired:
            self.retired[key] = retired
        else:
            self.retired.pop(key, None)

    @classmethod
    def of(cls, state: Persistable) -> "Image":
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
            for k, v in sorted(self.retired.items(), key=lambda kv: sort_key(kv[0]))
        ]
        texts = (self.ifaces[k] for k in sorted(self.ifaces, key=sort_key))
        parts = [
            SNAPSHOT_HEAD,
            ",".join(t if isinstance(t, str) else t.text() for t in texts),
            '],"retired":', dumps(retired), ',"namespaces":', dumps(self.namespaces), "}\n",
        ]
        return "".join(parts).encode()

    def record(self, state: Persistable, key: Key, names: Iterable[str] | None) -> str | None:
        """The journal record of ``key``'s changes (the image takes them in); None: unchanged.
        ``names``: the owners that may have changed (None: any)."""
        retired = state.retired_json(key)
        current = self.ifaces.get(key)
        if isinstance(current, Parts):
            head = state.persisted_head(key)
            if head is not None:
                return self._update(state, key, current, dumps(head), names, retired)
        text, retired = self.entry(state, key)
        if isinstance(text, Parts):  # grew past SPLIT_OWNERS: written whole once, by parts from now on
            whole = text.text()
        elif text == current and retired == self.retired.get(key, []):
            return None  # unchanged (an idempotent call)
        else:
            whole = text
        self.set(key, text, retired)
        return f'{{"key":{dumps(list(key))},"iface":{whole or "null"},"retired":{dumps(retired)}}}'

    def _update(self, state: Persistable, key: Key, parts: Parts, head: str, names: Iterable[str] | None,
                retired: list[str]) -> str | None:
        owners = state.persisted_owners(key, names)
        changed: dict[str, str | None] = {}
        for name, data in owners.items():
            text = None if data is None else dumps(data)
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
        body = ",".join(f"{dumps(n)}:{t or 'null'}" for n, t in changed.items())
        return f'{{"update":{dumps(list(key))},"head":{head},"owners":{{{body}}},"retired":{dumps(retired)}}}'


SNAPSHOT_HEAD = '{"version":1,"interfaces":['  # how snapshot() begins
_NEXT = '},{"netns":'  # between two interfaces in it (each begins with its netns)


def item_texts(snapshot: str, items: list[dict]) -> list[str] | None:
    """Each interface's text in a snapshot as snapshot() wrote it (``items``: its parsed
    interfaces), cut from the file: the image then needs no second encoding of every
    interface (a tenth of a 10,000-interface start-up). None when the text is not cut so.

    The separator cannot occur inside a string (its quotes would be escaped); a text
    that is not ours otherwise (hand-written) is caught by the count, and by the first
    and last interface, checked against their encoding.
    """
    if not items or not snapshot.startswith(SNAPSHOT_HEAD):
        return None
    close = snapshot.rfind('],"retired":')
    if close < 0:
        return None
    parts = snapshot[len(SNAPSHOT_HEAD):close].split(_NEXT)
    if len(parts) != len(items):
        return None
    if len(parts) > 1:
        head = _NEXT[2:]
        parts = [parts[0] + "}", *[f"{head}{p}}}" for p in parts[1:-1]], head + parts[-1]]
    if parts[0] != dumps(items[0]) or parts[-1] != dumps(items[-1]):
        return None
    return parts


def text_of(data: dict) -> str | Parts:
    """What the image keeps of an interface read from the file."""
    return Parts.of(data) if len(data.get("owners") or ()) >= SPLIT_OWNERS else dumps(data)


def known(data: dict, snapshot: str = "") -> Image:
    """The image of a loaded file that is a snapshot alone (``data``, parsed from ``snapshot``).
    Raises TypeError, KeyError or AttributeError for a hand-written file of another shape."""
    image = Image()
    items = data.get("interfaces", ())
    texts = item_texts(snapshot, items) or [None] * len(items)
    for item, text in zip(items, texts):
        if text is None or len(item.get("owners") or ()) >= SPLIT_OWNERS:
            text = text_of(item)
        image.set((item.get("netns"), item["name"]), text, [])
    for item in data.get("retired", ()):
        if item.get("name") is not None and (key := (item.get("netns"), item["name"])) in image.ifaces:
            image.set(key, image.ifaces[key], sorted(item.get("addresses", ())))
        elif item.get("name") is not None:
            image.retired[(item.get("netns"), item["name"])] = sorted(item.get("addresses", ()))
    image.namespaces = list(data.get("namespaces", ()))
    return image
