"""Guarantee 7: one load per key — per instance by single flight, across instances
by the fill lease, whose waiters are woken by pub/sub instead of polling."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from tests.contract import SlowSource, eventually
from twotier import TwoTierCache
from twotier.testing import RedisServer

from .conftest import CacheFactory


async def _contenders(raw: aioredis.Redis, cache: TwoTierCache, key: str) -> int:
    """How many claims found *key*'s fill lease taken: each marks it with a '+'.

    A waiting instance claims once before it parks, so n parked instances
    leave n marks.
    """
    lease = await raw.get(cache._remote.layout.lease(key))  # type: ignore[attr-defined]
    return (lease or b"").count(b"+")


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("entry", ["none", "invalidated"])
async def test_hundred_misses_on_four_instances_run_the_loader_once(
    server: RedisServer, make_cache: CacheFactory, entry: str
) -> None:
    """A cold key, and the ERP's usual stampede: a hot key whose tag was just
    invalidated, so Redis still holds its outdated entry. Each instance reads
    that entry and passes it over; none deletes it (the fill replaces it), so
    a waiting instance still sends three commands."""
    # no idle health check (GET of the counter) may fall into the counted commands
    caches = [await make_cache(lease_ttl=30, health_interval=60) for _ in range(4)]
    runs = 0
    done = asyncio.Event()  # the slow report query finishes when the test says so
    done.set()

    def define(cache: TwoTierCache):
        @cache.cached(ttl=60, tags=["report"])
        async def report(year: int) -> dict[str, int]:
            nonlocal runs
            runs += 1
            await done.wait()
            return {"year": year, "total": 42}

        return report

    reports = [define(cache) for cache in caches]
    # Before counting: every mirror knows the tag, every pool is open, and every
    # instance has noted the entries' horizon (a load does; an L2 hit does not,
    # so each instance loads a year of its own). Else the instance that wins the
    # lease below might note it then: one script more, whichever wins.
    for year, cache in enumerate(caches, 1995):
        await define(cache)(year)
    if entry == "invalidated":
        assert await reports[0](2026) == {"year": 2026, "total": 42}  # in Redis
        received = [c.get_stats()["invalidations_received"] for c in caches[1:]]
        await caches[0].invalidate_tag("report")

        async def everyone_heard() -> bool:
            now = [c.get_stats()["invalidations_received"] for c in caches[1:]]
            return all(n > m for n, m in zip(now, received, strict=True))

        await eventually(everyone_heard)
    runs = 0
    done.clear()
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.config_resetstat()
        before = [c._remote.reads for c in caches]  # type: ignore[attr-defined]
        stampede = asyncio.gather(*(reports[i % 4](2026) for i in range(100)))
        # The query runs until every other instance is parked on its lease.
        key = reports[0].key(2026)
        await eventually(lambda: _true(runs == 1), timeout=5)
        await eventually(lambda: _is_contended(raw, caches[0], key, 3), timeout=5)
        done.set()
        # Woken by the fill's message, long before the 30 s lease would expire.
        results = await asyncio.wait_for(stampede, timeout=5)
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    assert results == [{"year": 2026, "total": 42}] * 100
    assert runs == 1
    waits = sum(c.get_stats()["lease_waits"] for c in caches)
    assert waits == 3  # one waiting flight on each other instance
    scripts = stats["cmdstat_evalsha"]["calls"] + stats.get("cmdstat_eval", {}).get("calls", 0)
    reads = [c._remote.reads - n for c, n in zip(caches, before, strict=True)]
    # the loader's instance: GET, claim, fill; each waiting instance: GET, claim and,
    # once woken (one PUBLISH), the GET that finds the entry: three commands
    assert scripts == 2 + 3, stats
    assert sorted(reads) == [1, 2, 2, 2], reads
    assert stats["cmdstat_publish"]["calls"] == 1, stats
    print(f"\nstampede: 1 loader run, {scripts} scripts, {sum(reads)} GETs in all")


async def test_crashed_loader_frees_the_lease_for_the_others(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a, b = await make_cache(lease_ttl=30), await make_cache(lease_ttl=30)
    started, fail = asyncio.Event(), asyncio.Event()

    @a.cached(ttl=60, key="k")
    async def failing() -> str:
        started.set()
        await fail.wait()
        raise RuntimeError("database gone")

    @b.cached(ttl=60, key="k")
    async def working() -> str:
        return "from b"

    raw = aioredis.Redis.from_url(server.url)
    try:
        first = asyncio.create_task(failing())
        await started.wait()  # a holds the lease
        waiter = asyncio.create_task(working())  # waits on a's lease...
        await eventually(lambda: _is_contended(raw, a, "k", 1), timeout=5)  # ...parked
    finally:
        await raw.aclose()
    fail.set()
    assert isinstance((await asyncio.gather(first, return_exceptions=True))[0], RuntimeError)
    # ...and is woken when a's loader fails, long before the 30 s lease would expire
    assert await asyncio.wait_for(waiter, timeout=5) == "from b"
    assert b.get_stats()["lease_waits"] == 1


async def test_waiter_is_woken_by_a_delete_of_the_key(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a, b = await make_cache(lease_ttl=30), await make_cache(lease_ttl=30)
    stuck = SlowSource("old")

    @b.cached(ttl=60, key="k")
    async def fresh() -> str:
        return "new"

    raw = aioredis.Redis.from_url(server.url)
    try:
        holder = asyncio.create_task(stuck.loader(a, key="k")())
        await stuck.started.wait()  # a holds the lease
        waiter = asyncio.create_task(fresh())
        await eventually(lambda: _is_contended(raw, a, "k", 1), timeout=5)  # b is parked on it
    finally:
        await raw.aclose()
    await a.delete("k")  # revokes a's lease; b stops waiting and loads
    assert await asyncio.wait_for(waiter, timeout=5) == "new"
    stuck.release.set()
    assert await holder == "old"
    assert await b.get("k") == "new"  # the revoked loader's result was not stored


async def test_early_refresh_renews_l2_for_every_instance(
    make_cache: CacheFactory, monkeypatch
) -> None:
    import twotier._decorator as decorator

    monkeypatch.setattr(
        decorator.random, "random", lambda: 1 - 2.718281828459045**-1
    )  # gap = delta
    a, b = await make_cache(), await make_cache()
    source = {"v": 1, "loads": 0}

    def define(cache: TwoTierCache):
        @cache.cached(ttl=2.0, tags=["t"], early_refresh=1.0)
        async def value() -> int:
            source["loads"] += 1
            await asyncio.sleep(0.4)
            return source["v"]

        return value

    value_a, value_b = define(a), define(b)
    assert await value_a() == 1  # a loads (0.4 s), so its refresh gap is about 0.4 s
    assert await value_b() == 1  # from L2
    source["v"] = 2
    await asyncio.sleep(1.2)  # a's entry has about 0.8 s left: no refresh yet...
    assert await value_a() == 1
    await asyncio.sleep(0.5)  # ...about 0.3 s left: the hit refreshes in the background
    assert await value_a() == 1
    # The background refresh has landed once a's L1 holds the new value.
    await eventually(lambda: _true(a.local.get(value_a.key()) == 2), timeout=3)
    assert source["loads"] == 2
    misses = a.get_stats()["misses"]
    assert await value_a() == 2  # the refreshed entry: an L1 hit
    assert a.get_stats()["misses"] == misses
    # b serves its own copy until it expires, then L2's, already refreshed: no load
    await eventually(lambda: _equals(value_b(), 2), timeout=3)
    assert source["loads"] == 2
    assert a.get_stats()["early_refreshes"] == 1


async def _is_contended(raw: aioredis.Redis, cache: TwoTierCache, key: str, marks: int) -> bool:
    return await _contenders(raw, cache, key) >= marks


async def _equals(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]
