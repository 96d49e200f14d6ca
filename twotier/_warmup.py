"""`cache.warmup`: fill both tiers for many keys, in batches.

Per batch of keys: one script call reads them all (taking a fill lease for
each miss, under one shared token, and one version snapshot), the loader runs
for the misses only, and one more script call stores the results with the same
conditional write as a single load — so warmup honours the no-stale-set
guarantee too: a key invalidated while its batch loads is not stored. Keys
already valid in Redis are left there; their first read brings them into L1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ._exceptions import BackendError
from ._flights import Flight, Flights
from ._logging import Log
from ._serialization import Serializer
from ._stats import Counters
from ._tier import FILL, FOREIGN, BatchRead, RemoteTier
from ._types import MISS

BATCH = 1000
_FAILED = object()  # the loader raised for this key

StoreLocal = Callable[[str, Any, bytes, float, tuple[str, ...], bool], None]
Lookup = Callable[[str], Any]


class Warmup:
    def __init__(
        self,
        remote: RemoteTier,
        flights: Flights,
        serializer: Serializer,
        counters: Counters,
        *,
        lookup: Lookup,
        store_local: StoreLocal,
        release_later: Callable[[str, str], None],
        max_value_size: int,
        log: Log,
    ) -> None:
        self._remote = remote
        self._flights = flights
        self._serializer = serializer
        self._counters = counters
        self._lookup = lookup
        self._store_local = store_local
        self._release_later = release_later
        self._max_value_size = max_value_size
        self._log = log

    async def run(
        self,
        keys: Sequence[str],
        loader: Callable[[str], Any],
        concurrency: int,
        ttl: float,
        tags: tuple[str, ...],
        copy_on_read: bool,
    ) -> int:
        filled = 0
        for start in range(0, len(keys), BATCH):
            batch = [
                key
                for key in dict.fromkeys(keys[start : start + BATCH])
                if self._lookup(key) is MISS and self._flights.join(key) is None
            ]
            flights = [self._flights.begin(key, tags) for key in batch]
            try:
                filled += await self._batch(flights, loader, concurrency, ttl, copy_on_read)
            finally:
                for flight in flights:
                    self._flights.end(flight)
        return filled

    async def _batch(
        self,
        flights: list[Flight],
        loader: Callable[[str], Any],
        concurrency: int,
        ttl: float,
        copy_on_read: bool,
    ) -> int:
        if not flights:
            return 0
        tags = flights[0].tags
        read = await self._read_all([f.key for f in flights], tags)
        try:
            return await self._load_and_fill(read, flights, loader, concurrency, ttl, copy_on_read)
        except BaseException:
            # Cancelled, or the data was bad: every lease this batch may still
            # hold goes back now, not after `lease_ttl` (issue 7, item 1). A
            # release is keyed by the token: for a key already filled or
            # released it does nothing.
            if read.token is not None:
                for flight, code in zip(flights, read.codes, strict=True):
                    if code == FILL:
                        self._release_later(flight.key, read.token)
            raise

    async def _load_and_fill(
        self,
        read: BatchRead,
        flights: list[Flight],
        loader: Callable[[str], Any],
        concurrency: int,
        ttl: float,
        copy_on_read: bool,
    ) -> int:
        tags = flights[0].tags
        todo: list[Flight] = []
        for flight, code in zip(flights, read.codes, strict=True):
            if code == FILL:
                todo.append(flight)
            elif code == FOREIGN:
                self._counters.garbage_entries += 1
            # IN_L2: cached for every instance already; BUSY: another caller fills it
        values = await _load_all(
            [f.key for f in todo], loader, concurrency, self._counters, self._log
        )
        ready: list[tuple[Flight, Any, bytes]] = []
        for flight, value in zip(todo, values, strict=True):
            if value is not None and value is not _FAILED:  # else nothing to cache
                # SerializationError (bad data): nothing of this batch is stored
                ready.append((flight, value, self._serializer.dumps(value)))
        fills = [
            (f.key, payload) for f, _, payload in ready if len(payload) <= self._max_value_size
        ]
        self._counters.oversized_values += len(ready) - len(fills)  # kept in L1 only
        if read.token is not None:
            filled_keys = {key for key, _ in fills}
            for flight in todo:
                if flight.key not in filled_keys:
                    self._release_later(flight.key, read.token)
        stored = await self._fill_all(read, ttl, tags, fills)
        filled = 0
        store = self._store_local
        for flight, value, payload in ready:
            if stored.get(flight.key, True) and not flight.invalidated:
                store(flight.key, value, payload, ttl, tags, copy_on_read)
                filled += 1
        self._counters.sets += filled
        self._counters.stale_sets_refused += len(ready) - filled
        return filled

    async def _read_all(self, keys: list[str], tags: tuple[str, ...]) -> BatchRead:
        try:
            return await self._remote.read_many(keys, tags)
        except BackendError:
            self._counters.l2_errors += 1
            return BatchRead([FILL] * len(keys), None, None)  # Redis away: L1 alone

    async def _fill_all(
        self, read: BatchRead, ttl: float, tags: tuple[str, ...], fills: list[tuple[str, bytes]]
    ) -> dict[str, bool]:
        if not fills or read.token is None or read.snapshot is None:
            return {}  # no L2 (memory mode, or Redis away): L1 alone, under the flights' guard
        try:
            results = await self._remote.fill_many(read, ttl, tags, fills)
        except BackendError:
            self._counters.l2_errors += 1
            for key, _ in fills:  # the fill may not have run: give the leases back
                self._release_later(key, read.token)
            return {}
        return {key: ok for (key, _), ok in zip(fills, results, strict=True)}


async def _load_all(
    keys: list[str],
    loader: Callable[[str], Any],
    concurrency: int,
    counters: Counters,
    log: Log,
) -> list[Any]:
    """The loader's result per key; `_FAILED` where it raised (logged, counted)."""

    def failed(key: str, exc: BaseException) -> object:
        counters.load_errors += 1
        log.warning("warmup loader failed for %r: %r", key, exc)
        return _FAILED

    counters.loads += len(keys)
    if not asyncio.iscoroutinefunction(loader):
        # One worker thread per batch, not per key: thread hand-offs would cost
        # more than a typical loader call.
        def run_sync() -> list[Any]:
            results: list[Any] = []
            for key in keys:
                try:
                    results.append(loader(key))
                except Exception as exc:
                    results.append(failed(key, exc))
            return results

        results = await anyio.to_thread.run_sync(run_sync)
        # `lambda key: fetch(key)` over an async `fetch` looks sync but returns
        # coroutines: await them here, on the loop.
        for i, (key, result) in enumerate(zip(keys, results, strict=True)):
            if asyncio.iscoroutine(result):
                try:
                    results[i] = await result
                except Exception as exc:
                    results[i] = failed(key, exc)
        return results

    limiter = asyncio.Semaphore(concurrency)

    async def one(key: str) -> Any:
        async with limiter:
            try:
                return await loader(key)
            except Exception as exc:
                return failed(key, exc)

    return list(await asyncio.gather(*(one(key) for key in keys)))
