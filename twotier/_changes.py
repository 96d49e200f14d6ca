"""The change path: set, delete, clear and tag invalidation, sent to Redis.

Every change is applied to this instance first (L1, loads in flight), then
sent; while Redis is away it is queued in the outbox and retried, never
dropped and never raised to the caller (guarantees 1, 5, 6). The cache has
validated the input and started before it calls in here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator
from typing import Any

from ._coalesce import TagBatches
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

    That task is the cache's (`close()` waits for it), and nothing else
    cancels it but the end of its loop: `asyncio.run` cancels every task
    before it closes the loop, this one possibly before its first step. A
    delivery cancelled mid-send or before it began puts its change in the
    queue, which `close()` or the cache's loop-end hook flushes (issue 18,
    item 2).
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
            task = self._changes.spawn(self._deliver())
            if isinstance(task, asyncio.Future):
                task.add_done_callback(self._requeue_if_cancelled)

    def _requeue_if_cancelled(self, task: asyncio.Future[Any]) -> None:
        """A delivery cancelled before its first step ran none of its code."""
        changes = self._changes
        if task.cancelled() and changes is not None:
            # Queued as `invalidate_remote` queues one cancelled mid-send.
            changes._outbox.add_tags(self._tags)
            if not changes._closed():
                changes._retry_soon()
            if self._delivered is not None and not self._delivered.done():
                self._delivered.set_result(None)  # readers waiting on it read from Redis

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
    """This instance's changes on their way to Redis: by tag, by key, and clears.

    Until Redis has a change, this instance must not read the old entries
    back from L2 and keep them (read-your-writes, guarantee 1, holds for an
    un-awaited invalidation too): a read of an unsettled key, or during an
    unsettled clear, waits for the delivery before it reads; a read whose
    entry carries an unsettled tag waits, then reads again (`settle`).
    """

    __slots__ = ("_by_key", "_by_tag", "_clears")

    def __init__(self) -> None:
        self._by_tag: dict[str, set[asyncio.Future[None]]] = {}
        self._by_key: dict[str, set[asyncio.Future[None]]] = {}
        self._clears: set[asyncio.Future[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._by_tag or self._by_key or self._clears)

    def add(self, tags: tuple[str, ...], delivered: asyncio.Future[None]) -> None:
        """An invalidation of *tags*, settled when *delivered* is done."""
        _track(self._by_tag, tags, delivered)

    @contextlib.contextmanager
    def pending(self, keys: tuple[str, ...] = (), *, clear: bool = False) -> Iterator[None]:
        """A change of *keys* (or a clear) on its way to Redis for the block's duration."""
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if clear:
            self._clears.add(delivered)
            delivered.add_done_callback(self._clears.discard)
        _track(self._by_key, keys, delivered)
        try:
            yield
        finally:
            delivered.set_result(None)

    def touches(self, tags: Iterable[str], key: str | None = None) -> bool:
        """Whether one of this instance's changes of *key* or *tags*, or a clear, is on its way."""
        return (
            bool(self._clears)
            or (key is not None and key in self._by_key)
            or not self._by_tag.keys().isdisjoint(tags)
        )

    async def settle(self, tags: Iterable[str], key: str | None = None) -> None:
        """Wait for this instance's changes of *key* and *tags*, and its clears, to reach Redis."""
        pending = {future for tag in tags for future in self._by_tag.get(tag, ())}
        pending.update(self._clears)
        if key is not None:
            pending.update(self._by_key.get(key, ()))
        if pending:
            await asyncio.wait(pending)  # each is bounded by the Redis timeout

    def clear(self) -> None:
        self._by_tag.clear()
        self._by_key.clear()
        self._clears.clear()


def _track(
    index: dict[str, set[asyncio.Future[None]]],
    names: tuple[str, ...],
    delivered: asyncio.Future[None],
) -> None:
    """Index *delivered* under each of *names* until it is done."""
    for name in names:
        index.setdefault(name, set()).add(delivered)

    def settled(done: asyncio.Future[None]) -> None:
        for name in names:
            pending = index.get(name)
            if pending is not None:
                pending.discard(done)
                if not pending:
                    del index[name]

    if names:
        delivered.add_done_callback(settled)


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
        self.batches = TagBatches(self._send_tags, spawn, self._queue_tags)

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
        with self.unsettled.pending((key,)):
            snapshot = await self._shared.snapshot(tags)
            if snapshot is None or len(payload) > self._max_value_size:
                # Too big for Redis (it would stall the link for everyone), or Redis
                # cannot say under which versions to store it: kept in this L1 only,
                # and announced as a delete so no instance keeps, or reads from L2,
                # the key's old value (issue 7, item 9).
                if snapshot is not None:
                    self._counters.oversized_values += 1
                await self._change(lambda r: r.delete((key,)), "k", (key,))
            else:
                entry = pack(seconds, snapshot.generation, tags, snapshot.versions, payload)
                horizon = seconds + self._lease_ttl
                await self._change(lambda r: r.write(key, entry, seconds, horizon), "k", (key,))
            self._store_local(key, value, payload, seconds, tags, copy_on_read)
        self._counters.sets += 1

    async def delete(self, keys: tuple[str, ...]) -> None:
        self._apply_local("k", keys)
        with self.unsettled.pending(keys):
            await self._change(lambda r: r.delete(keys), "k", keys)
        self._counters.deletes += 1

    async def clear(self) -> None:
        self._apply_local("c", ())
        with self.unsettled.pending(clear=True):
            await self._change(lambda r: r.clear(), "c", ())
        self._counters.clears += 1

    def invalidate_tags(self, tags: tuple[str, ...]) -> Invalidation:
        """Applied here at once; in Redis when the `Invalidation` is awaited, or soon."""
        self._apply_local("t", tags)
        self._counters.tag_invalidations += len(tags)
        return Invalidation(self, tags)

    async def invalidate_remote(self, tags: tuple[str, ...]) -> None:
        if not self._closed():
            await self._ensure_started()
        # (else `close()` is delivering what was accepted before it: the link
        # is still open until it has)
        await self.batches.send(tags)  # with those asked for meanwhile (`_coalesce.py`)

    async def _send_tags(self, tags: tuple[str, ...]) -> None:
        try:
            await self._change(lambda r: r.invalidate(tags), "t", tags)
        except asyncio.CancelledError:
            # The awaiting caller was cancelled mid-send (or the loop is
            # ending): Redis may or may not have it. Queued, it is sent again
            # (a repeated bump is harmless).
            self._queue_tags(tags)
            raise

    def _queue_tags(self, tags: tuple[str, ...]) -> None:
        self._outbox.add("t", tags)
        if not self._closed():
            self._retry_soon()

    async def _change(
        self, send: Callable[[RemoteTier], Awaitable[object]], kind: str, names: tuple[str, ...]
    ) -> None:
        """Send a change to Redis; if Redis is away, queue it (as an invalidation
        of *names*: keys "k", tags "t", or a clear "c"). Never raises BackendError."""
        try:
            await send(self._shared.remote)
        except BackendError as exc:
            self._counters.l2_errors += 1
            self._counters.queued_ops += 1
            self._outbox.add(kind, names)
            self._outbox.cause = self._outbox.cause or str(exc)
            if _refused(exc):
                # Refused, not away (a slot migrating past the budget, a write
                # under maxmemory): the others are told at once (`_hints.py`),
                # and the queue holds it as an invalidation, which Redis may
                # take even when full. Try now.
                self.spawn(self._hint([(kind, names)]))
                self.request_flush()
            self._retry_soon()

    async def _hint(self, changes: list[tuple[str, tuple[str, ...]]]) -> None:
        """Tell the other instances of *changes* queued here, so that they
        neither serve them from L1 nor read them from Redis until they land.
        Best effort: the changes stay queued either way."""
        for kind, names in changes:
            try:
                await self._shared.remote.hint(kind, names)
            except BackendError:
                return

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
        except BackendError as exc:
            if _refused(exc):  # still refused: the others' holds are renewed
                await self._hint(self._outbox.hints())
            return  # still away; the next recovery tries again
        if delivered:
            self._log.info("delivered %d queued change(s)", delivered)

    def stop_retrying(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

    async def deliver_before_close(self, *, final: bool = True) -> None:
        """A last try (bounded by the timeout). When the cache closes (*final*),
        what Redis still lacks is counted as dropped; at the end of a loop it
        stays queued for the next loop to deliver."""
        await self._flush()
        if not len(self._outbox):
            return
        if final:
            self._counters.dropped_ops += len(self._outbox)
            self._log.warning(
                "closing with %d queued change(s) Redis never received", len(self._outbox)
            )
        else:
            self._log.warning(
                "the event loop ended with %d change(s) Redis has not received; they stay "
                "queued until the cache is used again, and are lost if the process ends first",
                len(self._outbox),
            )

    def forget_loop(self) -> None:
        """The cache's loop closed: its tasks and futures died with it."""
        self._retry = None
        self.unsettled.clear()


def _refused(exc: BackendError) -> bool:
    """Refused by a server that answers, not away (unreachable, timed out)."""
    return not isinstance(exc, (BackendUnavailable, BackendTimeout))
