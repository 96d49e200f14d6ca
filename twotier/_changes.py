"""The change path: set, delete, clear and tag invalidation, sent to Redis.

Every change is applied to this instance first (L1, loads in flight), then
sent; while Redis is away it is queued in the outbox and retried, never
dropped and never raised to the caller (guarantees 1, 5, 6). The cache has
validated the input and started before it calls in here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any

from ._envelope import pack
from ._exceptions import BackendError, BackendTimeout, BackendUnavailable
from ._logging import Log
from ._outbox import Outbox
from ._shared import SharedTier
from ._stats import Counters
from ._tier import Kind, RemoteTier
from ._types import StoreLocal


class Invalidation:
    """Returned by `invalidate_tag(s)`: already applied locally; await it to wait for Redis.

    Awaited at once (the usual case), it sends the change from the awaiting
    coroutine: no task, no extra turn of the event loop. Code written for the
    seed's synchronous manager calls `invalidate_tag` without `await`; the
    invalidation must take effect anyway, so unless it is awaited within the
    current turn of the loop, it is delivered by a tracked background task.
    """

    __slots__ = ("_changes", "_delivered", "_started", "_tags")

    def __init__(self, changes: Changes | None, tags: tuple[str, ...]) -> None:
        self._changes = changes
        self._tags = tags
        self._started = changes is None  # None: delivered already (from sync code)
        self._delivered: asyncio.Future[None] | None = None
        if changes is not None:
            loop = asyncio.get_running_loop()
            self._delivered = loop.create_future()
            changes.unsettled.add(tags, self._delivered)
            loop.call_soon(self._deliver_in_background)

    def _deliver_in_background(self) -> None:
        if not self._started and self._changes is not None:
            self._started = True
            self._changes.spawn(self._deliver())

    async def _deliver(self) -> None:
        assert self._changes is not None
        assert self._delivered is not None
        try:
            await self._changes.invalidate_remote(self._tags)
        finally:
            if not self._delivered.done():
                self._delivered.set_result(None)

    def __await__(self) -> Generator[Any, None, None]:
        if not self._started:
            self._started = True
            yield from self._deliver().__await__()
        elif self._delivered is not None:
            yield from asyncio.shield(self._delivered).__await__()


class Unsettled:
    """This instance's invalidations on their way to Redis, by tag.

    Until Redis has an invalidation, this instance must not read the old
    entries back from L2 (read-your-writes holds for an un-awaited call too):
    reads of these tags wait for the delivery first (`settle`).
    """

    __slots__ = ("_by_tag",)

    def __init__(self) -> None:
        self._by_tag: dict[str, set[asyncio.Future[None]]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_tag)

    def add(self, tags: tuple[str, ...], delivered: asyncio.Future[None]) -> None:
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(delivered)
        delivered.add_done_callback(lambda done: self._settled(tags, done))

    def _settled(self, tags: tuple[str, ...], delivered: asyncio.Future[None]) -> None:
        for tag in tags:
            pending = self._by_tag.get(tag)
            if pending is not None:
                pending.discard(delivered)
                if not pending:
                    del self._by_tag[tag]

    def touches(self, tags: Iterable[str]) -> bool:
        return not self._by_tag.keys().isdisjoint(tags)

    async def settle(self, tags: Iterable[str]) -> None:
        """Wait for this instance's in-flight invalidations of *tags* to reach Redis."""
        pending = {future for tag in tags for future in self._by_tag.get(tag, ())}
        if pending:
            await asyncio.wait(pending)  # each is bounded by the Redis timeout

    def clear(self) -> None:
        self._by_tag.clear()


class Changes:
    """Sends this instance's changes to Redis, or queues them while it is away."""

    def __init__(
        self,
        shared: SharedTier,
        outbox: Outbox,
        unsettled: Unsettled,
        counters: Counters,
        log: Log,
        *,
        apply_local: Callable[[Kind, tuple[str, ...]], None],
        store_local: StoreLocal,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        ensure_started: Callable[[], Awaitable[None]],
        closed: Callable[[], bool],
        lease_ttl: float,
        max_value_size: int,
        health_interval: float,
    ) -> None:
        self._shared = shared
        self._outbox = outbox
        self._counters = counters
        self._log = log
        self._apply_local = apply_local
        self._store_local = store_local
        self.spawn = spawn
        self._ensure_started = ensure_started
        self._closed = closed
        self._lease_ttl = lease_ttl
        self._max_value_size = max_value_size
        self._health_interval = health_interval
        self._retry: asyncio.Task[None] | None = None
        self.unsettled = unsettled

    async def set(
        self,
        key: str,
        value: Any,
        payload: bytes,
        seconds: float,
        tags: tuple[str, ...],
        copy_on_read: bool,
    ) -> None:
        self._apply_local("k", (key,))
        snapshot = await self._shared.snapshot(tags)
        if snapshot is None or len(payload) > self._max_value_size:
            # Too big for Redis (it would stall the link for everyone), or Redis
            # cannot say under which versions to store it: kept in this L1 only,
            # and announced as a delete so no instance keeps, or reads from L2,
            # the key's old value (issue 7, item 9).
            if snapshot is not None:
                self._counters.oversized_values += 1
            await self._change(lambda r: r.delete((key,)), lambda o: o.add_keys((key,)))
        else:
            entry = pack(seconds, snapshot.generation, tags, snapshot.versions, payload)
            horizon = seconds + self._lease_ttl
            await self._change(
                lambda r: r.write(key, entry, seconds, horizon), lambda o: o.add_keys((key,))
            )
        self._store_local(key, value, payload, seconds, tags, copy_on_read)
        self._counters.sets += 1

    async def delete(self, keys: tuple[str, ...]) -> None:
        self._apply_local("k", keys)
        await self._change(lambda r: r.delete(keys), lambda o: o.add_keys(keys))
        self._counters.deletes += 1

    async def clear(self) -> None:
        self._apply_local("c", ())
        await self._change(lambda r: r.clear(), lambda o: o.add_clear())
        self._counters.clears += 1

    def invalidate_tags(self, tags: tuple[str, ...]) -> Invalidation:
        """Applied here at once; in Redis when the `Invalidation` is awaited, or soon."""
        self._apply_local("t", tags)
        self._counters.tag_invalidations += len(tags)
        return Invalidation(self, tags)

    async def invalidate_remote(self, tags: tuple[str, ...]) -> None:
        await self._ensure_started()
        try:
            await self._change(lambda r: r.invalidate(tags), lambda o: o.add_tags(tags))
        except asyncio.CancelledError:
            # The awaiting caller was cancelled mid-send: Redis may or may not
            # have it. Queued, it is sent again (a repeated bump is harmless).
            self._outbox.add_tags(tags)
            self._retry_soon()
            raise

    async def _change(
        self, send: Callable[[RemoteTier], Awaitable[object]], queue: Callable[[Outbox], None]
    ) -> None:
        """Send a change to Redis; if Redis is away, queue it. Never raises BackendError."""
        try:
            await send(self._shared.remote)
        except BackendError as exc:
            self._counters.l2_errors += 1
            self._counters.queued_ops += 1
            queue(self._outbox)
            if not isinstance(exc, (BackendUnavailable, BackendTimeout)):
                # Refused, not away (a write under maxmemory): the queue holds it
                # as an invalidation, which Redis takes even when full. Try now.
                self.request_flush()
            self._retry_soon()

    # -- queued changes ------------------------------------------------------------

    def request_flush(self) -> None:
        """Deliver the changes queued while Redis was away, in the background."""
        if len(self._outbox):
            self.spawn(self._flush())

    def _retry_soon(self) -> None:
        """Retry queued changes every health interval until Redis has them.

        A recovery flushes the queue too, but a one-off timeout never opens the
        breaker, so no recovery would ever come for it.
        """
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(self._retry_queued())

    async def _retry_queued(self) -> None:
        while len(self._outbox) and not self._closed():
            await asyncio.sleep(self._health_interval)
            await self._flush()

    async def _flush(self) -> None:
        try:
            delivered = await self._outbox.flush(self._shared.remote)
        except BackendError:
            return  # still away; the next recovery tries again
        if delivered:
            self._log.info("delivered %d queued change(s)", delivered)

    def stop_retrying(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

    async def deliver_before_close(self) -> None:
        """A last try (bounded by the timeout); what Redis still lacks is counted as dropped."""
        await self._flush()
        if len(self._outbox):
            self._counters.dropped_ops += len(self._outbox)
            self._log.warning(
                "closing with %d queued change(s) Redis never received", len(self._outbox)
            )

    def forget_loop(self) -> None:
        """The cache's loop closed: its tasks and futures died with it."""
        self._retry = None
        self.unsettled.clear()
