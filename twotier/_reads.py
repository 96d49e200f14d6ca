"""The read path: L2, then the fill lease and the loader, then a conditional write.

`TwoTierCache` reads L1 itself (the hit path stays one frame) and comes here
on a miss, started and with its input validated. One load per key and
instance (`_flights.py`); across instances the key's fill lease in Redis
(`_shared.py`), whose waiters are woken by the lease's end, never by polling.
A result is stored only under the versions snapshotted before its loader ran
(guarantee 3), and in L1 only while no change of its key or tags came by.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ._changes import Unsettled
from ._events import Events
from ._flights import Flight, Flights, LeaderCancelled
from ._local import LocalTier, copy_plan
from ._logging import Log
from ._policies import Loader
from ._serialization import Serializer
from ._shared import GAVE_WAY, Found, SharedTier
from ._stats import Counters
from ._types import MISS, Clock, RenderTags


class Reads:
    """Serves this instance's L1 misses."""

    def __init__(
        self,
        local: LocalTier,
        shared: SharedTier,
        flights: Flights,
        unsettled: Unsettled,
        serializer: Serializer,
        counters: Counters,
        events: Events,
        log: Log,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        listening: Callable[[], bool],
        degraded: Callable[[], bool],
        clock: Clock,
        lease_ttl: float,
        recheck: float,
        max_stale: float,
        max_value_size: int,
    ) -> None:
        self._local = local
        self._shared = shared
        self._flights = flights
        self._unsettled = unsettled
        self._serializer = serializer
        self._counters = counters
        self._events = events
        self._log = log
        self._spawn = spawn
        self._listening = listening  # the invalidation link is up: a lease's end wakes us
        self._degraded = degraded  # changes cannot reach us now
        self._clock = clock
        self._lease_ttl = lease_ttl
        self._recheck = recheck  # a lease wait reads again this often: its 'f' may be lost
        self._max_stale = max_stale
        self._max_value_size = max_value_size
        self._lease_waiters: dict[str, asyncio.Future[None]] = {}

    async def get(self, key: str, default: Any, copy_on_read: bool) -> Any:
        """`cache.get` after an L1 miss: one L2 read, no lease, no loader.

        The rule of every read (issue 17, cases 1–3): a reply that a change of
        its key may postdate — ours or another instance's, applied while the
        read was in flight — is returned, never kept in L1.
        """
        watch = self._flights.watch(key)
        try:
            found = await self._settled_lookup(key)
        finally:
            self._flights.unwatch(watch)
        if found.entry is None:
            self._counters.misses += 1
            return default
        if not watch.spoiled:
            self._store_found(key, found, copy_on_read)
        return found.value

    async def _settled_lookup(self, key: str, min_ttl: float = 0.0, *, drop: bool = True) -> Found:
        """L2's entry for *key*, read once this instance's own changes of it
        have reached Redis: a delete, set or clear of ours still on its way
        first (else the old entry is read back and kept), and an invalidation
        of the tags the entry carries, after which it is read again."""
        unsettled = self._unsettled
        if unsettled and unsettled.touches((), key):
            await unsettled.settle((), key)
        while True:
            found = await self._shared.lookup(key, min_ttl, drop=drop)
            entry = found.entry
            if entry is None or not (unsettled and unsettled.touches(entry.tags, key)):
                return found
            await unsettled.settle(entry.tags, key)

    async def load(
        self, key: str, tags: RenderTags, ttl: float, loader: Loader, copy_on_read: bool
    ) -> Any:
        """The miss path: one flight per key, L2, the loader, a conditional write.

        Callers have validated *key* and *ttl*, started the cache and already
        missed L1; *tags* renders the entry's (valid) tags, and is called only
        if L2 misses too or this instance has invalidations on their way.
        """
        while (flight := self._flights.join(key)) is not None:
            self._counters.joined_loads += 1
            try:
                value = await flight.wait()
            except LeaderCancelled:
                # The leader gave up or gave way: load for ourselves — unless
                # another of its callers already does. Two of them beginning a
                # flight each left the first unregistered, so no invalidation
                # could revoke it, and it kept an outdated result in L1 (found
                # by the model checker).
                continue
            # Callers joining one load must not share one mutable object.
            plan = copy_plan(value) if copy_on_read else None
            if plan is True:
                value = self._serializer.loads(self._serializer.dumps(value))
            elif plan is not None:
                value = plan(value)
            return value
        flight = self._flights.begin(key, ())  # its tags once rendered (`_read_through`)
        try:
            value = await self._read_through(flight, tags, ttl, loader, copy_on_read)
        except asyncio.CancelledError:
            flight.fail(LeaderCancelled())
            raise
        except BaseException as exc:
            flight.fail(exc)
            raise
        finally:
            self._flights.end(flight)
        flight.resolve(value)
        return value

    async def refresh(
        self,
        key: str,
        tags: tuple[str, ...],
        ttl: float,
        loader: Loader,
        copy_on_read: bool,
        replaces_until: float,
    ) -> None:
        """Reload *key* ahead of its expiry (XFetch), while callers keep hitting L1.

        An L2 entry that outlives ours (*replaces_until*, clock time) was already
        refreshed by another instance and is simply taken; if another instance
        is loading the key right now, this refresh gives way to it. Failures are
        counted and logged: the current value stays served until it expires.
        """
        if self._flights.join(key) is not None:
            return
        self._counters.early_refreshes += 1
        flight = self._flights.begin(key, tags)
        # An L2 entry counts as already refreshed if it lives at least halfway
        # between ours and a fresh one: a margin clear of clock skew and of
        # Redis's millisecond rounding, which a 1 ms margin was not.
        remaining = max(0.0, replaces_until - self._clock())
        min_ttl = remaining + max(0.0, ttl - remaining) / 2
        try:
            value = await self._read_through(
                flight, lambda: tags, ttl, loader, copy_on_read, min_ttl=min_ttl, refreshing=True
            )
        except BaseException as exc:
            # Callers whose L1 copy expired meanwhile joined this flight: they
            # load for themselves rather than share a background failure.
            flight.fail(LeaderCancelled())
            if not isinstance(exc, Exception):
                raise
            self._log.warning("early refresh of %r failed: %r", key, exc)
        else:
            if value is MISS:  # gave way to a load elsewhere
                flight.fail(LeaderCancelled())
            else:
                flight.resolve(value)
        finally:
            self._flights.end(flight)

    async def _read_through(
        self,
        flight: Flight,
        render_tags: RenderTags,
        ttl: float,
        loader: Loader,
        copy_on_read: bool,
        *,
        min_ttl: float = 0.0,
        refreshing: bool = False,
    ) -> Any:
        """L2 (one GET), else the fill lease, the loader and the conditional fill.

        The tags are rendered after an L2 miss, not before the read: a hit is
        judged by the tags its entry carries, and an invalidation during the
        read reaches the mirror it is judged against (a key's own change
        reaches the flight). The flight takes them before the versions are
        snapshotted, so from then on a tag's invalidation revokes the load.
        """
        key, shared = flight.key, self._shared
        if self._unsettled:  # read-your-writes: our own invalidations first
            flight.tags = render_tags()
            await self._unsettled.settle(flight.tags, key)
        found = await self._settled_lookup(key, min_ttl, drop=False)  # a fill replaces it
        if found.entry is None:
            # A miss: the tags are needed from here on. Rendered before a lease
            # is taken, so a template that cannot render leaves no lease held.
            flight.tags = flight.tags or render_tags()
        token: str | None = None
        if found.entry is None and found.rejected is not None:
            found, token = await self._claim(key, found.rejected, refreshing)
            if found is GAVE_WAY:
                return MISS  # an early refresh gives way to the load already running
        if found.entry is not None:
            unsettled = self._unsettled
            if unsettled and unsettled.touches(found.entry.tags, key):
                # One of this instance's changes of the entry set out during
                # the claim (`_settled_lookup` saw to those during the read),
                # and the mirror takes it only once Redis has it: then read
                # again (read-your-writes).
                await unsettled.settle(found.entry.tags, key)
                return await self._read_through(
                    flight,
                    render_tags,
                    ttl,
                    loader,
                    copy_on_read,
                    min_ttl=min_ttl,
                    refreshing=refreshing,
                )
            if not flight.invalidated:
                self._store_found(key, found, copy_on_read)
            return found.value
        if not refreshing:  # a refresh is nobody's miss: its callers all hit L1
            self._counters.misses += 1
        tags = flight.tags
        snapshot = await shared.snapshot(tags, ttl) if token is not None else None
        self._counters.loads += 1
        try:
            value = await self._events.load(loader)
            payload = self._serializer.dumps(value)  # SerializationError reaches the caller
        except BaseException as exc:  # cancellation too (a hard timeout): free the lease now
            if isinstance(exc, Exception):
                self._counters.load_errors += 1
            if token is not None:
                self._spawn(shared.release(key, token))
            raise
        if token is not None:
            if len(payload) > self._max_value_size:
                self._counters.oversized_values += 1  # kept in L1 only; others load their own
                shared.release_later(key, token)
            elif snapshot is None:
                shared.release_later(key, token)  # versions unknown: L1 only
            elif not await shared.fill(key, tags, snapshot, payload, ttl, token):
                # The key or one of its tags changed while the loader ran: its
                # result is already outdated and must not be cached anywhere.
                self._counters.stale_sets_refused += 1
                return value
        if flight.invalidated:
            self._counters.stale_sets_refused += 1
        else:
            self.store(key, value, payload, ttl, tags, copy_on_read)
            self._counters.sets += 1  # the seed counted every value it cached as a set
        return value

    async def _claim(self, key: str, rejected: bytes, refreshing: bool) -> tuple[Found, str | None]:
        """Take the fill lease, or wait for the caller that holds it.

        Waiting is woken by the end of that lease (an 'f' message) or a change
        of the key, and bounded by the lease's own lifetime, so a crashed
        loader delays others by at most `lease_ttl`. Then one read, and a
        claim only if that read misses too: three commands per waiting
        instance. The waiter is registered before the claim is sent, so a
        lease that ends before its reply is read still wakes it.

        The 'f' message can be lost while the fill landed: its publish goes to
        the control slot's master, which may refuse or stall writes for
        seconds (a Redis Cluster master in a manual failover) while the
        entry's shard took the fill. So a wait not woken within
        `health_interval` reads the key again (one GET, which a write pause
        lets through) and, if it is still missing, claims it again (the lease
        may have ended unheard without a fill); it goes on waiting only while
        the lease is still held.
        """
        woken = self._lease_waiters.get(key)
        if woken is None:
            woken = self._lease_waiters[key] = asyncio.get_running_loop().create_future()
        try:
            found, token, held = await self._shared.claim(key, rejected)
            if not held:
                return found, token
            if refreshing:
                return GAVE_WAY, None
            self._counters.lease_waits += 1
            if self._listening():  # else no message could wake us
                return await self._events.lease_wait(self._wait_for_lease(key, woken))
        finally:
            if self._lease_waiters.get(key) is woken:
                del self._lease_waiters[key]
        found = await self._shared.lookup(key, drop=False)
        if found.entry is not None or found.rejected is None:
            return found, None
        found, token, _ = await self._shared.claim(key, found.rejected)
        return found, token

    async def _wait_for_lease(
        self, key: str, woken: asyncio.Future[None]
    ) -> tuple[Found, str | None]:
        """Wait for the lease's end, at most `lease_ttl`; at its end, or every
        `health_interval` meanwhile, read the key again and, if it is still
        missing, claim it (the lease may have ended unheard, filled or not)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease_ttl
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(min(deadline, loop.time() + self._recheck)):
                    await asyncio.shield(woken)
            found = await self._shared.lookup(key, drop=False)
            if found.entry is not None or found.rejected is None:
                return found, None
            found, token, held = await self._shared.claim(key, found.rejected)
            if not held or woken.done() or loop.time() >= deadline:
                return found, token

    def wake_lease_waiters(self, keys: Iterable[str] | None) -> None:
        """Wake the waiters on these keys' leases (all of them for None)."""
        for key in list(self._lease_waiters) if keys is None else keys:
            woken = self._lease_waiters.pop(key, None)
            if woken is not None and not woken.done():
                woken.set_result(None)

    def _store_found(self, key: str, found: Found, copy_on_read: bool) -> None:
        entry = found.entry
        assert entry is not None  # a hit
        ttl = entry.remaining()
        if ttl > 0:
            self.store(key, found.value, entry.payload, ttl, entry.tags, copy_on_read)

    def store(
        self,
        key: str,
        value: Any,
        payload: bytes,
        ttl: float,
        tags: tuple[str, ...],
        copy_on_read: bool,
    ) -> None:
        """Into L1; while Redis is away, for at most `max_stale` seconds."""
        if self._degraded():
            ttl = min(ttl, self._max_stale)  # nobody can tell us about changes now
        self._local.store(key, value, payload, ttl, tags, copy_on_read)

    def forget_loop(self) -> None:
        """The cache's loop closed: the waiters' futures died with it."""
        self._lease_waiters.clear()
