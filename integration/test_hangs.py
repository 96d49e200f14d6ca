"""Issue 7, "Hangs": nothing Redis left behind may stall a caller for long.

A fill lease is a short Redis key that says "someone is loading this key, wait
for it". If its holder never learns it holds it (the read timed out on the
client after Redis had run it, or the caller was cancelled), every reader of
the key on every instance used to wait out its whole `lease_ttl` (10 s). Each
test below builds such a lease the way production does, and measures how long
another instance then waits for the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import LoaderTimeoutError, TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

from ._proxy import ChaosProxy
from .conftest import b_waiting_on_a_held_load

LEASE_TTL = 10.0  # the default: what a stalled key used to cost
BOUND = 2.0  # "a few redis_timeouts", with room for a loaded CI machine


def _cached(  # the same API function on each instance: one key
    cache: TwoTierCache, loads: list[str], started: asyncio.Event | None = None
):
    @cache.cached(ttl=60, tags=["row:{id}"])
    async def row(id: int) -> str:
        loads.append(cache.instance_id)
        if started is not None:
            started.set()
            await asyncio.sleep(30)
        return f"row {id}"

    return row


async def _took(awaitable) -> float:
    start = time.perf_counter()
    await awaitable
    return time.perf_counter() - start


async def _leases(server: RedisServer) -> list[bytes]:
    raw = aioredis.Redis.from_url(server.url)
    try:
        return [key async for key in raw.scan_iter(match="*:l:*")]
    finally:
        await raw.aclose()


async def _wait_for_leases(server: RedisServer) -> list[bytes]:
    """The leases left once a stalled server has run what it was sent."""
    await asyncio.sleep(0.3)
    return await _leases(server)


@pytest.fixture
async def pair(server: RedisServer) -> AsyncIterator[tuple[TwoTierCache, TwoTierCache]]:
    """Two instances of one namespace on the server, with the default settings."""
    async with (
        TwoTierCache(redis_url=server.url, namespace="h") as a,
        TwoTierCache(redis_url=server.url, namespace="h") as b,
    ):
        yield a, b


@pytest.fixture
async def proxy(server: RedisServer) -> AsyncIterator[ChaosProxy]:
    chaos = ChaosProxy(server.port)
    await chaos.start()
    yield chaos
    await chaos.close()


async def test_a_read_that_timed_out_after_redis_ran_it_leaves_no_lease(
    server: RedisServer, proxy: ChaosProxy
) -> None:
    """A late reply (a fork stall, VM steal): the read times out on the client,
    yet Redis runs it and grants a lease that the client never saw."""
    loads: list[str] = []
    async with (
        TwoTierCache(redis_url=proxy.url, namespace="h", redis_timeout=0.05) as a,
        TwoTierCache(redis_url=server.url, namespace="h", redis_timeout=0.5) as b,
    ):
        row_a, row_b = _cached(a, loads), _cached(b, loads)
        await row_a(0)  # a warm link: scripts loaded, connection open
        proxy.latency = 0.15  # the read reaches Redis after a has given up on it
        assert await row_a(1) == "row 1"  # served by its loader
        assert a.get_stats()["l2_errors"] >= 1  # the read really timed out
        await asyncio.sleep(0.2)
        proxy.latency = 0
        took = await _took(row_b(1))
        print(f"\n  late reply: another instance waited {took * 1000:.0f} ms for the key")
        assert took < BOUND, f"b waited {took:.1f} s on an orphaned lease"
        assert await _wait_for_leases(server) == []


async def test_a_fill_whose_reply_was_lost_still_wakes_the_waiters(
    server: RedisServer, proxy: ChaosProxy
) -> None:
    """The loader's fill reaches Redis after its caller gave up on the reply:
    Redis stores the entry and ends the lease, and nobody said so (found by
    the chaos test: one read waited the whole 10 s lease). The release that
    follows finds the lease gone; it wakes the waiters anyway."""
    raw = aioredis.Redis.from_url(server.url)
    async with (
        TwoTierCache(redis_url=proxy.url, namespace="h", redis_timeout=0.05) as a,
        TwoTierCache(redis_url=server.url, namespace="h", redis_timeout=0.5) as b,
    ):
        holding, waiting, finish = await b_waiting_on_a_held_load(a, b)
        proxy.latency = 0.15  # the fill arrives after a has given up on it
        finish.set()
        assert await holding == "a's value"  # from its loader, kept in a's L1 only

        async def filled() -> bool:  # Redis ran the fill: entry stored, lease ended
            return await raw.get(Layout("h").entry("k")) is not None

        await eventually(filled)
        proxy.latency = 0  # a's release gets through now
        took = await _took(waiting)
        print(f"\n  lost fill reply: the waiter was woken after {took * 1000:.0f} ms")
        assert took < BOUND, f"b waited {took:.1f} s: nobody told it the lease ended"
        assert waiting.result() == "a's value"  # read from Redis, not loaded again
    await raw.aclose()


async def test_a_lost_wake_up_delays_the_waiters_by_one_health_interval(
    server: RedisServer, proxy: ChaosProxy
) -> None:
    """The loader's fill lands, and the `f` message that should wake the
    waiters does not: the server pauses writes between the two (a Redis
    Cluster master in a manual failover does, for seconds; found by the
    cluster chaos test in CI: one read waited 1.95 s, the whole pause). The
    waiters read the key again every `health_interval` until the lease ends,
    so the filled entry is found at the next one, not when the pause ends."""
    raw = aioredis.Redis.from_url(server.url)
    pause = 3.0
    async with (
        TwoTierCache(redis_url=proxy.url, namespace="w", redis_timeout=0.5) as a,
        TwoTierCache(redis_url=server.url, namespace="w", health_interval=0.2) as b,
    ):
        holding, waiting, finish = await b_waiting_on_a_held_load(a, b)
        proxy.latency = 0.1  # the fill's reply, then a's `f`, each 0.1 s on the way
        finish.set()
        entry = Layout("w").entry("k")
        while await raw.get(entry) is None:  # the fill ran: entry stored, lease ended
            await asyncio.sleep(0.001)
        await raw.execute_command("CLIENT", "PAUSE", int(pause * 1000), "WRITE")
        try:
            took = await _took(waiting)
        finally:
            await raw.execute_command("CLIENT", "UNPAUSE")
        print(f"\n  lost wake-up: the waiter found the entry after {took * 1000:.0f} ms")
        assert took < pause / 2, f"b waited {took:.1f} s: until the `f` got through"
        assert waiting.result() == "a's value"  # read from Redis, not loaded again
        with contextlib.suppress(Exception):
            await holding
    await raw.aclose()


async def test_a_tag_that_cannot_render_leaves_no_lease(server: RedisServer) -> None:
    """Tags are rendered after an L2 miss; a template that fails for the
    arguments given raises to the caller before any lease is taken (found by
    review: rendered after the claim, it left the lease to expire, and every
    later call of the key waited it out)."""
    async with TwoTierCache(redis_url=server.url, namespace="h", lease_ttl=LEASE_TTL) as cache:

        @cache.cached(ttl=60, tags=["user:{user.id}"])
        async def profile(user: object) -> int:
            return 1

        for _ in range(2):
            took = await _took(_raises(profile(None)))
            assert took < BOUND, f"the call waited {took:.1f} s on a leaked lease"
        assert await _leases(server) == []


async def _raises(call: Any) -> None:
    with pytest.raises(Exception, match="id"):
        await call


async def test_a_cancelled_read_leaves_no_lease(server: RedisServer, proxy: ChaosProxy) -> None:
    """A request deadline (`asyncio.wait_for`) cancels a decorated call mid-read."""
    loads: list[str] = []
    async with (
        TwoTierCache(redis_url=proxy.url, namespace="h", redis_timeout=0.5) as a,
        TwoTierCache(redis_url=server.url, namespace="h", redis_timeout=0.5) as b,
    ):
        row_a, row_b = _cached(a, loads), _cached(b, loads)
        await row_a(0)  # a warm link: scripts loaded, connection open
        proxy.latency = 0.15
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(row_a(2), timeout=0.05)
        await asyncio.sleep(0.2)  # the read has reached Redis and taken the lease
        proxy.latency = 0
        took = await _took(row_b(2))
        print(f"\n  cancelled read: another instance waited {took * 1000:.0f} ms for the key")
        assert took < BOUND, f"b waited {took:.1f} s on a cancelled caller's lease"
        assert await _wait_for_leases(server) == []


async def test_a_cancelled_loader_leaves_no_lease(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    loads: list[str] = []
    started = asyncio.Event()
    a, b = pair
    slow, row_b = _cached(a, loads, started), _cached(b, loads)
    task = asyncio.create_task(slow(3))
    await started.wait()  # the lease is taken, the loader runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    took = await _took(row_b(3))
    assert took < BOUND


async def test_cancelled_warmup_leaves_no_lease(
    server: RedisServer, pair: tuple[TwoTierCache, TwoTierCache]
) -> None:
    started = asyncio.Event()

    async def slow_loader(key: str) -> str:
        started.set()
        await asyncio.sleep(30)
        return key

    a, b = pair
    keys = [f"w:{i}" for i in range(50)]
    task = asyncio.create_task(a.warmup(keys, slow_loader))
    await started.wait()  # the batch holds a lease on every key
    assert len(await _leases(server)) == 50
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_for_leases(server) == []
    loads: list[str] = []

    async def load_w7() -> str:
        loads.append("b")
        return "w:7"

    took = await _took(b.load("w:7", tuple, 60, load_w7, True))
    assert took < BOUND
    assert loads == ["b"]


async def test_hard_timeout_bounds_a_wait_on_another_instances_lease(
    server: RedisServer,
) -> None:
    """A holder that crashed leaves its lease for `lease_ttl`: a caller with a
    hard timeout gives up after that timeout, not after the lease."""
    async with TwoTierCache(redis_url=server.url, namespace="h") as cache:

        @cache.cached(ttl=60, hard_timeout=0.5)
        async def report(id: int) -> str:
            return "fresh"

        raw = aioredis.Redis.from_url(server.url)
        try:  # a lease of this generation whose holder died, contended (a waiter marked it)
            layout = Layout("h")
            generation = (await raw.hget(layout.tags, "")).decode()
            lease = f"deadbeef@{generation}+"
            await raw.set(layout.lease(report.key(4)), lease, px=int(LEASE_TTL * 1000))
        finally:
            await raw.aclose()
        start = time.perf_counter()
        with pytest.raises(LoaderTimeoutError):
            await report(4)
        assert time.perf_counter() - start < BOUND


# -- item 2: the default timeouts -------------------------------------------------


async def test_a_cold_burst_does_not_open_the_breaker(server: RedisServer) -> None:
    """200 first calls at once, right after start(), on the default settings.

    The mirror knows no generation yet, so each read judges its entry against
    Redis: those loads are coalesced. A CI run whose loop was slow for a
    moment had every read send its own `versions.lua`, and they timed out."""
    async with TwoTierCache(redis_url=server.url, namespace="burst") as writer:
        for i in range(200):
            await writer.set(f"k{i}", i)
    cache = TwoTierCache(redis_url=server.url, namespace="burst")
    async with cache:
        values = await asyncio.gather(*(cache.get(f"k{i}") for i in range(200)))
        stats = cache.get_stats()
        version_loads = cache._shared.mirror.loads
    assert values == list(range(200)), stats  # every one an L2 hit, none a fallback
    assert version_loads <= 2  # one for the first read, one for all that came meanwhile
    assert stats["breaker_state"] == "closed"
    assert stats["l2_errors"] == 0
    assert stats["l2_hits"] == 200


async def test_a_20ms_round_trip_keeps_redis_in_use(server: RedisServer, proxy: ChaosProxy) -> None:
    """Connect, load scripts and read must not have to fit one reply budget."""
    far_server = proxy
    proxy.latency = 0.010  # 10 ms each way
    async with TwoTierCache(redis_url=server.url, namespace="far") as near:
        for i in range(20):
            await near.set(f"k{i}", i)
    async with TwoTierCache(redis_url=far_server.url, namespace="far") as far:
        values = await asyncio.gather(*(far.get(f"k{i}") for i in range(20)))
        await far.set("from-far", 1)
        stats = far.get_stats()
    assert values == list(range(20))
    assert stats["breaker_state"] == "closed"
    assert stats["l2_errors"] == 0
    assert stats["l2_hits"] == 20


async def test_a_saturated_pool_queues_callers_fairly(server: RedisServer) -> None:
    """More callers than connections, for longer than the connect budget: each
    waits its turn. redis-py's pool alone let a releasing task take its
    connection straight back, starving others until the pool's timeout, which
    then counted as Redis being unreachable."""
    async with TwoTierCache(redis_url=server.url, namespace="sat") as writer:
        for i in range(8):
            await writer.set(f"k{i}", i)
    # a generous reply budget: this is about waiting for a connection, not for Redis
    options = {"max_connections": 2, "connect_timeout": 0.2, "redis_timeout": 1.0}
    async with TwoTierCache(redis_url=server.url, namespace="sat", l1_maxsize=1, **options) as c:
        stop = asyncio.get_running_loop().time() + 1.5

        async def reader(n: int) -> int:
            reads = 0
            while asyncio.get_running_loop().time() < stop:
                assert await c.get(f"k{n % 8}") == n % 8
                reads += 1
            return reads

        reads = await asyncio.gather(*(reader(n) for n in range(50)))
        stats = c.get_stats()
    assert min(reads) > 0  # nobody starved
    assert stats["l2_errors"] == 0, stats["last_error"]
    assert stats["breaker_state"] == "closed"


async def test_a_lease_from_before_a_clear_is_taken_over(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    """A load that began before `clear()` can no longer store its result (its
    snapshot has the old generation): nobody waits for it. The same holds for a
    lease that a snapshot restore brings back with no holder at all
    (test_chaos.py::test_chaos_restart_from_snapshot_taken_during_a_load_no_call_over_1s)."""
    loads: list[str] = []
    started = asyncio.Event()
    a, b = pair
    slow, row_b = _cached(a, loads, started), _cached(b, loads)
    task = asyncio.create_task(slow(5))
    await started.wait()  # a holds the lease of row 5
    await b.clear()
    took = await _took(row_b(5))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert took < BOUND, f"b waited {took:.1f} s for a load the clear had outdated"
    assert loads == [a.instance_id, b.instance_id]
