"""Coherence guarantees 1–4 (DESIGN.md §4) against real servers, three instances per test."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from twotier import TwoTierCache
from twotier.testing import RedisServer

from .conftest import CacheFactory, eventually


async def _three(make_cache: CacheFactory, protocol: int) -> list[TwoTierCache]:
    return [await make_cache(protocol=protocol) for _ in range(3)]


async def test_read_your_writes_without_waiting(make_cache: CacheFactory, protocol: int) -> None:
    cache = await make_cache(protocol=protocol)
    for n in range(20):
        await cache.set("k", n, tags=["t"])
        assert await cache.get("k") == n
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.set("k", "again", tags=["t"])
    await cache.invalidate_tag("t")
    assert await cache.get("k") is None


async def test_changes_reach_every_instance(make_cache: CacheFactory, protocol: int) -> None:
    """set, delete, invalidate_tag and clear on one instance evict L1 on the others.

    Runs under RESP3 (redis-py's default) and RESP2: a peer's local cache
    silently stopped invalidating under RESP3; this must never happen here.
    """
    a, b, c = await _three(make_cache, protocol)
    source = {"v": 0}

    def define(cache: TwoTierCache):
        @cache.cached(ttl=60, tags=["articles", "category:{category}"])
        async def articles(category: str) -> int:
            return source["v"]

        return articles

    fa, fb, fc = define(a), define(b), define(c)
    assert [await f("news") for f in (fa, fb, fc)] == [0, 0, 0]
    assert b.local.entries == c.local.entries == 1

    async def everyone_sees(expected: int) -> float:
        async def check() -> bool:
            return [await f("news") for f in (fb, fc)] == [expected] * 2

        return await eventually(check)

    source["v"] = 1
    await a.invalidate_tag("category:news")
    await everyone_sees(1)

    source["v"] = 2
    await a.clear()
    await everyone_sees(2)

    await b.set("plain", "v1")
    assert await c.get("plain") == "v1"  # via L2, now in c's L1
    await a.set("plain", "v2")
    await eventually(lambda: _equals(c.get("plain"), "v2"))
    await a.delete("plain")
    await eventually(lambda: _equals(c.get("plain"), None))
    assert c.get_stats()["invalidations_received"] >= 3


async def _equals(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]


async def test_slow_loader_racing_a_tag_invalidation_leaves_nothing_stale(
    make_cache: CacheFactory,
) -> None:
    """Guarantee 3: a loader that began before an invalidation stores nowhere."""
    a, b = await make_cache(), await make_cache()
    source = {"price": 10}
    started, release = asyncio.Event(), asyncio.Event()

    def define(cache: TwoTierCache, slow: bool):
        @cache.cached(ttl=60, tags=["item:{id}"])
        async def price(id: int) -> int:
            old = source["price"]
            if slow:
                started.set()
                await release.wait()
            return old

        return price

    price_a, price_b = define(a, slow=True), define(b, slow=False)
    loading = asyncio.create_task(price_a(1))
    await started.wait()
    source["price"] = 20
    await b.invalidate_tag("item:1")  # on another instance, while a's loader runs
    release.set()
    assert await loading == 10
    assert a.get_stats()["stale_sets_refused"] == 1
    assert await price_b(1) == 20  # not in L2: b loads the new value
    assert await price_a(1) == 20  # not in a's L1 either


async def test_slow_loader_racing_a_delete_leaves_nothing_stale(make_cache: CacheFactory) -> None:
    a, b = await make_cache(), await make_cache()
    source = {"v": "old"}
    started, release = asyncio.Event(), asyncio.Event()

    @a.cached(ttl=60, key="doc:{id}")
    async def doc(id: int) -> str:
        value = source["v"]
        started.set()
        await release.wait()
        return value

    loading = asyncio.create_task(doc(1))
    await started.wait()
    source["v"] = "new"
    await b.delete("doc:1")  # removes the fill lease a's loader holds
    release.set()
    assert await loading == "old"
    assert await b.get("doc:1") is None
    release.clear()
    started.clear()
    loading = asyncio.create_task(doc(1))
    await started.wait()
    release.set()
    assert await loading == "new"
    assert await b.get("doc:1") == "new"


async def test_tag_invalidation_is_constant_cost(server: RedisServer) -> None:
    """Guarantee 4: the commands an invalidation sends do not grow with tagged entries."""
    # no idle health check (GET seq, PING) may fall inside the measured window
    quiet = TwoTierCache(redis_url=server.url, namespace="o1", redis_timeout=2, health_interval=60)
    async with quiet as cache:
        raw = aioredis.Redis.from_url(server.url)
        try:
            await cache.invalidate_tag("warm-up")  # loads the script once (SCRIPT LOAD)
            costs = {}
            for n in (10, 100_000):
                tag = f"bulk{n}"
                await _fill_tagged(raw, cache, tag, n)
                assert await cache.get(f"{tag}:7") == 1
                cache.local.clear()
                await raw.config_resetstat()
                await cache.invalidate_tag(tag)
                stats = await raw.info("commandstats")
                assert await cache.get(f"{tag}:7") is None  # every tagged entry is now invalid
                costs[n] = {name: row["calls"] for name, row in stats.items()}
            assert costs[10] == costs[100_000], costs
            assert sum(costs[10].values()) <= 12  # EVALSHA + the script's own calls
        finally:
            await raw.aclose()


async def _fill_tagged(raw: aioredis.Redis, cache: TwoTierCache, tag: str, n: int) -> None:
    """Write n entries exactly as set() stores them, pipelined (set() one by one is slow)."""
    await cache.set("probe", 1, tags=[tag])
    template = await raw.hgetall("o1:v1:e:probe")
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.hset(f"o1:v1:e:{tag}:{i}", mapping=template)
            if i % 5000 == 4999:
                await pipe.execute()
        await pipe.execute()
