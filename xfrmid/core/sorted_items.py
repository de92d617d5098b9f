"""Sorted, immutable sequences whose changed copy costs O(its chunk), not O(its length).

A view of an interface lists its owners, addresses and routes sorted, and a
view is a value: the one published before a change still shows what it
showed. With 10,000 owners on one interface, copying a sorted tuple for every
Attach made each call O(owners). ``SortedItems`` keeps its items in chunks of
at most ``2 * CHUNK`` sorted tuples; ``with_item`` and ``without_item`` copy one
chunk and the (short) tuples of chunks, and share every other chunk with the
original. Up to ``CHUNK`` items a plain sorted tuple is used instead (most
interfaces have one owner: no object of their own for them).

Items may repeat (a multiset: two routes that differ only in metric show the
same (destination, table, src)); ``without_item`` removes one occurrence.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Any

CHUNK = 64  # items a plain tuple holds before it becomes a SortedItems; half a chunk's limit


class SortedItems(Sequence):
    """More than CHUNK sorted items in chunks; compares equal to the tuple of its items."""

    __slots__ = ("_chunks", "_firsts", "_len")

    def __init__(self, chunks: tuple[tuple, ...], length: int) -> None:
        self._chunks = chunks
        self._firsts = tuple(c[0] for c in chunks)
        self._len = length

    @classmethod
    def of(cls, ordered: Sequence[Any]) -> "SortedItems":
        """From items already sorted."""
        return cls(tuple(tuple(ordered[i:i + CHUNK]) for i in range(0, len(ordered), CHUNK)), len(ordered))

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Any]:
        return chain.from_iterable(self._chunks)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self)[index]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError("SortedItems index out of range")
        for chunk in self._chunks:
            if index < len(chunk):
                return chunk[index]
            index -= len(chunk)
        raise IndexError("SortedItems index out of range")  # not reached

    def __contains__(self, item: object) -> bool:
        i = bisect_right(self._firsts, item) - 1
        if i < 0:
            return False
        chunk = self._chunks[i]
        j = bisect_left(chunk, item)
        return j < len(chunk) and chunk[j] == item

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, SortedItems):
            if other._len != self._len:
                return False
            if other._chunks == self._chunks:  # shared chunks compare by identity first
                return True
            return all(a == b for a, b in zip(self, other))
        if isinstance(other, tuple):
            return len(other) == self._len and tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"SortedItems({tuple(self)!r})"

    def _replaced(self, i: int, parts: tuple[tuple, ...], length: int) -> "SortedItems":
        """A copy with chunk ``i`` replaced by ``parts`` (none, one or two chunks)."""
        return SortedItems(self._chunks[:i] + parts + self._chunks[i + 1:], length)


def sorted_items(items: Iterable[Any]) -> tuple | SortedItems:
    """The sorted sequence of ``items``: a tuple up to CHUNK items, a SortedItems beyond."""
    ordered = sorted(items)
    return tuple(ordered) if len(ordered) <= CHUNK else SortedItems.of(ordered)


def with_item(seq: tuple | SortedItems, item: Any) -> tuple | SortedItems:
    """``seq`` with ``item`` added (once more, if it is there)."""
    if isinstance(seq, tuple):
        if len(seq) < CHUNK:
            i = bisect_right(seq, item)
            return seq[:i] + (item,) + seq[i:]
        grown = list(seq)
        insort(grown, item)
        return SortedItems.of(grown)
    i = max(bisect_right(seq._firsts, item) - 1, 0)
    chunk = list(seq._chunks[i])
    insort(chunk, item)
    if len(chunk) > 2 * CHUNK:
        half = len(chunk) // 2
        parts: tuple[tuple, ...] = (tuple(chunk[:half]), tuple(chunk[half:]))
    else:
        parts = (tuple(chunk),)
    return seq._replaced(i, parts, seq._len + 1)


def without_item(seq: tuple | SortedItems, item: Any) -> tuple | SortedItems:
    """``seq`` with one occurrence of ``item`` removed (unchanged when it is not there)."""
    if isinstance(seq, tuple):
        i = bisect_left(seq, item)
        if i < len(seq) and seq[i] == item:
            return seq[:i] + seq[i + 1:]
        return seq
    i = bisect_right(seq._firsts, item) - 1
    if i < 0:
        return seq
    chunk = seq._chunks[i]
    j = bisect_left(chunk, item)
    if j >= len(chunk) or chunk[j] != item:
        return seq
    if seq._len - 1 <= CHUNK:
        rest = list(seq)
        del rest[sum(len(c) for c in seq._chunks[:i]) + j]
        return tuple(rest)
    smaller = chunk[:j] + chunk[j + 1:]
    if len(smaller) < CHUNK // 4 and len(seq._chunks) > 1:
        # a small chunk joins a neighbour, so chunks never shrink to a few items each
        k = i - 1 if i > 0 else i + 1
        lo, hi = (k, i) if k < i else (i, k)
        merged = (seq._chunks[lo] + smaller) if k < i else (smaller + seq._chunks[hi])
        if len(merged) > 2 * CHUNK:
            half = len(merged) // 2
            parts: tuple[tuple, ...] = (merged[:half], merged[half:])
        else:
            parts = (merged,)
        return SortedItems(seq._chunks[:lo] + parts + seq._chunks[hi + 1:], seq._len - 1)
    return seq._replaced(i, (smaller,) if smaller else (), seq._len - 1)


def first_from(seq: tuple | SortedItems, item: Any) -> Any:
    """The first item of ``seq`` not less than ``item`` (None when there is none)."""
    if isinstance(seq, tuple):
        i = bisect_left(seq, item)
        return seq[i] if i < len(seq) else None
    i = max(bisect_right(seq._firsts, item) - 1, 0)
    chunk = seq._chunks[i]
    j = bisect_left(chunk, item)
    if j < len(chunk):
        return chunk[j]
    return seq._chunks[i + 1][0] if i + 1 < len(seq._chunks) else None
