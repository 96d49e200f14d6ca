"""Changes made while Redis was unreachable, delivered when it returns.

Every queued change is an invalidation (a key, a tag, or a clear): they commute,
so the outbox is three sets rather than an ordered list, and a key changed ten
times costs one entry (newest per key wins). A `set` made during an outage is
delivered as an invalidation of its key, not as a write: another instance that
stayed connected may have written a newer value meanwhile, and an invalidation
can never make anything staler, while a late write could.

Bounded: past `limit` pending names the outbox collapses into one `clear`
(counted as dropped), because dropping an invalidation silently could leave a
stale value in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._stats import Counters
from ._tier import RemoteTier


class Outbox:
    def __init__(self, limit: int, counters: Counters) -> None:
        self._limit = limit
        self._counters = counters
        self._keys: dict[str, None] = {}
        self._tags: dict[str, None] = {}
        self._clear = False
        #: Why the oldest change still queued was queued: the stats' `last_error`
        #: while anything is queued, even once other calls succeed again.
        self.cause: str | None = None

    def __bool__(self) -> bool:
        return bool(self._keys or self._tags or self._clear)

    def __len__(self) -> int:
        return len(self._keys) + len(self._tags) + int(self._clear)

    def add_keys(self, keys: Iterable[str]) -> None:
        if not self._clear:
            self._keys.update(dict.fromkeys(keys))
            self._bound()

    def add_tags(self, tags: Iterable[str]) -> None:
        if not self._clear:
            self._tags.update(dict.fromkeys(tags))
            self._bound()

    def add(self, kind: str, names: Iterable[str]) -> None:
        """A change of *kind*: keys ("k"), tags ("t") or a clear ("c")."""
        if kind == "c":
            self.add_clear()
        elif kind == "t":
            self.add_tags(names)
        else:
            self.add_keys(names)

    def add_clear(self) -> None:
        self._keys.clear()
        self._tags.clear()
        self._clear = True

    def hints(self) -> list[tuple[str, tuple[str, ...]]]:
        """What is queued, as hints to the other instances (`_hints.py`):
        (subject, names) with subject "c" (a clear), "k" (keys) or "t" (tags)."""
        if self._clear:
            return [("c", ())]
        queued = [("k", tuple(self._keys)), ("t", tuple(self._tags))]
        return [(subject, names) for subject, names in queued if names]

    def _bound(self) -> None:
        if len(self) > self._limit:
            self._counters.dropped_ops += len(self)
            self.add_clear()

    async def flush(self, remote: RemoteTier) -> int:
        """Deliver everything; on a failure the undelivered part stays queued."""
        delivered = 0
        if self._clear:
            await remote.clear()
            self._clear = False
            delivered += 1
        if self._keys:
            keys = tuple(self._keys)
            await remote.delete(keys)
            for key in keys:
                self._keys.pop(key, None)
            delivered += len(keys)
        if self._tags:
            tags = tuple(self._tags)
            await remote.invalidate(tags)
            for tag in tags:
                self._tags.pop(tag, None)
            delivered += len(tags)
        if not self:
            self.cause = None
        return delivered
