"""`cache.warmup`: fill both tiers for many keys, in batches.

Per batch of keys: one pipelined round trip reads them all (judged against the
version mirror like any read), one more claims the fill lease of each miss
(under one shared token), the loader runs for the keys whose lease this
batch holds, and one more round trip stores the results with the same
conditional fill as a single load, under the version snapshot taken before
the loader ran — so warmup honours the no-stale-set guarantee too. Keys
already valid in Redis are left there; their first read brings them into L1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from ._envelope import pack
from ._exceptions import BackendError
from ._flights import Flight, Flights
from ._logging import Log
from ._serialization import Serializer
from ._shared import SharedTier, Snapshot
from ._stats import Counters
from ._tier import GRANTED
from ._types import MISS

BATCH = 1000
_FAILED = object()  # the loader raised for this key

StoreLocal = Callable[[str, Any, bytes, float, tuple[str, ...], bool], None]
Lookup = Callable[[str], Any]


class Warmup:
    def __init__(
        self,
        shared: SharedTier,
        flights: Flights,
        serializer: Serializer,
        counters: Counters,
        *,
        lookup: Lookup,
        store_local: StoreLocal,
        max_value_size: int,
        log: Log,
    ) -> None:
        self._shared = shared
        self._flights = flights
        self._serializer = serializer
        self._counters = counters
        self._lookup = lookup
        self._store_local = store_local
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
        leased, token = await self._claim_misses(flights)
        snapshot = await self._shared.snapshot(flights[0].tags, ttl) if token else None
        try:
            return await self._load_and_fill(
                leased, token, snapshot, loader, concurrency, ttl, copy_on_read
            )
        except BaseException:
            # Cancelled, or the data was bad: every lease this batch may still
            # hold goes back now, not after `lease_ttl` (issue 7, item 1). A
            # release is keyed by the token: for a key already filled or
            # released it does nothing.
            if token is not None:
                for flight in leased:
                    self._shared.release_later(flight.key, token)
            raise

    async def _claim_misses(self, flights: list[Flight]) -> tuple[list[Flight], str | None]:
        """The flights to load (their leases taken under one token, if Redis is there)."""
        shared, keys = self._shared, [f.key for f in flights]
        try:
            found = [
                await shared.judged(key, data)
                for key, data in zip(keys, await shared.remote.get_many(keys), strict=True)
            ]
        except BackendError:
            self._counters.l2_errors += 1
            return flights, None  # Redis away: L1 alone
        misses = [
            (f, hit.rejected) for f, hit in zip(flights, found, strict=True) if hit.entry is None
        ]
        if not misses:
            return [], None  # every key is cached for every instance already
        try:
            generation, _ = await shared.mirror.current(())
            token = shared.new_token(generation)
            claims = await shared.remote.claim_many(
                [f.key for f, _ in misses], token, [rejected or b"" for _, rejected in misses]
            )
        except BackendError:
            self._counters.l2_errors += 1
            return [f for f, _ in misses], None
        # Not granted: another caller is loading the key, or it was stored meanwhile.
        return [
            f for (f, _), claim in zip(misses, claims, strict=True) if claim.status == GRANTED
        ], token

    async def _load_and_fill(
        self,
        todo: list[Flight],
        token: str | None,
        snapshot: Snapshot | None,
        loader: Callable[[str], Any],
        concurrency: int,
        ttl: float,
        copy_on_read: bool,
    ) -> int:
        if not todo:
            return 0
        tags = todo[0].tags
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
        if token is not None:
            filled_keys = {key for key, _ in fills}
            for flight in todo:
                if flight.key not in filled_keys or snapshot is None:
                    self._shared.release_later(flight.key, token)
        stored = await self._fill_all(token, snapshot, ttl, tags, fills)
        filled = 0
        store = self._store_local
        for flight, value, payload in ready:
            if stored.get(flight.key, True) and not flight.invalidated:
                store(flight.key, value, payload, ttl, tags, copy_on_read)
                filled += 1
        self._counters.sets += filled
        self._counters.stale_sets_refused += len(ready) - filled
        return filled

    async def _fill_all(
        self,
        token: str | None,
        snapshot: Snapshot | None,
        ttl: float,
        tags: tuple[str, ...],
        fills: list[tuple[str, bytes]],
    ) -> dict[str, bool]:
        if not fills or token is None or snapshot is None:
            return {}  # Redis away: L1 alone, under the flights' guard
        shared = self._shared
        try:
            if tuple(await shared.mirror.current(tags)) != snapshot:
                for key, _ in fills:  # a tag moved while the batch loaded
                    shared.release_later(key, token)
                return dict.fromkeys((key for key, _ in fills), False)
            entries = [
                (key, pack(ttl, snapshot.generation, tags, snapshot.versions, payload))
                for key, payload in fills
            ]
            results = await shared.remote.fill_many(entries, ttl, token)
        except BackendError:
            self._counters.l2_errors += 1
            for key, _ in fills:  # the fill may not have run: give the leases back
                shared.release_later(key, token)
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
