"""In-flight loads and reads: one loader run per key per instance, and the
no-stale-set guard.

A `Flight` is registered before its loader starts. Any invalidation of its key,
of one of its tags, or a clear that arrives while it runs (from this instance or
from the bus) marks it `invalidated` and unregisters it, so:

* its result is returned to the callers that were already waiting (they asked
  before the invalidation) but is never stored in L1, and
* a caller arriving after the invalidation starts a new flight instead of
  joining the outdated one (read-your-writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


class Flight:
    __slots__ = ("_future", "invalidated", "key", "tags")

    def __init__(self, key: str, tags: tuple[str, ...]) -> None:
        self.key = key
        self.tags = tags
        self.invalidated = False
        # Made by the first waiter only: most flights (every warmup key, most
        # misses) are never joined, and a future per flight would be wasted.
        self._future: asyncio.Future[Any] | None = None

    async def wait(self) -> Any:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        # shield: a waiter that is cancelled must not cancel the shared result.
        return await asyncio.shield(self._future)

    def resolve(self, value: Any) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_exception(exc)
            self._future.exception()  # retrieved: no "never retrieved" warning


class Watch:
    """A plain read of *key* in flight (`cache.get`): spoiled by any change of
    the key, or a clear, applied while it runs, so that its reply, which may
    predate the change, is returned but never kept in L1 (guarantee 1)."""

    __slots__ = ("key", "spoiled")

    def __init__(self, key: str) -> None:
        self.key = key
        self.spoiled = False


class LeaderCancelled(Exception):
    """The task running a shared load was cancelled; waiters load for themselves."""


class Flights:
    def __init__(self) -> None:
        self._by_key: dict[str, Flight] = {}
        self._watches: dict[str, list[Watch]] = {}

    def join(self, key: str) -> Flight | None:
        return self._by_key.get(key)

    def begin(self, key: str, tags: tuple[str, ...]) -> Flight:
        flight = Flight(key, tags)
        self._by_key[key] = flight
        return flight

    def end(self, flight: Flight) -> None:
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]

    def watch(self, key: str) -> Watch:
        watch = Watch(key)
        self._watches.setdefault(key, []).append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        watches = self._watches.get(watch.key)
        if watches is not None and watch in watches:
            watches.remove(watch)
            if not watches:
                del self._watches[watch.key]

    def invalidate_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            flight = self._by_key.pop(key, None)
            if flight is not None:
                flight.invalidated = True
            for watch in self._watches.pop(key, ()):
                watch.spoiled = True

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        wanted = set(tags)
        # In-flight loads are few (bounded by concurrency), so a scan is cheap.
        for key, flight in list(self._by_key.items()):
            if not wanted.isdisjoint(flight.tags):
                flight.invalidated = True
                del self._by_key[key]

    def invalidate_all(self) -> None:
        for flight in self._by_key.values():
            flight.invalidated = True
        self._by_key.clear()
        for watches in self._watches.values():
            for watch in watches:
                watch.spoiled = True
        self._watches.clear()
