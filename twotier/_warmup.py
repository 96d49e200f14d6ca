"""`cache.warmup`: fill both tiers for many keys, in batches.

Per batch of keys: one pipelined round trip reads them all (judged against the
version mirror like any read), one more takes the fill lease of each miss
(plain `SET NX`, under one shared token), the loader runs for the keys whose
lease this batch holds, and one more round trip stores the results with the
same conditional fill as a single load, under the version snapshot taken
before the loader ran — so warmup honours the no-stale-set guarantee too.
Keys already valid in Redis are left there; their first read brings them
into L1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ._envelope import header
from ._exceptions import BackendError
from ._flights import Flight, Flights, LeaderCancelled
from ._logging import Log
from ._serialization import Serializer
from ._shared import SharedTier, Snapshot
from ._stats import Counters
from ._types import MISS, StoreLocal

BATCH = 1000
_FAILED = object()  # the loader raised for this key

Lookup = Callable[[str], Any]


class _Batch:
    """Up to BATCH keys on their way through warmup."""

    __slots__ = ("claims", "done", "flights")

    def __init__(
        self,
        flights: list[Flight],
        claims: asyncio.Task[tuple[list[Flight], str | None]] | None,
    ) -> None:
        self.flights = flights
        self.claims = claims  # (the flights leased, their token); None: nothing to claim
        self.done = False  # its leases were filled or released


class _Prepared(NamedTuple):
    """A batch loaded and serialized, to be filled."""

    tags: tuple[str, ...]
    token: str | None
    snapshot: Snapshot | None
    ready: list[tuple[Flight, Any, bytes]]  # (flight, value, payload) of each result to cache
    fills: list[tuple[str, bytes]]  # (key, payload) of those small enough for Redis


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
        """Batches overlap: the next batch's claims are sent before this batch
        loads, and this batch's fills are sent as a task while the next batch
        loads, so Redis runs one batch's scripts while the client works on
        another. Loaders of two batches never run at once."""
        starts = range(0, len(keys), BATCH)
        batches: list[_Batch] = []  # begun and not yet finished
        filled = 0
        filling: asyncio.Task[int] | None = None
        try:
            if starts:
                batches.append(self._begin(keys[0:BATCH], tags))
            for n, _ in enumerate(starts):
                current = batches[-1]
                if n + 1 < len(starts):
                    ahead = keys[starts[n + 1] : starts[n + 1] + BATCH]
                    batches.append(self._begin(ahead, tags))
                prepared = await self._prepare(current, loader, concurrency, ttl)
                if filling is not None:
                    filled += await filling
                filling = asyncio.get_running_loop().create_task(
                    self._finish(current, prepared, ttl, copy_on_read)
                )
            if filling is not None:
                filled += await filling
                filling = None
        except asyncio.CancelledError:
            if filling is not None:
                filling.cancel()  # its leases go back (`_finish`)
            raise
        finally:
            if filling is not None:
                # The previous batch's fill, when this one failed: let it end.
                await asyncio.gather(filling, return_exceptions=True)
            for batch in batches:
                await self._abandon(batch)
        return filled

    def _begin(self, keys: Sequence[str], tags: tuple[str, ...]) -> _Batch:
        """Start a batch: its flights, and its claims on their way to Redis."""
        wanted = [
            key
            for key in dict.fromkeys(keys)
            if self._lookup(key) is MISS and self._flights.join(key) is None
        ]
        flights = [self._flights.begin(key, tags) for key in wanted]
        claims = (
            asyncio.get_running_loop().create_task(self._claim_misses(flights)) if flights else None
        )
        return _Batch(flights, claims)

    async def _abandon(self, batch: _Batch) -> None:
        """End a batch's flights; if it did not finish, give its leases back now,
        not after `lease_ttl` (issue 7, item 1). A release is keyed by the
        token: for a key already filled or released it does nothing."""
        if not batch.done:
            batch.done = True
            claims = batch.claims
            if claims is not None:
                if not claims.done():
                    claims.cancel()  # `lease_many` hands the leases it may hold back
                await asyncio.gather(claims, return_exceptions=True)
                if not claims.cancelled() and claims.exception() is None:
                    leased, token = claims.result()
                    if token is not None:
                        for flight in leased:
                            self._shared.release_later(flight.key, token)
        for flight in batch.flights:
            self._flights.end(flight)
            # A `@cached` call of the same key may have joined the flight: it
            # loads for itself now (a value it could share was handed over by
            # `_store`). Left unsettled, it waited forever (found by the model
            # checker, integration/_model_check.py).
            flight.fail(LeaderCancelled())
        batch.flights = []

    async def _prepare(
        self, batch: _Batch, loader: Callable[[str], Any], concurrency: int, ttl: float
    ) -> _Prepared | None:
        """The batch's claims, snapshot and loads: what `_finish` stores."""
        if batch.claims is None:
            return None
        leased, token = await batch.claims
        snapshot = await self._shared.snapshot(batch.flights[0].tags, ttl) if token else None
        return await self._load(leased, token, snapshot, loader, concurrency)

    async def _finish(
        self, batch: _Batch, prepared: _Prepared | None, ttl: float, copy_on_read: bool
    ) -> int:
        try:
            filled = await self._store(prepared, ttl, copy_on_read) if prepared else 0
        except BaseException:
            await self._abandon(batch)  # not done: its leases go back
            raise
        batch.done = True  # every lease was filled, or released by `_load`/`_fill_all`
        await self._abandon(batch)
        return filled

    async def _claim_misses(self, flights: list[Flight]) -> tuple[list[Flight], str | None]:
        """The flights to load (their leases taken under one token, if Redis is there).

        Two round trips of plain commands: the entries are read (and judged
        like any read; a valid one is left in Redis, not reloaded), then the
        lease of each key without one is taken by `SET NX` (`lease_many`). A
        key whose lease another caller holds is being loaded there: it is
        theirs. No script runs before the loader: of a fresh key's server
        time, the claim script was half.
        """
        shared = self._shared
        try:
            generation, _ = await shared.mirror.current(())
            entries = await shared.remote.get_many([f.key for f in flights])
        except BackendError:
            self._counters.l2_errors += 1
            return flights, None  # Redis away: L1 alone
        todo = [
            flight
            for flight, data in zip(flights, entries, strict=True)
            if data is None or (await shared.judged(flight.key, data, drop=False)).entry is None
        ]
        if not todo:
            return [], None
        token = shared.new_token(generation)
        try:
            granted = await shared.remote.lease_many([f.key for f in todo], token)
        except BackendError:
            # Leases that may have been taken are released as orphaned (`lease_many`).
            self._counters.l2_errors += 1
            return flights, None  # Redis away: L1 alone
        leased = [flight for flight, ok in zip(todo, granted, strict=True) if ok]
        return leased, (token if leased else None)

    async def _load(
        self,
        todo: list[Flight],
        token: str | None,
        snapshot: Snapshot | None,
        loader: Callable[[str], Any],
        concurrency: int,
    ) -> _Prepared | None:
        if not todo:
            return None
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
        return _Prepared(todo[0].tags, token, snapshot, ready, fills)

    async def _store(self, prepared: _Prepared, ttl: float, copy_on_read: bool) -> int:
        tags, ready = prepared.tags, prepared.ready
        stored = await self._fill_all(prepared.token, prepared.snapshot, ttl, tags, prepared.fills)
        filled = 0
        store = self._store_local
        for flight, value, payload in ready:
            if stored.get(flight.key, True) and not flight.invalidated:
                store(flight.key, value, payload, ttl, tags, copy_on_read)
                filled += 1
            flight.resolve(value)  # for callers that joined the load (they asked before)
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
            head = header(ttl, snapshot.generation, tags, snapshot.versions)
            entries = [(key, head + payload) for key, payload in fills]
            results = await shared.remote.fill_many(entries, ttl, token)
        except BackendError:
            self._counters.l2_errors += 1
            for key, _ in fills:  # the fill may not have run: give the leases back
                shared.release_later(key, token, uncertain=True)  # or it did, unseen
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

        # The loop's own executor: the cache chooses its threads (real OS
        # threads under gevent, `_portal.py`); anyio's worker threads would be
        # greenlets there, and never run.
        results = await asyncio.to_thread(run_sync)
        # `lambda key: fetch(key)` over an async `fetch` looks sync but returns
        # coroutines: await them here, on the loop.
        for i, (key, result) in enumerate(zip(keys, results, strict=True)):
            if asyncio.iscoroutine(result):
                try:
                    results[i] = await result
                except Exception as exc:
                    results[i] = failed(key, exc)
        return results

    # *concurrency* workers taking the keys in turn: a task per worker, not per
    # key (a thousand tasks and a semaphore cost more than most loaders).
    results = [None] * len(keys)
    todo = iter(enumerate(keys))

    async def worker() -> None:
        for i, key in todo:
            try:
                results[i] = await loader(key)
            except Exception as exc:
                results[i] = failed(key, exc)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(keys)))))
    return results
