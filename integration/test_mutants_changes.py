"""The change path (`_changes.py`) on a real server: changes refused, timed
out, cancelled on their way, and the reads that wait for them.

Written for the mutation run (.ci/mutation.py, module `changes`); each test
names in its docstring the mutants it kills (ids from `--list`). The memory
mode side is in tests/test_mutants_changes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import redis.asyncio as aioredis

from integration._proxy import ChaosProxy
from integration.conftest import FLAVOURS, caches_on
from tests.contract import eventually
from tests.test_events import Recorder
from tests.test_mutants_changes import run_on_a_loop_closed_by_hand
from twotier import TwoTierCache
from twotier._redis import _script_source
from twotier.testing import RedisServer

NS = "chg"


def _sha(script: str) -> bytes:
    source = _script_source(script, sharded=False)
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest().encode()


class Hold:
    """Commands to Redis that contain *marker*, held by the proxy until
    `release()` (forwarded) or `lose()` (never forwarded, as a network that
    drops them)."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.held = asyncio.Event()
        self.armed = True
        self._released = asyncio.Event()
        self.forward = True

    def release(self) -> None:
        self.armed = False
        self._released.set()

    def lose(self) -> None:
        self.forward = False
        self.release()

    async def wait(self) -> bool:
        """Hold a command; whether to forward it then."""
        self.held.set()
        await self._released.wait()
        return self.forward


class HoldingProxy(ChaosProxy):
    """Forwards everything, except the commands to Redis that a `Hold` takes."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.holds: list[Hold] = []

    def hold(self, marker: bytes) -> Hold:
        hold = Hold(marker)
        self.holds.append(hold)
        return hold

    def hold_script(self, script: str) -> Hold:
        return self.hold(_sha(script))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        to_redis = writer.get_extra_info("peername")[1] == self.target_port
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                hold = next((h for h in self.holds if h.armed and h.marker in chunk), None)
                if to_redis and hold is not None and not await hold.wait():
                    continue
                writer.write(chunk)
                await writer.drain()


@pytest.fixture
async def proxy(server: RedisServer) -> AsyncIterator[HoldingProxy]:
    held = HoldingProxy(server.port)
    await held.start()
    yield held
    for hold in held.holds:
        hold.release()
    await held.close()


def _caches(*urls: str, **options: Any) -> AbstractAsyncContextManager[list[TwoTierCache]]:
    return caches_on(*urls, namespace=NS, **options)


def _background_deliveries() -> list[asyncio.Task[object]]:
    """The tasks delivering un-awaited invalidations (`Invalidation._deliver`)."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Invalidation._deliver"
    ]


def _heard_of_a_tag(recorder: Recorder) -> bool:
    """Whether the recording instance received a tag invalidation."""
    return any(event[:2] == ("invalidation", "t") for event in recorder.events)


# -- a change refused by a full Redis ------------------------------------------------


@pytest.fixture(params=FLAVOURS)
def noeviction_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    with RedisServer.start(request.param, extra_args=("--maxmemory-policy", "noeviction")) as srv:
        yield srv


async def _make_full(url: str) -> None:
    """maxmemory below what the server holds already: every write is refused
    (OOM), while the scripts flagged allow-oom still run."""
    raw = aioredis.Redis.from_url(url)
    try:
        await raw.config_set("maxmemory", 1)
    finally:
        await raw.aclose()


async def test_a_write_refused_by_a_full_redis_is_sent_at_once_as_an_invalidation(
    noeviction_server: RedisServer,
) -> None:
    """A set that Redis refuses (maxmemory, noeviction) is counted as an L2
    error and queued as an invalidation of the key, which a full Redis still
    takes: sent at once, not at the next retry, so the other instances stop
    serving the old value right away and the queue empties (the eviction hint
    alone tells the others, but leaves the change queued). (The retry interval here is an hour: only
    the immediate flush can deliver it within the test.)
    Kills: changes-b2e345 (flushed at once only when Redis is away),
    changes-8fb5c8, changes-6abe32 (not flushed at once), changes-eea047,
    changes-11e27a (the error not counted, or counted down)."""
    url = noeviction_server.url
    async with _caches(url, url, redis_timeout=2.0, health_interval=3600) as (writer, reader):
        await writer.set("k", "old", ttl=600)
        assert await reader.get("k") == "old"
        await _make_full(url)
        errors = writer.get_stats()["l2_errors"]
        await writer.set("k", "new" * 1000, ttl=600)
        assert await writer.get("k") == "new" * 1000  # kept here
        assert writer.get_stats()["l2_errors"] == errors + 1

        async def dropped() -> bool:
            return await reader.get("k") is None

        await eventually(dropped, timeout=5)

        async def delivered() -> bool:  # Redis has it: the queue is empty
            return writer.get_stats()["queued_ops_pending"] == 0

        await eventually(delivered, timeout=5)


# -- a change that timed out once ------------------------------------------------------


async def test_a_set_that_timed_out_once_is_retried_until_the_others_have_it(
    server: RedisServer, proxy: HoldingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A one-off timeout opens no breaker, so no recovery will ever flush the
    queue: the change queued by it is retried every health interval until
    Redis has it (here as a delete of the key), and the other instances stop
    serving the old value.
    The delivery is logged, and the retry task ends with the queue.
    Kills: changes-c8b3be (not retried), changes-1615b8 (the retry, without
    its interval, fails), changes-bc4aa3 (the delivery not logged),
    changes-d69704 (the retry task never ends)."""
    async with _caches(proxy.url, server.url, redis_timeout=0.5, health_interval=0.05) as (
        writer,
        reader,
    ):
        await writer.set("k", "old", ttl=600)
        assert await reader.get("k") == "old"
        caplog.set_level(logging.INFO, logger="twotier")
        sending = proxy.hold_script("write")
        await writer.set("k", "new", ttl=600)  # returns once timed out, queued
        sending.lose()
        assert writer.get_stats()["queued_ops"] == 1
        assert writer.get_stats()["breaker_state"] == "closed"
        assert await writer.get("k") == "new"

        async def dropped() -> bool:
            return await reader.get("k") is None

        await eventually(dropped, timeout=5)

        async def retried() -> bool:
            return "delivered 1 queued change(s)" in caplog.text and _retry_tasks() == []

        await eventually(retried, timeout=5)


# -- changes cancelled on their way ---------------------------------------------------


async def test_an_invalidation_whose_caller_is_cancelled_mid_send_is_queued_and_retried(
    server: RedisServer, proxy: HoldingProxy
) -> None:
    """A caller cancelled while its invalidation is on the wire does not know
    whether Redis has it: it is queued and retried (a repeated bump is
    harmless) until the others hear of it, and the caller's task ends
    cancelled, as asked. Here the command is lost on the way.
    Kills: changes-e9f4e1, changes-e5ecf3 (not queued), changes-657ee7,
    changes-a07d6c (queued but never retried while the cache stays open),
    changes-e4db9d (the cancellation swallowed)."""
    recorder = Recorder()
    async with (
        _caches(proxy.url, redis_timeout=10.0, health_interval=0.05) as [writer],
        _caches(server.url, observers=[recorder]),
    ):
        sending = proxy.hold_script("invalidate")

        async def invalidate() -> None:
            await writer.invalidate_tag("t")

        caller = asyncio.ensure_future(invalidate())
        await sending.held.wait()
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
        sending.lose()

        async def heard() -> bool:
            return _heard_of_a_tag(recorder)

        await eventually(heard, timeout=5)


async def test_a_background_delivery_cancelled_mid_send_is_requeued_without_error(
    server: RedisServer, proxy: HoldingProxy
) -> None:
    """An un-awaited invalidation whose background delivery is cancelled on the
    wire is queued and retried; its awaiters are released once, and the loop
    reports no error from the cancellation's bookkeeping.
    Kills: changes-7ced4c (its already released awaiters released again: an
    InvalidStateError in a callback)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    recorder = Recorder()
    try:
        async with (
            _caches(proxy.url, redis_timeout=10.0, health_interval=0.05) as [writer],
            _caches(server.url, observers=[recorder]),
        ):
            sending = proxy.hold_script("invalidate")
            invalidation = writer.invalidate_tag("t")
            await sending.held.wait()
            (delivery,) = _background_deliveries()
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery
            sending.lose()
            await invalidation

            async def heard() -> bool:
                return _heard_of_a_tag(recorder)

            await eventually(heard, timeout=5)
    finally:
        loop.set_exception_handler(previous)
    assert errors == []


# -- reads while this instance's changes are on their way -----------------------------


@contextlib.asynccontextmanager
async def _on_a_pool_connection(cache: TwoTierCache, proxy: HoldingProxy) -> AsyncIterator[None]:
    """Changes made in the block go on a connection of the pool, not on the
    read pipe's: a read of "busy" holds the pipe meanwhile. Reads after the
    block use the pipe, not queued behind a change the proxy holds."""
    busy = proxy.hold(b":e:busy\r\n")
    reading = asyncio.ensure_future(cache.get("busy"))
    await busy.held.wait()
    yield
    busy.release()
    assert await reading is None


async def test_a_read_during_a_clear_on_its_way_does_not_return_the_cleared_value(
    server: RedisServer, proxy: HoldingProxy
) -> None:
    """Read-your-writes for a clear: a read made while this instance's clear is
    on its way waits for Redis to have it, then reads L2 once, and misses; it
    does not read the old entry back from L2 (again and again) before the
    clear lands.
    Kills: changes-693211 (the read does not wait for the clear: L2 hits)."""
    async with _caches(proxy.url, server.url, redis_timeout=10.0) as (writer, other):
        await other.set("k", "old", ttl=600)
        sending = proxy.hold_script("invalidate")
        async with _on_a_pool_connection(writer, proxy):
            clearing = asyncio.ensure_future(writer.clear())
            await sending.held.wait()
        hits = writer.get_stats()["l2_hits"]
        reading = asyncio.ensure_future(writer.get("k"))
        # The read cannot end while the clear is held; give a read that does
        # not wait the time to reach Redis before the clear does.
        await asyncio.wait({reading}, timeout=1.0)
        sending.release()
        await clearing
        assert await reading is None
        assert writer.get_stats()["l2_hits"] == hits  # the old entry never read


async def test_a_read_of_another_key_does_not_wait_for_a_set_on_its_way(
    server: RedisServer, proxy: HoldingProxy
) -> None:
    """A set on its way holds up the reads of its own key, not of every key:
    only a clear holds up them all.
    Kills: changes-43509f (every set and delete taken for a clear: the read
    waits for the held set, here until its 10 s timeout, and the set fails)."""
    async with _caches(proxy.url, server.url, redis_timeout=10.0) as (writer, other):
        await other.set("other", "v", ttl=600)
        sending = proxy.hold_script("write")
        async with _on_a_pool_connection(writer, proxy):
            setting = asyncio.ensure_future(writer.set("k", "new", ttl=600))
            await sending.held.wait()
        assert await writer.get("other") == "v"  # while the set is still held
        assert not setting.done()
        sending.release()
        await setting
        assert writer.get_stats()["l2_errors"] == 0
        assert await other.get("k") == "new"


# -- an invalidation as the first use of a cache ---------------------------------------


async def test_an_invalidation_as_a_caches_first_use_reaches_redis(server: RedisServer) -> None:
    """A cache never started, whose first call is an awaited invalidation,
    connects to send it: the others hear of it.
    Kills: changes-741147 (not started: sent to the in-process hub only)."""
    recorder = Recorder()
    writer = TwoTierCache(redis_url=server.url, namespace=NS)
    try:
        async with _caches(server.url, observers=[recorder]):
            await writer.invalidate_tag("t")

            async def heard() -> bool:
                return _heard_of_a_tag(recorder)

            await eventually(heard, timeout=5)
    finally:
        await writer.close()


# -- changes left on a loop that closed --------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("change", ["delete", "clear"])
def test_a_change_left_on_its_way_on_a_closed_loop_does_not_hold_up_the_next_loop(
    server: RedisServer, change: str
) -> None:
    """A hand-driven loop closed without shutting down (see `_loop_end.py`)
    while a delete or a clear was on its way, Redis pausing writes: that
    change never settles. The next loop takes the cache over and forgets it:
    a read of the key answers, instead of waiting forever for it.
    Kills: changes-c25361 (a dead loop's delete kept as unsettled),
    changes-abb4d0 (a dead loop's clear kept: every read waits)."""
    cache = TwoTierCache(redis_url=server.url, namespace=NS, redis_timeout=10.0)

    async def first() -> None:
        await cache.start()
        await cache.set("k", "v", ttl=600)
        raw = aioredis.Redis.from_url(server.url)
        try:
            await raw.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        finally:
            await raw.aclose()
        changing = asyncio.ensure_future(cache.delete("k") if change == "delete" else cache.clear())
        # The change cannot end while Redis pauses writes; this lets it set out.
        await asyncio.wait({changing}, timeout=0.5)
        assert not changing.done()

    async def second() -> Any:
        raw = aioredis.Redis.from_url(server.url)
        try:
            await raw.execute_command("CLIENT", "UNPAUSE")
        finally:
            await raw.aclose()
        return await cache.get("k")

    run_on_a_loop_closed_by_hand(first())
    try:
        assert asyncio.run(second()) is None  # the change reached Redis, or never did
    finally:
        cache.close_blocking()
        gc.collect()  # the dead loop's tasks, never finished: their warnings here, not later


# -- what Redis never received -----------------------------------------------------------


def _retry_tasks() -> list[asyncio.Task[object]]:
    """The cache's task retrying its queued changes (`Changes._retry_queued`), if running."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Changes._retry_queued"
        and not task.done()
    ]


async def test_closing_with_changes_redis_never_received_counts_and_reports_them(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache closed while Redis is down has one last try, then counts what
    Redis never received as dropped and says so in a warning; its retry task
    ends with it.
    Kills: changes-4df385 (counted and reported only when nothing is left),
    changes-fb575b, changes-ac2f93 (not counted, counted down), changes-ebdb58
    (no warning), changes-10d52b (the retry task left running after close)."""
    cache = TwoTierCache(redis_url=server.url, namespace=NS, redis_timeout=0.5, health_interval=60)
    await cache.start()
    try:
        server.stop()
        await cache.set("a", 1)
        await cache.delete("b")
        assert cache.get_stats()["queued_ops_pending"] == 2
        assert _retry_tasks()
    finally:
        await cache.close()
    assert cache.get_stats()["dropped_ops"] == 2
    assert "closing with 2 queued change(s) Redis never received" in caplog.text
    assert _retry_tasks() == []


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_loop_ending_with_changes_redis_never_received_says_they_stay_queued(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At the end of a loop (not a close), what Redis lacks stays queued for the
    next loop, and a warning says so: not counted as dropped yet.
    Kills: changes-3d8b42 (no warning)."""
    cache = TwoTierCache(redis_url=server.url, namespace=NS, redis_timeout=0.5, health_interval=60)

    async def main() -> None:
        await cache.start()
        server.stop()
        await cache.delete("k")

    try:
        asyncio.run(main())
        assert "the event loop ended with 1 change(s) Redis has not received" in caplog.text
        assert cache.get_stats()["dropped_ops"] == 0
    finally:
        cache.close_blocking()


async def _pause_writes(url: str, pause: bool) -> None:
    raw = aioredis.Redis.from_url(url)
    try:
        if pause:
            await raw.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        else:
            await raw.execute_command("CLIENT", "UNPAUSE")
    finally:
        await raw.aclose()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_change_queued_on_the_next_loop_is_retried_there(server: RedisServer) -> None:
    """A hand-driven loop closed while the cache was retrying a queued change
    (its retry task never finished) hands the cache to the next loop, which
    retries its own queued changes: a delete that timed out there reaches
    Redis once Redis takes writes again.
    Kills: changes-f7bef4 (the dead loop's retry task taken for a running one:
    nothing retried on the new loop)."""
    options: dict[str, Any] = {"redis_timeout": 0.3, "health_interval": 0.05}
    cache = TwoTierCache(redis_url=server.url, namespace=NS, **options)

    async def first() -> None:
        await cache.start()
        await _pause_writes(server.url, True)
        await cache.set("k", "lost")  # times out: queued, retried every 50 ms

    async def second() -> Any:
        await _pause_writes(server.url, False)
        await cache.set("k", "old")
        await _pause_writes(server.url, True)
        await cache.delete("k")  # times out: queued
        assert cache.get_stats()["queued_ops_pending"] == 1
        await _pause_writes(server.url, False)
        async with TwoTierCache(redis_url=server.url, namespace=NS, **options) as fresh:

            async def deleted() -> bool:
                return await fresh.get("k") is None

            await eventually(deleted, timeout=5)

    run_on_a_loop_closed_by_hand(first())
    try:
        asyncio.run(second())
    finally:
        cache.close_blocking()
        gc.collect()  # the dead loop's tasks, never finished: their warnings here, not later
