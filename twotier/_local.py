"""The local tier: a bounded LRU (cachetools) with per-entry expiry and lazy tag invalidation.

Concurrency: everything here is synchronous and runs on the event loop thread,
so no lock is needed and every method is atomic with respect to other tasks.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

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


#: How a hit hands out a value: None shares the stored object itself (an
#: immutable value, or `copy_on_read=False`); else a function of the stored
#: data that returns a fresh value.
Copy = Callable[[Any], Any] | None


def _copy_rows(rows: list[dict[Any, Any]]) -> list[dict[Any, Any]]:
    return [row.copy() for row in rows]


def _flat(items: Iterable[Any]) -> bool:
    return all(is_immutable(item) for item in items)


def _flat_dict(value: object) -> bool:
    return type(value) is dict and _flat(value) and _flat(value.values())


def copy_plan(value: object) -> Copy | Literal[True]:
    """How L1 copies *value* on each hit, chosen once when it is stored (issue
    20, item 7): None to share it (immutable); a shallow copy (`dict.copy`,
    `list.copy`, `set.copy`, or a copy of each row) for a plain dict, list or
    set of immutables and for a list of such dicts — what API functions
    return, copied in 0.1–1 µs; True for anything holding a mutable deeper
    (a tuple or dict holding a list...), which is decoded from its encoded
    bytes on each hit, as every mutable value was before (3–10× slower).

    Exact types only: a subclass may override `copy`, and the serializer
    round-trips the plain types anyway."""
    if is_immutable(value):
        return None
    kind = type(value)
    if kind is dict:
        return dict.copy if _flat_dict(value) else True
    if kind is list:
        if _flat(value):  # type: ignore[arg-type]
            return list.copy
        if value and all(_flat_dict(row) for row in value):  # type: ignore[attr-defined]
            return _copy_rows
        return True
    if kind is set:
        return set.copy if _flat(value) else True  # type: ignore[arg-type]
    return True


class Entry:
    """One untagged L1 entry. `data` is what `copy` hands out a fresh value of
    (the value itself, or its encoded bytes with `copy` the decoder); with
    `copy` None, `data` is the value, shared.

    `stamp` is None: nothing but its key, a clear or its expiry can end it.
    """

    __slots__ = ("copy", "data", "expires")

    stamp: int | None = None

    def __init__(self, data: Any, copy: Copy, expires: float) -> None:
        self.data = data
        self.copy = copy
        self.expires = expires

    def tags(self) -> tuple[str, ...]:
        return ()


class TaggedEntry(Entry):
    """An entry with tags, flat: one or two tags in slots of their own (no tuple),
    more as one tuple in `tag`. `stamp` is the tier's stamp when the entry was
    stored or last found current (see `LocalTier`)."""

    __slots__ = ("stamp", "tag", "tag2")  # `stamp` shadows Entry.stamp = None

    stamp: int

    def __init__(
        self, data: Any, copy: Copy, expires: float, tags: tuple[str, ...], stamp: int
    ) -> None:
        self.data = data
        self.copy = copy
        self.expires = expires
        self.stamp = stamp
        if len(tags) <= 2:
            self.tag: str | tuple[str, ...] = tags[0]
            self.tag2: str | None = tags[1] if len(tags) == 2 else None
        else:
            self.tag = tags
            self.tag2 = None

    def tags(self) -> tuple[str, ...]:
        tag = self.tag
        if type(tag) is tuple:
            return tag
        tag2 = self.tag2
        return (tag,) if tag2 is None else (tag, tag2)  # type: ignore[return-value]


#: A sweep of L1 starts once this many tags' invalidations are remembered (or
#: l1_maxsize // 8, if larger): it bounds that memory, and costs each later
#: invalidated tag a few entry checks until it is done (`LocalTier._sweep_some`).
_SWEEP_AFTER = 1024


class LocalTier:
    """L1. While `suspended` (a resync is under way) it neither serves nor stores.

    Tags are invalidated lazily. There is no tag → keys index: an invalidation
    takes the next *stamp* (a counter) and remembers it for each of its tags
    (`_bumped`); a tagged entry keeps the stamp it was stored under. A hit on
    an entry whose stamp is the current one — no tag was invalidated since it
    was stored or last checked — costs one identity test. Otherwise the entry's
    tags are looked up in `_bumped`: one bumped after its stamp makes it a miss
    (and evicts it), else it takes the current stamp. An invalidation thus makes
    every entry carrying the tag unusable at once, as the index did, in O(tags)
    instead of O(entries dropped); the entries' memory is freed when they are
    next read, pushed out by the LRU, or reached by a sweep. Sweeps bound the
    remembered invalidations: the entries present when one starts are checked a
    few per invalidated tag, after which every live entry is newer than what
    was remembered before the sweep began, and that is forgotten.
    """

    def __init__(self, maxsize: int, clock: Clock, decode: Callable[[bytes], Any]) -> None:
        self._data: LRUCache[str, Entry] = LRUCache(maxsize)
        # cachetools keeps the items in a dict and the recency in an OrderedDict.
        # The hit path reads them directly: two C calls instead of four Python
        # frames (`get` → `__contains__` → `__getitem__` → `Cache.__getitem__`),
        # which halves the cost of an L1 hit. tests/test_local.py pins that these
        # views stay in step with the public API, so a cachetools upgrade that
        # renames them fails loudly.
        self._items: dict[str, Entry] = self._data._Cache__data  # type: ignore[attr-defined]
        self._recency: OrderedDict[str, None] = self._data._LRUCache__order  # type: ignore[attr-defined]
        self._stamp = 0
        # tag → the stamp of its last invalidation, oldest first.
        self._bumped: dict[str, int] = {}
        self._sweep_after = max(_SWEEP_AFTER, maxsize // 8)
        self._sweeping: list[str] | None = None  # the keys a sweep has yet to check
        self._swept_to = 0  # the stamp when the running sweep began
        self._sweep_rate = 1  # entries checked per invalidated tag while it runs
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
        # Identity, not equality: an entry holds the very int object of the
        # stamp it took, and a new stamp is a new object (a miss of this test
        # only costs the full check).
        stamp = entry.stamp
        if stamp is not self._stamp and stamp is not None and self._outdated(entry):
            self.evict(key)
            return MISS
        self._recency.move_to_end(key)
        copy = entry.copy
        return entry.data if copy is None else copy(entry.data)

    def get_with_expiry(self, key: str) -> tuple[Any, float]:
        """`get`, plus the entry's expiry time (clock seconds) for early refresh."""
        entry = self._items.get(key)
        value = self.get(key)
        return value, (entry.expires if entry is not None else 0.0)

    def _outdated(self, entry: Entry) -> bool:
        """Whether one of *entry*'s tags was invalidated after its stamp; if not,
        it takes the current stamp (checked against every invalidation so far)."""
        assert isinstance(entry, TaggedEntry)  # only tagged entries have a stamp
        bumped, stamp = self._bumped, entry.stamp
        for tag in entry.tags():
            last = bumped.get(tag)
            if last is not None and last > stamp:
                return True
        entry.stamp = self._stamp
        return False

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
        plan = copy_plan(value) if copy_on_read else None
        copy: Copy
        if plan is True:
            data, copy = encoded, self._decode
        elif plan is None:
            data, copy = value, None
        else:
            # A copy of the caller's object, not the object: its caller may
            # change it once stored.
            data, copy = plan(value), plan
        expires = self._clock() + ttl
        if tags:
            self._data[key] = TaggedEntry(data, copy, expires, tags, self._stamp)
        else:
            self._data[key] = Entry(data, copy, expires)

    def evict(self, key: str) -> None:
        self._data.pop(key, None)

    def evict_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    def evict_tags(self, tags: Iterable[str]) -> None:
        """Make every entry carrying one of *tags* unusable, now; O(len(tags))."""
        self._stamp = stamp = self._stamp + 1
        bumped = self._bumped
        count = 0
        for tag in tags:
            bumped.pop(tag, None)  # re-inserted: `_bumped` stays ordered by stamp
            bumped[tag] = stamp
            count += 1
        self._sweep_some(count)

    def _sweep_some(self, invalidated: int) -> None:
        if self._sweeping is None:
            if len(self._bumped) <= self._sweep_after:
                return
            self._sweeping = list(self._items)
            self._swept_to = self._stamp
            # Done before another `_sweep_after` tags are remembered.
            self._sweep_rate = len(self._sweeping) // self._sweep_after + 1
        keys = self._sweeping
        items, current = self._items, self._stamp
        for _ in range(min(len(keys), invalidated * self._sweep_rate)):
            key = keys.pop()
            entry = items.get(key)
            if entry is None or entry.stamp is None or entry.stamp == current:
                continue
            if self._outdated(entry):
                self._data.pop(key, None)
        if not keys:
            # Every entry is now stamped `_swept_to` or later (stored since, or
            # checked): invalidations up to that stamp cannot outdate any of them.
            self._sweeping = None
            bumped = self._bumped
            for tag in list(bumped):
                if bumped[tag] > self._swept_to:
                    break
                del bumped[tag]

    def purge(self) -> None:
        """Drop every entry an invalidation made unusable, and forget the
        invalidations: a complete sweep at once. O(entries), and nothing at all
        unless a tag was invalidated since the last purge."""
        if not self._bumped:
            return
        current, outdated = self._stamp, self._outdated
        dead = [
            key
            for key, entry in self._items.items()
            if entry.stamp is not current and entry.stamp is not None and outdated(entry)
        ]
        for key in dead:
            self._data.pop(key, None)
        self._bumped.clear()
        self._sweeping = None

    def cap_expiry(self, deadline: float) -> None:
        """Let no entry live past *deadline* (bounded staleness while Redis is away)."""
        for entry in self._items.values():
            entry.expires = min(entry.expires, deadline)

    def clear(self) -> None:
        self._data.clear()
        self._bumped.clear()
        self._sweeping = None

    # -- introspection -----------------------------------------------------------

    @property
    def maxsize(self) -> int:
        return int(self._data.maxsize)

    @property
    def entries(self) -> int:
        """Entries in L1, after a `purge` (so invalidated ones are not counted)."""
        self.purge()
        return len(self._data)

    @property
    def tags(self) -> int:
        """Distinct tags carried by the entries in L1 (the seed's figure: its tag
        index's size). There is no index to ask, so this walks L1: O(entries),
        about 1 ms per 10,000 entries, paid by `get_stats()` only."""
        seen: set[str | tuple[str, ...] | None] = set()
        more: list[str] = []
        for entry in self._items.values():
            if entry.stamp is not None:
                tag = entry.tag  # type: ignore[attr-defined]  # a TaggedEntry
                if type(tag) is tuple:
                    more.extend(tag)
                else:
                    seen.add(tag)
                    seen.add(entry.tag2)  # type: ignore[attr-defined]
        seen.update(more)
        seen.discard(None)
        return len(seen)
