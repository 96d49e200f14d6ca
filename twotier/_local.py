"""The local tier: a bounded LRU (cachetools) with per-entry expiry and a tag index.

Concurrency: everything here is synchronous and runs on the event loop thread,
so no lock is needed and every method is atomic with respect to other tasks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

from cachetools import LRUCache

from ._types import MISS, Clock

# Values of these types cannot be mutated by a caller, so L1 may hand out the
# stored object itself instead of a fresh copy.
_IMMUTABLE: Final = frozenset(
    {
        int,
        float,
        complex,
        bool,
        str,
        bytes,
        type(None),
        decimal.Decimal,
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        uuid.UUID,
    }
)


def is_immutable(value: object) -> bool:
    kind = type(value)
    if kind in _IMMUTABLE:
        return True
    if kind is tuple or kind is frozenset:
        return all(is_immutable(item) for item in value)  # type: ignore[attr-defined]
    return False


class Entry:
    """One L1 entry. `data` is the value itself when `shared`, else its encoded bytes."""

    __slots__ = ("data", "expires", "shared", "tags")

    def __init__(self, data: Any, shared: bool, expires: float, tags: tuple[str, ...]) -> None:
        self.data = data
        self.shared = shared
        self.expires = expires
        self.tags = tags


class _LRU(LRUCache[str, Entry]):
    """cachetools' LRU, telling the tier which entry it evicted for lack of room."""

    def __init__(self, maxsize: int, on_evict: Callable[[str, Entry], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict
        # cachetools keeps the items in a dict and the recency in an OrderedDict.
        # The hit path reads them directly: two C calls instead of four Python
        # frames (`get` → `__contains__` → `__getitem__` → `Cache.__getitem__`),
        # which halves the cost of an L1 hit. tests/test_local.py pins that these
        # views stay in step with the public API, so a cachetools upgrade that
        # renames them fails loudly.
        self.items_view: dict[str, Entry] = self._Cache__data  # type: ignore[attr-defined]
        self.recency: OrderedDict[str, None] = self._LRUCache__order  # type: ignore[attr-defined]

    def popitem(self) -> tuple[str, Entry]:
        key, entry = super().popitem()
        self._on_evict(key, entry)
        return key, entry


class LocalTier:
    """L1. While `suspended` (a resync is under way) it neither serves nor stores."""

    def __init__(self, maxsize: int, clock: Clock, decode: Callable[[bytes], Any]) -> None:
        self._data = _LRU(maxsize, self._unindex)
        self._items = self._data.items_view
        self._recency = self._data.recency
        # tag → the key carrying it, or a set of keys once there are several.
        # Most tags name one entity ("item:42") and index a single entry; a bare
        # str there saves the ~200 B of a one-element set per entry.
        self._index: dict[str, str | set[str]] = {}
        self._clock = clock
        self._decode = decode
        self.suspended = False

    # -- reads (the hit path) --------------------------------------------------

    def get(self, key: str) -> Any:
        """The value for *key*, a fresh copy unless immutable, or `MISS`."""
        entry = self._items.get(key)
        if entry is None or self.suspended:
            return MISS
        if entry.expires <= self._clock():
            self.evict(key)
            return MISS
        self._recency.move_to_end(key)
        return entry.data if entry.shared else self._decode(entry.data)

    def get_with_expiry(self, key: str) -> tuple[Any, float]:
        """`get`, plus the entry's expiry time (clock seconds) for early refresh."""
        entry = self._items.get(key)
        value = self.get(key)
        return value, (entry.expires if entry is not None else 0.0)

    # -- writes ----------------------------------------------------------------

    def store(
        self,
        key: str,
        value: Any,
        encoded: bytes,
        ttl: float,
        tags: tuple[str, ...],
        copy_on_read: bool = True,
    ) -> None:
        if self.suspended:
            return
        if key in self._items:  # a plain dict probe; cachetools' pop is far dearer
            self.evict(key)
        shared = not copy_on_read or is_immutable(value)
        entry = Entry(value if shared else encoded, shared, self._clock() + ttl, tags)
        self._data[key] = entry
        index = self._index
        for tag in tags:
            keys = index.get(tag)
            if keys is None:
                index[tag] = key
            elif type(keys) is str:
                if keys != key:
                    index[tag] = {keys, key}
            else:
                keys.add(key)  # type: ignore[union-attr]  # narrowed by type() above

    def evict(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._unindex(key, entry)

    def evict_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.evict(key)

    def evict_tags(self, tags: Iterable[str]) -> int:
        """Drop every entry carrying one of *tags*; the index makes this O(entries dropped)."""
        dropped = 0
        for tag in tags:
            keys = self._index.pop(tag, ())
            for key in (keys,) if type(keys) is str else keys:
                entry = self._data.pop(key, None)
                if entry is not None:
                    self._unindex(key, entry)
                    dropped += 1
        return dropped

    def cap_expiry(self, deadline: float) -> None:
        """Let no entry live past *deadline* (bounded staleness while Redis is away)."""
        for key in list(self._data):
            entry = self._data[key]
            entry.expires = min(entry.expires, deadline)

    def clear(self) -> None:
        self._data.clear()
        self._index.clear()

    def _unindex(self, key: str, entry: Entry) -> None:
        index = self._index
        for tag in entry.tags:
            keys = index.get(tag)
            if keys is None:
                continue
            if type(keys) is str:
                if keys == key:
                    del index[tag]
            else:
                keys.discard(key)  # type: ignore[union-attr]  # narrowed by type() above
                if not keys:
                    del index[tag]

    # -- introspection -----------------------------------------------------------

    @property
    def maxsize(self) -> int:
        return int(self._data.maxsize)

    @property
    def entries(self) -> int:
        return len(self._data)

    @property
    def tags(self) -> int:
        return len(self._index)
