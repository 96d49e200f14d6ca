"""Issue 3's fault table, each row on a real server: kill, hang, restart, pub/sub cut,
lost messages, and a slow / blackholed / reset network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier._exceptions import BackendUnavailable
from twotier._redis import Layout, _Script
from twotier.testing import RedisServer

from ._proxy import ChaosProxy

TIMEOUT = 0.1  # the Redis timeout under test
FAST = {"redis_timeout": TIMEOUT, "health_interval": 0.2, "max_stale": 1.0}


class Source:
    """The database: a version per row; loaders count their calls."""

    def __init__(self) -> None:
        self.versions: dict[int, int] = {}
        self.loads = 0

    def loader_for(self, cache: TwoTierCache):
        @cache.cached(ttl=60, tags=["row:{id}"])
        async def row(id: int) -> int:
            self.loads += 1
            return self.versions.get(id, 0)

        return row


async def _timed(coro) -> tuple[object, float]:
    start = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - start


@pytest.fixture
async def caches(server: RedisServer) -> AsyncIterator[list[TwoTierCache]]:
    made = [TwoTierCache(redis_url=server.url, namespace="f", **FAST) for _ in range(2)]
    for cache in made:
        await cache.start()
    yield made
    for cache in made:
        await cache.close()


async def test_killed_redis_keeps_serving_and_queues_changes(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    a, _b = caches
    source = Source()
    row_a = source.loader_for(a)
    for i in range(10):
        await row_a(i)

    server.kill()
    deadline = time.monotonic() + 1.5
    slowest = 0.0
    i = 0
    while time.monotonic() < deadline:  # load: reads, writes and invalidations, none may raise
        value, took = await _timed(row_a(i % 20))
        slowest = max(slowest, took)
        assert value == source.versions.get(i % 20, 0)
        if i % 10 == 0:
            source.versions[i % 20] = i
            a.invalidate_tag(f"row:{i % 20}")
            await a.set(f"k{i}", i)
        i += 1
        await asyncio.sleep(0.001)
    stats = a.get_stats()
    assert stats["redis_available"] is False
    assert stats["breaker_state"] == "open"
    assert stats["queued_ops"] > 0
    assert stats["queued_ops_pending"] > 0
    assert slowest < TIMEOUT + 0.4, f"a call took {slowest:.3f}s with Redis dead"

    server.launch()  # back, empty, same port
    await eventually(lambda: _true(a.get_stats()["redis_available"]), timeout=10)
    await eventually(lambda: _true(a.get_stats()["queued_ops_pending"] == 0), timeout=5)
    raw = aioredis.Redis.from_url(server.url)
    try:
        assert int(await raw.get(Layout("f").seq) or 0) >= 1  # the queue reached Redis
    finally:
        await raw.aclose()
    for i in range(20):
        assert await row_a(i) == source.versions.get(i, 0)


async def _true(value: bool) -> bool:
    return value


async def test_hung_redis_costs_at_most_the_timeout(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    a, _ = caches
    source = Source()
    row = source.loader_for(a)
    server.pause()
    try:
        durations = []
        for i in range(8):  # L1 misses: each would hit Redis
            _, took = await _timed(row(100 + i))
            durations.append(took)
        _, took = await _timed(a.set("x", 1))
        durations.append(took)
        assert max(durations) < TIMEOUT + 0.25, durations
        assert a.get_stats()["breaker_state"] == "open"
        # once open, nothing waits for Redis at all
        _, took = await _timed(row(999))
        assert took < TIMEOUT / 2
    finally:
        server.resume()
    await eventually(lambda: _true(a.get_stats()["redis_available"]), timeout=10)
    assert a.get_stats()["breaker_state"] == "closed"


async def test_restart_empty_resyncs_every_instance(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    a, b = caches
    source = Source()
    row_a, row_b = source.loader_for(a), source.loader_for(b)
    assert (await row_a(1), await row_b(1)) == (0, 0)
    server.kill()
    # b must have seen the loss before the server is back, or it never lost anything
    await eventually(lambda: _true(not b.get_stats()["redis_available"]), timeout=10)
    source.versions[1] = 1
    await a.invalidate_tag("row:1")  # applied locally on a, queued for Redis
    assert await row_a(1) == 1
    server.launch()
    for cache in (a, b):
        await eventually(lambda c=cache: _true(c.get_stats()["redis_available"]), timeout=10)
    assert await row_b(1) == 1  # b never got the message; the restart wiped its L1
    assert b.get_stats()["resyncs"] >= 1
    assert b.get_stats()["l1_clears"] >= 1


async def test_cut_pubsub_link_is_noticed_and_repaired(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    a, b = caches
    source = Source()
    row_a, row_b = source.loader_for(a), source.loader_for(b)
    assert (await row_a(1), await row_b(1)) == (0, 0)
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.client_kill_filter(_type="pubsub")
        source.versions[1] = 1
        await a.invalidate_tag("row:1")  # published while b's link is down: lost for b
    finally:
        await raw.aclose()
    # L1 is suspended from the moment b notices the drop (a socket EOF, within
    # milliseconds), so b answers from L2 until the resync has repaired L1
    await eventually(lambda: _equals(row_b(1), 1), timeout=1)
    # and it repairs L1 by replaying the change it missed once it is back
    await eventually(lambda: _true(b.get_stats()["resyncs"] >= 1), timeout=5)
    assert b.get_stats()["l1_clears"] == 0
    assert await row_b(1) == 1


async def _equals(coro, expected: object) -> bool:
    return await coro == expected


async def _lose_one_change(cache: TwoTierCache, tag: str) -> None:
    """Make a real change whose pub/sub message nobody receives: the script runs with
    a channel nobody listens to, so Redis numbers and logs it, but never delivers it."""
    layout = cache._remote.layout  # type: ignore[attr-defined]
    layout.channel, saved = "nowhere", layout.channel
    try:
        await cache.invalidate_tag(tag)
    finally:
        layout.channel = saved


async def _b_misses_a_change(caches: list[TwoTierCache]) -> Callable[[int], Awaitable[int]]:
    """b caches row 1; the row changes and a invalidates it, but b never hears of it."""
    a, b = caches
    source = Source()
    row_b = source.loader_for(b)
    assert await row_b(1) == 0
    source.versions[1] = 1
    await _lose_one_change(a, "row:1")
    return row_b


async def test_lost_message_is_found_by_the_next_sequence_number(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    a, b = caches
    row_b = await _b_misses_a_change(caches)
    assert await row_b(1) == 0  # b cannot know yet: the message was lost
    await a.invalidate_tag("row:2")  # the next message reveals the gap
    await eventually(lambda: _equals(row_b(1), 1))
    # b may already answer from L2 while its resync is under way (L1 suspended)
    await eventually(lambda: _true(b.get_stats()["resyncs"] >= 1), timeout=5)
    assert b.get_stats()["l1_clears"] == 0  # repaired from the log, not by a wipe


async def test_lost_last_message_is_found_while_idle(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    row_b = await _b_misses_a_change(caches)  # and no later message will come
    took = await eventually(lambda: _equals(row_b(1), 1), timeout=3)
    assert took < 3  # within about one health interval


async def test_an_idle_link_checks_the_counter_every_health_interval(
    server: RedisServer, protocol: int
) -> None:
    """On a quiet channel the listener checks the link and the change counter
    once per health interval: that bounds how long a lost last message goes
    unnoticed. Counted on the server. The answer to its own check is not
    traffic (found by review: a pong counted as traffic, so the check ran
    every other interval only). Over RESP3 the check is one command, a GET
    on the subscription itself (issue 20: one idle command per interval);
    over RESP2, whose subscribed connections take no GET, a PING there and
    a GET on the command connection."""
    interval = 0.2
    url = f"{server.url}?protocol={protocol}"
    probe = aioredis.Redis(port=server.port)
    options = {"health_interval": interval, "heartbeat_interval": 3600}
    try:
        async with TwoTierCache(redis_url=url, namespace="f", **options):
            await asyncio.sleep(2 * interval)  # started, and past its first checks
            before = await _calls(probe)
            await asyncio.sleep(12 * interval)
            after = await _calls(probe)
    finally:
        await probe.aclose()
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    calls.pop("info", None)  # the probe's own
    assert calls.get("get", 0) >= 8, calls  # about 12: one per interval, not one per two
    if protocol == 3:
        assert sum(calls.values()) <= 13, calls  # nothing but the GETs
        assert calls.get("ping", 0) == 0, calls
    else:
        assert calls.get("ping", 0) >= 8, calls


async def _calls(probe: aioredis.Redis) -> dict[str, int]:
    """Calls per command so far, from INFO commandstats."""
    stats = await probe.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_log_that_no_longer_reaches_back_clears_l1(server: RedisServer) -> None:
    cache = TwoTierCache(redis_url=server.url, namespace="f", log_maxlen=1, **FAST)
    other = TwoTierCache(redis_url=server.url, namespace="f", log_maxlen=1, **FAST)
    async with cache, other:
        source = Source()
        row = source.loader_for(cache)
        assert await row(1) == 0
        source.versions[1] = 1
        for n in range(300):  # many lost changes; the stream is trimmed far past them
            await _lose_one_change(other, f"row:{n % 7 + 2}")
        await _lose_one_change(other, "row:1")
        await eventually(lambda: _equals(row(1), 1), timeout=3)
        # it may answer from L2 while its resync is under way (L1 suspended)
        await eventually(lambda: _true(cache.get_stats()["l1_clears"] >= 1), timeout=3)


@pytest.fixture
async def proxy(server: RedisServer) -> AsyncIterator[ChaosProxy]:
    chaos = ChaosProxy(server.port)
    await chaos.start()
    yield chaos
    await chaos.close()


async def test_slow_network_costs_at_most_the_timeout(proxy: ChaosProxy) -> None:
    async with TwoTierCache(redis_url=proxy.url, namespace="p", **FAST) as cache:
        source = Source()
        row = source.loader_for(cache)
        assert await row(1) == 0
        proxy.latency = 0.5  # far above the timeout
        for i in range(5):
            _, took = await _timed(row(10 + i))
            assert took < TIMEOUT + 0.25
        assert cache.get_stats()["breaker_state"] == "open"
        proxy.latency = 0
        await eventually(lambda: _true(cache.get_stats()["redis_available"]), timeout=10)


async def test_blackholed_network_is_noticed_by_the_health_ping(proxy: ChaosProxy) -> None:
    async with TwoTierCache(redis_url=proxy.url, namespace="p", **FAST) as cache:
        assert cache.get_stats()["redis_available"]
        proxy.blackhole = True  # no traffic at all: only the listener's ping can tell
        await eventually(lambda: _true(not cache.get_stats()["redis_available"]), timeout=3)
        proxy.blackhole = False
        proxy.reset()
        await eventually(lambda: _true(cache.get_stats()["redis_available"]), timeout=10)


async def test_reset_connections_resync(proxy: ChaosProxy, server: RedisServer) -> None:
    async with (
        TwoTierCache(redis_url=proxy.url, namespace="p", **FAST) as cache,
        TwoTierCache(redis_url=server.url, namespace="p", **FAST) as direct,
    ):
        source = Source()
        row = source.loader_for(cache)
        assert await row(1) == 0
        proxy.reset()
        source.versions[1] = 1
        await direct.invalidate_tag("row:1")
        await eventually(lambda: _equals(row(1), 1), timeout=5)


async def test_flushall_under_a_live_link_is_noticed(
    server: RedisServer, caches: list[TwoTierCache]
) -> None:
    """The counter starts again from 1 while every link stays up: the next message
    carries a number at or below the last one seen, and that forces a resync."""
    a, b = caches
    source = Source()
    row_b = source.loader_for(b)
    for n in range(5):  # move the counter well past 1
        await a.invalidate_tag(f"warm:{n}")
    assert await row_b(1) == 0
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.flushall()
    finally:
        await raw.aclose()
    source.versions[1] = 1
    await a.invalidate_tag("row:1")  # number 1 again
    await eventually(lambda: _equals(row_b(1), 1), timeout=3)
    # b may answer from L2 while its resync is under way (L1 suspended)
    await eventually(lambda: _true(b.get_stats()["l1_clears"] >= 1), timeout=3)


async def test_an_error_reply_typed_as_a_connection_error_is_raised_not_returned(
    server: RedisServer,
) -> None:
    """redis-py types some error replies as connection errors (LOADING while a
    restarted server loads its data, NOAUTH, "max number of clients"). The lean
    script path must raise them through the guard (an outage), not hand them
    to the caller as a reply (found by review: a change then failed with a
    TypeError outside the guard and was not queued)."""
    async with TwoTierCache(redis_url=server.url, namespace="f", **FAST) as cache:
        assert cache._link is not None
        tier = cache._link.tier
        loading = _Script("return redis.error_reply('LOADING Redis is loading the dataset')")
        tier._scripts["loading"] = loading
        await tier._execute("SCRIPT LOAD", loading.source)  # the lean path gets the reply
        with pytest.raises(BackendUnavailable, match="loading"):
            await tier._run("loading", [tier.layout.entry("k")], [])


async def test_a_wait_that_never_answers_keeps_the_change_queued(server: RedisServer) -> None:
    """`confirm_replicas`: the server stalls (SIGSTOP) while `WAIT` blocks, so
    no reply comes within the read's own timeout. redis-py then returns None
    rather than raising; the change must count as timed out and stay queued,
    not fail in the caller (found by review: `int(None)` raised a TypeError
    outside the guard)."""
    async with TwoTierCache(
        redis_url=server.url, namespace="f", redis_timeout=0.3, confirm_replicas=1
    ) as cache:
        sending = asyncio.ensure_future(_invalidate(cache, "row:1"))
        await asyncio.sleep(0.1)  # the script has run; WAIT blocks (no replica)
        server.pause()
        try:
            await asyncio.wait_for(sending, timeout=5)  # raises nothing
        finally:
            server.resume()
        stats = cache.get_stats()
        assert stats["queued_ops"] >= 1, stats
        assert "did not answer" in (stats["last_error"] or ""), stats


async def _invalidate(cache: TwoTierCache, tag: str) -> None:
    await cache.invalidate_tag(tag)


def test_a_server_fixture_never_takes_a_stranger_on_its_port_for_itself() -> None:
    """`RedisServer` picks a free port, and another server may take it before
    ours binds it: ours then fails, while the stranger answers the start-up
    ping. The fixture must notice and move (a CI run once built a Sentinel set
    on such a stranger and waited 30 s for a replica that never synced)."""
    with RedisServer.start() as stranger:
        ours = RedisServer()
        ours.port = stranger.port  # as if chosen free and taken meanwhile
        try:
            ours.launch()
            assert ours.port != stranger.port
            assert ours.process is not None
            info = _server_info(ours.port)
            assert int(info["process_id"]) == ours.process.pid
        finally:
            ours.stop()


def _server_info(port: int) -> dict[str, object]:
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as client:
        return client.info("server")  # type: ignore[no-any-return]
