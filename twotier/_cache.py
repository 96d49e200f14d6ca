"""`TwoTierCache`: the public face, its lifecycle, and the wiring of its parts.

The cache checks its input, starts (lazily) on one event loop, and hands each
call to the part that owns the algorithm:

- `_reads.py`: an L1 miss → L2 → the fill lease → the loader → a conditional write;
- `_changes.py`: set, delete, clear, invalidate → applied here → sent to Redis,
  or queued in the outbox and retried while Redis is away;
- `_applier.py`: a change (ours, or another instance's from the bus) applied to
  L1, the loads in flight, the lease waiters and the version mirror;
- `_link.py`: the Redis connection, the listener and resyncs; `_decorator.py`:
  `@cached`; `_sync.py`: the blocking view `cache.sync`.

Concurrency: all state lives on one event loop; methods that touch L1 do so
synchronously, so each local step is atomic.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar

from ._applier import Applier
from ._changes import Changes, Invalidation, Unsettled
from ._decorator import CachedFunction, make_cached
from ._events import Events, Observer
from ._exceptions import (
    CacheClosedError,
    EventLoopError,
    InvalidKeyError,
)
from ._flights import Flights
from ._hints import Holds
from ._keys import validate_key, validate_tags, validate_ttl
from ._link import RedisLink
from ._local import LocalTier
from ._logging import Identity, tier_log
from ._loop_end import LoopEnd
from ._memory import MemoryTier, hub_for
from ._mirror import VersionMirror
from ._options import check_count, check_namespace, check_seconds
from ._outbox import Outbox
from ._policies import Loader, LoaderPolicy, PolicyRunner
from ._reads import Reads
from ._redis import MIGRATION_TIMEOUTS
from ._serialization import MsgpackSerializer, Serializer
from ._shared import SharedTier
from ._stats import Counters
from ._sync import SyncCache
from ._tier import RemoteTier
from ._topology import Target, detect
from ._topology import parse as parse_url
from ._types import MISS, Clock, RenderTags
from ._warmup import Warmup

#: Tags one entry may carry: an L2 read checks all of them in one script call,
#: and Lua's `unpack` stops near 8,000 values. Invalidations take any number.
MAX_ENTRY_TAGS = 1000

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def validate_entry_tags(tags: Iterable[object]) -> tuple[str, ...]:
    tags_t = validate_tags(tags)
    if len(tags_t) > MAX_ENTRY_TAGS:
        raise InvalidKeyError(
            f"an entry carries at most {MAX_ENTRY_TAGS} tags, got {len(tags_t)}; "
            "tag the group, not each member"
        )
    return tags_t


class TwoTierCache:
    """A bounded in-process L1 in front of a shared Redis L2, kept coherent over pub/sub."""

    def __init__(
        self,
        redis_url: str | None = None,
        namespace: str = "twotier",
        default_ttl: float = 300,
        l1_maxsize: int = 10_000,
        *,
        serializer: Serializer | None = None,
        copy_on_read: bool = True,
        redis_timeout: float = 0.1,
        connect_timeout: float = 0.5,
        max_connections: int = 50,
        max_stale: float = 5.0,
        lease_ttl: float = 10.0,
        health_interval: float = 1.0,
        outbox_limit: int = 10_000,
        log_maxlen: int = 10_000,
        max_value_size: int = 1024 * 1024,
        compaction_interval: float = 60.0,
        heartbeat_interval: float = 5.0,
        confirm_replicas: int = 0,
        listen_on_replicas: bool = False,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        check_namespace(namespace)
        for name, count in (
            ("l1_maxsize", l1_maxsize),
            ("outbox_limit", outbox_limit),
            ("log_maxlen", log_maxlen),
            ("max_connections", max_connections),
            ("max_value_size", max_value_size),
        ):
            check_count(name, count)
        check_count("confirm_replicas", confirm_replicas, minimum=0)
        # The URL's form is checked now, not at the first call (`_topology.py`).
        self._target = parse_url(redis_url) if redis_url is not None else None
        for name, value in (
            ("redis_timeout", redis_timeout),
            ("connect_timeout", connect_timeout),
            ("compaction_interval", compaction_interval),
            ("heartbeat_interval", heartbeat_interval),
            ("max_stale", max_stale),
            ("lease_ttl", lease_ttl),
            ("health_interval", health_interval),
        ):
            check_seconds(name, value)
        self.namespace = namespace
        self.redis_url = redis_url
        self.default_ttl = validate_ttl(default_ttl)
        self.instance_id = _new_instance_id()
        # Every log adapter of the cache reads the id from here: a forked child
        # changes it once for all of them (`_forked`).
        self._identity = Identity(self.instance_id)
        self.copy_on_read = copy_on_read
        self._serializer = serializer or MsgpackSerializer()
        self.clock: Clock = clock or time.monotonic
        self._redis_timeout = float(redis_timeout)
        self._connect_timeout = float(connect_timeout)
        self._max_connections = max_connections
        self._compaction_interval = float(compaction_interval)
        self._heartbeat_interval = float(heartbeat_interval)
        self._confirm_replicas = confirm_replicas
        self._listen_on_replicas = bool(listen_on_replicas)
        self.max_value_size = max_value_size
        self._max_stale = float(max_stale)
        self._lease_ttl = float(lease_ttl)
        self._health_interval = float(health_interval)
        self._log_maxlen = log_maxlen
        self._log = tier_log(self._identity, "cache")
        self.counters = Counters()
        self.events = Events(observers, self._log)  # metrics and tracing (twotier/_events.py)
        self.local = LocalTier(l1_maxsize, self.clock, self._serializer.loads)
        self._flights = Flights()
        self._outbox = Outbox(outbox_limit, self.counters)
        # A hint is renewed at every refused retry of the writer (one health
        # interval, plus the migration budget its retry may wait): held for
        # three of those, it outlives a long migration and not a dead writer.
        holds = Holds(
            self.clock, 3 * (self._health_interval + MIGRATION_TIMEOUTS * self._redis_timeout)
        )
        remote = MemoryTier(hub_for(namespace), self.instance_id)
        self._shared = SharedTier(
            remote,
            VersionMirror(remote.versions),
            self._serializer,
            self.counters,
            self._log,
            lease_ttl=self._lease_ttl,
            retry_delay=self._redis_timeout,
            max_retry_delay=self._health_interval,
            clock=self.clock,
            spawn=self.spawn,
            blocked=self._outbox.__bool__,
            events=self.events,
            held=holds.holds,
        )
        unsettled = Unsettled()
        self._reads = Reads(
            self.local,
            self._shared,
            self._flights,
            unsettled,
            self._serializer,
            self.counters,
            self.events,
            self._log,
            spawn=self.spawn,
            listening=lambda: self._link is not None and self._link.listening,
            degraded=lambda: self._link is not None and self._link.degraded,
            clock=self.clock,
            lease_ttl=self._lease_ttl,
            recheck=self._health_interval,
            max_stale=self._max_stale,
            max_value_size=self.max_value_size,
        )
        self._applier = Applier(
            self.local,
            self._flights,
            self._shared,
            self.events,
            wake_lease_waiters=self._reads.wake_lease_waiters,
            clock=self.clock,
            holds=holds,
        )
        self._changes = Changes(
            self._shared,
            self._outbox,
            unsettled,
            self.counters,
            self._log,
            apply_local=self._applier.apply_local,
            store_local=self._reads.store,
            spawn=self.spawn,
            ensure_started=self._ensure_started,
            closed=lambda: self._closed,
            lease_ttl=self._lease_ttl,
            max_value_size=self.max_value_size,
            health_interval=self._health_interval,
        )
        self._link: RedisLink | None = None
        self._deliveries: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False
        self._start_lock: asyncio.Lock | None = None
        # The event loop the cache lives on (see `_own_loop`), and the hook on its end.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_end: LoopEnd | None = None
        self._closing: asyncio.Future[None] | None = None  # done once closed
        # A forked child (gunicorn --preload, Celery's prefork pool,
        # multiprocessing) is a new instance: told at the fork itself, before
        # any code of the child can use the cache (STYLE 19, DESIGN §4.11).
        self._forked_from: str | None = None
        os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))
        self.sync = SyncCache(self)
        """The blocking view of this cache, for code without an event loop (`docs/sync.md`)."""

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect and subscribe. Redis being down is not an error: the cache starts degraded."""
        if self._closed:
            raise CacheClosedError("this TwoTierCache was closed")
        self._own_loop()
        if self._started:
            return
        self._start_lock = self._start_lock or asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            if self._forked_from is not None:
                self._log.info(
                    "a forked child (pid %d) of instance %s: a new instance, with connections "
                    "of its own and an empty L1",
                    os.getpid(),
                    self._forked_from,
                )
                self._forked_from = None
            if self._target is None:
                hub_for(self.namespace).subscribe(self.instance_id, self._applier.apply_message)
            else:
                await self._start_redis(self._target)
            self._started = True
            self._changes.request_flush()

    async def _start_redis(self, target: Target) -> None:
        target = await detect(target, self._connect_timeout)
        self._link = RedisLink(
            target,
            self.namespace,
            self.instance_id,
            self.counters,
            timeout=self._redis_timeout,
            connect_timeout=self._connect_timeout,
            max_connections=self._max_connections,
            compaction_interval=self._compaction_interval,
            health_interval=self._health_interval,
            max_stale=self._max_stale,
            lease_ttl=self._lease_ttl,
            log_maxlen=self._log_maxlen,
            apply_message=self._applier.apply_message,
            mirror_message=self._applier.mirror_message,
            clear_local=self._applier.clear_local,
            suspend_local=self._applier.suspend_local,
            bound_local=self._applier.bound_local,
            wake_lease_waiters=self._reads.wake_lease_waiters,
            flush_outbox=self._changes.request_flush,
            release_later=self._shared.release_later,
            report=self.get_stats,
            heartbeat_interval=self._heartbeat_interval,
            events=self.events,
            confirm_replicas=self._confirm_replicas,
            listen_on_replicas=self._listen_on_replicas,
        )
        self._use_remote(self._link.tier, self._link.mirror)
        await self._link.start()

    def _use_remote(self, remote: RemoteTier, mirror: VersionMirror) -> None:
        self._shared.remote = remote
        self._shared.mirror = mirror

    @property
    def _remote(self) -> RemoteTier:
        """The L2 in use: Redis's, or the in-process hub's in memory mode."""
        return self._shared.remote

    async def close(self) -> None:
        """Deliver the changes accepted so far (briefly), then disconnect. Idempotent.

        A change called before `close()`, awaited or not, is delivered, or
        queued and given a last try here (DESIGN §4, guarantee 11).
        """
        if self._closing is not None:  # closed, or closing in another task
            if not self._closing.done():
                await asyncio.shield(self._closing)
            return
        if self._closed:  # (a forked child of a cache that was closing)
            return
        self._own_loop()  # a closed loop's connections and tasks died with it
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._close()
        finally:
            self._closing.set_result(None)

    async def _close(self) -> None:
        if self._loop_end is not None:
            self._loop_end.disarm()
        # An un-awaited invalidation of this very turn (the last statement
        # inside `async with cache:`) starts its delivery in the next one: let
        # it, before the cache counts as closed (issue 18, item 2).
        await asyncio.sleep(0)
        if (self._deliveries or self._outbox) and not self._started:
            await self.start()  # a change was the cache's first use: it has no link yet
        self._closed = True
        # No more invalidations will arrive: nothing may be served from L1 now.
        self.local.clear()
        self.local.suspended = True
        # Calls in flight end, within the same bound as the deliveries: the
        # waiters on another instance's fill lease stop waiting (the message
        # that ends a wait may never come now), and the blocking view's calls
        # still running are then cancelled, giving their leases back before
        # the link closes (issue 18, item 4).
        self._reads.wake_lease_waiters(None)
        await self.sync.settle_calls(max(1.0, 10 * self._redis_timeout))
        await self._settle_changes(final=True)
        if self._link is not None:
            await self._link.close()
        if self.redis_url is None:
            hub_for(self.namespace).unsubscribe(self.instance_id)

    async def _settle_changes(self, *, final: bool) -> None:
        """Deliver what this instance accepted: the background deliveries
        (waited for, briefly; those still running are cancelled, which puts an
        unsent invalidation back in the queue), then the queue, once.

        Bounded: `max(1 s, 10 × redis_timeout)` for the deliveries, then one
        flush whose every call is bounded by `redis_timeout`.
        """
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=max(1.0, 10 * self._redis_timeout))
        leftovers = set(self._deliveries)
        for task in leftovers:
            task.cancel()  # e.g. a lease release still retrying: the lease expires anyway
        if leftovers:
            await asyncio.wait(leftovers, timeout=self._redis_timeout)
        self._changes.stop_retrying()
        if self._link is not None or self._target is None:  # (not a Redis cache never started)
            await self._changes.deliver_before_close(final=final)

    async def _at_loop_end(self) -> None:
        """The loop the cache lives on ends without `close()` (`asyncio.run`
        returned, a test's loop, a Celery task's `asyncio.run`): deliver what
        was accepted, then close the connections, which belong to this loop.
        The cache stays usable: the next loop takes it over (`_own_loop`).

        By now the loop has cancelled every task, the cache's deliveries with
        them: a delivery cancelled mid-send, or before its first step, has put
        its change in the queue (`Invalidation`), which is flushed here.
        """
        if self._closed:
            return
        if self._outbox and not self._started:
            await self.start()  # its first use was an un-awaited change: no link yet
        await self._settle_changes(final=False)
        if self._link is not None:
            await self._link.close()
        self._drop_loop_state()

    async def __aenter__(self) -> TwoTierCache:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ensure_started(self) -> None:
        if self._closed:
            raise CacheClosedError("this TwoTierCache was closed")
        if not self._started or asyncio.get_running_loop() is not self._loop:
            await self.start()  # lazy start (the module-level default cache relies on it)

    def _own_loop(self) -> None:
        """Bind the cache to the running loop, or refuse a second running one.

        Its connections, tasks and futures live on one loop; awaiting them from
        another hangs (issue 7, item 3). A loop that has closed (an
        `asyncio.run` that ended, a test's loop) hands the cache over: what it
        held is dropped, L1 with it (invalidations may have been missed
        meanwhile), and queued changes are delivered from the new loop.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise EventLoopError(
                "this TwoTierCache belongs to another event loop that is still open; "
                "a cache is used from one loop at a time. From another thread or loop "
                "(a Flask `async def` view, asyncio.run in a worker thread) call "
                "cache.sync, which hands the call to the cache's own loop "
                "(docs/deployment.md)"
            )
        if self._loop is not None:
            self._abandon_closed_loop()
        self._loop = loop
        self._loop_end = LoopEnd(self._at_loop_end)

    def _abandon_closed_loop(self) -> None:
        self._log.info("the cache's event loop closed; restarting on the new one")
        if self._loop_end is not None:
            self._loop_end.disarm()  # (it ran at the loop's end, or the loop never ran it)
            self._loop_end = None
        self._drop_loop_state()

    def _drop_loop_state(self) -> None:
        """Forget what lived on the old loop; L1 too (changes may have been missed)."""
        self._applier.clear_local()
        self.local.suspended = False  # suspended when the old loop cancelled the listener
        self._started = False
        self._start_lock = None
        self._link = None
        memory = MemoryTier(hub_for(self.namespace), self.instance_id)
        self._use_remote(memory, VersionMirror(memory.versions))
        self._deliveries = set()
        self._reads.forget_loop()
        self._changes.forget_loop()

    def _forked(self) -> None:
        """In a forked child, at the fork (`os.register_at_fork`): become a new instance.

        A new id (a child with its parent's id would take every other
        worker's changes for its own, and ignore them: issue 18, item 1), so
        new log names, heartbeat and messages; an empty L1 (inherited entries
        may be hours old, and the child heard nothing yet); new counters;
        connections, subscription and loop thread of its own, made when the
        child first uses the cache. Nothing of the parent's is closed or
        touched (`_INHERITED`). Changes the parent had queued stay queued here
        too: delivered twice at worst, which an invalidation tolerates.
        """
        loop, self._loop = self._loop, None
        _INHERITED.append(
            (
                loop,
                self._link,
                self._loop_end,  # its generator is registered with the parent's loop
                self._shared.remote,
                self._deliveries,
                self.sync.forget_loop_thread(),
                asyncio.all_tasks(loop) if loop is not None and not loop.is_closed() else (),
            )
        )
        if self.redis_url is None:
            hub_for(self.namespace).unsubscribe(self.instance_id)
        self._forked_from = self.instance_id
        self.instance_id = self._identity.instance = _new_instance_id()
        self.counters.reset()
        self._loop_end = None
        if self._closing is not None and not self._closing.done():
            # Forked while the parent was closing it: closed here too, and the
            # parent's close, on the parent's loop, is not the child's to wait for.
            self._closing, self._closed = None, True
        self._drop_loop_state()

    async def ping(self) -> float:
        """One round trip to Redis, in seconds (0.0 in memory mode); raises `BackendError`."""
        await self._ensure_started()
        if self._link is None:
            return 0.0
        start = time.perf_counter()
        await self._link.guard.call(self._link.ping)
        return time.perf_counter() - start

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this cache lives on, once started."""
        return self._loop

    @property
    def closing(self) -> asyncio.Future[None] | None:
        """The close under way or done (on the cache's loop); None before `close()`."""
        return self._closing

    @property
    def closed(self) -> bool:
        return self._closed

    def close_blocking(self) -> None:
        """`close()` from synchronous code (the same as `cache.sync.close()`)."""
        self.sync.close()

    # -- reads -------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        key = validate_key(key)
        if self.events.tracing and not self.events.reentering():
            return await self.events.get(key, self.get(key, MISS), default)
        value = self.local.get(key)
        if value is not MISS:
            self.counters.l1_hits += 1
            return value
        await self._ensure_started()
        return await self._reads.get(key, default, self.copy_on_read)

    async def load(
        self, key: str, tags: RenderTags, ttl: float, loader: Loader, copy_on_read: bool
    ) -> Any:
        """The miss path (`_reads.py`); callers have validated *key* and *ttl*
        and already missed L1; *tags* renders valid tags, if L2 misses too."""
        await self._ensure_started()
        return await self._reads.load(key, tags, ttl, loader, copy_on_read)

    async def refresh(
        self,
        key: str,
        tags: tuple[str, ...],
        ttl: float,
        loader: Loader,
        copy_on_read: bool,
        replaces_until: float,
    ) -> None:
        """Reload *key* ahead of its expiry (XFetch); callers keep hitting L1 (`_reads.py`)."""
        if not self._closed:
            await self._reads.refresh(key, tags, ttl, loader, copy_on_read, replaces_until)

    # -- changes -------------------------------------------------------------------

    async def set(
        self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None:
        key, tags_t = validate_key(key), validate_entry_tags(tags)
        seconds = self.default_ttl if ttl is None else validate_ttl(ttl)
        payload = self._serializer.dumps(value)  # raises before anything changed
        await self._ensure_started()
        await self._changes.set(key, value, payload, seconds, tags_t, self.copy_on_read)

    async def delete(self, key: str) -> None:
        keys = (validate_key(key),)
        await self._ensure_started()
        await self._changes.delete(keys)

    async def clear(self) -> None:
        """Invalidate every entry of the namespace on every instance (O(1) in Redis)."""
        await self._ensure_started()
        await self._changes.clear()

    def invalidate_tag(self, tag: str) -> Invalidation:
        return self.invalidate_tags((tag,))

    def invalidate_tags(self, tags: Iterable[str]) -> Invalidation:
        """Drop every entry carrying one of *tags*, here at once and everywhere via Redis."""
        tags_t = validate_tags(tags)
        if self._closed:
            raise CacheClosedError("this TwoTierCache was closed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Synchronous code (a worker thread, a script): hand the change to
            # the cache's loop and wait until Redis has it or it is queued. A
            # change left in the queue of a thread without a loop was never
            # delivered (issue 7, item 7).
            self.sync.run(lambda: self._invalidate_awaited(tags_t))
            return Invalidation(None, tags_t)
        self._own_loop()
        return self._changes.invalidate_tags(tags_t)

    async def _invalidate_awaited(self, tags: tuple[str, ...]) -> None:
        await self.invalidate_tags(tags)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run *coro* as a background task that `close()` waits for (briefly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    # -- warmup, stats, decorator ----------------------------------------------------

    async def warmup(
        self,
        keys: Iterable[str],
        loader: Callable[[str], Any],
        concurrency: int = 16,
        ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> int:
        """Load *keys* with *loader* (sync or async) into both tiers; return how many it filled.

        Keys already cached are not reloaded. A loader result of `None` means
        "nothing to cache for this key" (the seed's `generate_value` convention);
        a loader that raises for a key is logged and counted, and that key
        skipped. Redis is read and written in pipelined batches; sync loaders
        run in a worker thread, async ones with at most *concurrency* at once.
        """
        check_count("concurrency", concurrency)
        key_list = [validate_key(k) for k in keys]
        tags_t = validate_entry_tags(tags)
        seconds = self.default_ttl if ttl is None else validate_ttl(ttl)
        await self._ensure_started()
        warmup = Warmup(
            self._shared,
            self._flights,
            self._serializer,
            self.counters,
            lookup=self.local.get,
            store_local=self._reads.store,
            max_value_size=self.max_value_size,
            log=tier_log(self.instance_id, "loader"),
        )
        return await warmup.run(key_list, loader, concurrency, seconds, tags_t, self.copy_on_read)

    @property
    def redis_available(self) -> bool:
        """Redis answers and the invalidation link is up (False in memory mode)."""
        return self._link is not None and self._link.available

    def get_stats(self) -> dict[str, Any]:
        return self.counters.snapshot(
            entries=self.local.entries,
            tags=self.local.tags,
            redis_available=self.redis_available,
            breaker_state=self._link.guard.state.value if self._link else "none",
            queued_ops_pending=len(self._outbox),
            # While changes are queued, their cause stays named even when other
            # calls work again (issue 21, case 8: None while a change waited).
            last_error=(self._link.last_error if self._link else None)
            or (self._outbox.cause if self._outbox else None),
            instance=self.instance_id,
        )

    def cached(
        self,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        key: str | Callable[..., str] | None = None,
        *,
        copy_on_read: bool | None = None,
        stale_if_error: float | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        ttl_jitter: float = 0.0,
        early_refresh: float = 0.0,
        ignore: Iterable[str] = (),  # issue 10: arguments left out of the key
        unless: Callable[[Any], object] | None = None,  # issue 10: results not cached
    ) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
        """Cache an async function's results; see `docs/decorator.md`."""
        seconds = self.default_ttl if ttl is None else validate_ttl(ttl)
        tag_list = list(tags) if not isinstance(tags, str) else tags
        if len(tag_list) > MAX_ENTRY_TAGS and not isinstance(tag_list, str):
            raise InvalidKeyError(f"an entry carries at most {MAX_ENTRY_TAGS} tags")
        copy = self.copy_on_read if copy_on_read is None else copy_on_read
        policy = LoaderPolicy(stale_if_error, soft_timeout, hard_timeout, ttl_jitter, early_refresh)
        return make_cached(self, seconds, tag_list, key, copy, policy, ignore, unless)

    def policy_runner(self, policy: LoaderPolicy) -> PolicyRunner | None:
        """The runner of a `@cached` policy; None for the plain (fastest) path."""
        if policy.is_plain:
            return None
        return PolicyRunner(
            policy, self._serializer, self.counters, self.spawn, self.local.maxsize, self.clock
        )


def _new_instance_id() -> str:
    return uuid.uuid4().hex[:12]  # os.urandom: never the same in two forked children


#: What forked children inherited from their parent's caches (its loop, link,
#: loop thread and tasks), kept here for the life of the child and never used.
#: The cache drops its references, as redis-py does for its pools in a child,
#: but does not let them be collected either: collected while the child runs a
#: loop of its own, an unclosed connection closes its transport, which
#: unregisters the socket from the parent's loop's epoll set (parent and child
#: share it, so the parent's loop would stop hearing that socket), and a TLS
#: stream sends its close_notify down the parent's connection. (CPython 3.11
#: happens to keep them alive anyway: the dead loop thread's frames hold its
#: loop. This does not rely on that.) The server sees the connections end when
#: the parent closes them, or both processes end.
_INHERITED: list[object] = []


def _after_fork(ref: weakref.ReferenceType[TwoTierCache]) -> None:
    cache = ref()
    if cache is not None:
        cache._forked()
