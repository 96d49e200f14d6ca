"""`cache.warmup`: fill both tiers for many keys, in pipelined batches.

Per batch of keys: one pipelined round trip reads them all (taking a fill lease
and a version snapshot for each miss), the loader runs for the misses only,
and one more round trip stores the results with the same conditional write as
a single load — so warmup honours the no-stale-set guarantee too: a key
invalidated while its batch loads is not stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from ._exceptions import BackendError, SerializationError
from ._flights import Flight, Flights
from ._logging import Log
from ._serialization import Serializer
from ._stats import Counters
from ._tier import MISSING_READ, BatchFill, ReadResult, RemoteTier
from ._types import MISS

BATCH = 1000
_FAILED = object()  # the loader raised for this key

StoreLocal = Callable[[str, Any, bytes, float, tuple[str, ...], bool], None]
DecodeHit = Callable[[str, ReadResult], Any]
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
        decode_hit: DecodeHit,
        store_local: StoreLocal,
        release: Callable[[str, str], Awaitable[None]],
        log: Log,
    ) -> None:
        self._remote = remote
        self._flights = flights
        self._serializer = serializer
        self._counters = counters
        self._lookup = lookup
        self._decode_hit = decode_hit
        self._store_local = store_local
        self._release = release
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
        reads = await self._read_all([f.key for f in flights], tags)
        todo: list[tuple[Flight, ReadResult]] = []
        for flight, read in zip(flights, reads, strict=True):
            value = self._decode_hit(flight.key, read)
            if value is not MISS:  # already in Redis: just bring it into L1
                if not flight.invalidated:
                    self._store_local(
                        flight.key, value, read.payload or b"", read.ttl, read.tags, copy_on_read
                    )
            elif read.snapshot is None or read.lease is not None:
                todo.append((flight, read))
            # else: another instance is loading this key right now; it will fill it
        keys = [f.key for f, _ in todo]
        values = await _load_all(keys, loader, concurrency, self._counters, self._log)
        ready: list[tuple[Flight, Any, bytes]] = []
        fills: list[BatchFill] = []
        try:
            for (flight, read), value in zip(todo, values, strict=True):
                if value is None or value is _FAILED:  # nothing to cache for this key
                    if read.lease is not None:
                        await self._release(flight.key, read.lease)
                    continue
                payload = self._serializer.dumps(value)  # bad data raises SerializationError
                ready.append((flight, value, payload))
                if read.lease is not None and read.snapshot is not None:
                    fills.append((flight.key, read.lease, payload, read.snapshot))
        except SerializationError:
            for flight, read in todo:  # nothing of this batch is stored: free every lease
                if read.lease is not None:
                    await self._release(flight.key, read.lease)
            raise
        stored = await self._fill_all(ttl, tags, fills)
        filled = 0
        for flight, value, payload in ready:
            if stored.get(flight.key, True) and not flight.invalidated:
                self._store_local(flight.key, value, payload, ttl, tags, copy_on_read)
                self._counters.sets += 1
                filled += 1
            else:
                self._counters.stale_sets_refused += 1
        return filled

    async def _read_all(self, keys: list[str], tags: tuple[str, ...]) -> list[ReadResult]:
        try:
            return await self._remote.read_many(keys, tags)
        except BackendError:
            self._counters.l2_errors += 1
            return [MISSING_READ] * len(keys)

    async def _fill_all(
        self, ttl: float, tags: tuple[str, ...], fills: list[BatchFill]
    ) -> dict[str, bool]:
        if not fills:
            return {}
        try:
            results = await self._remote.fill_many(ttl, tags, fills)
        except BackendError:
            self._counters.l2_errors += 1
            return {}  # Redis away: L1 alone, under the flights' guard
        return {fill[0]: ok for fill, ok in zip(fills, results, strict=True)}


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
