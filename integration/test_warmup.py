"""warmup against a real server: batched, fills both tiers, honours invalidations."""

from __future__ import annotations

import redis.asyncio as aioredis

from .conftest import CacheFactory


async def test_warmup_fills_both_tiers_once(make_cache: CacheFactory) -> None:
    a, b = await make_cache(), await make_cache()
    keys = [f"article:{i}" for i in range(1, 2001)]

    def generate_value(key: str) -> dict[str, int] | None:  # the seed's sync loader
        n = int(key.split(":")[1])
        return None if n % 100 == 0 else {"id": n}

    assert await a.warmup(keys, generate_value, tags=["articles"]) == 1980
    assert await a.warmup(keys, generate_value) == 0  # already cached: nothing reloaded
    calls = []
    assert await b.warmup(keys[:50], lambda key: calls.append(key)) == 0  # already in Redis
    assert calls == []  # so b's loader never ran
    assert await b.get("article:7") == {"id": 7}  # in Redis for the other instances
    assert await b.get("article:100") is None
    await b.invalidate_tag("articles")
    assert await b.get("article:7") is None


async def test_warmup_does_not_store_what_was_invalidated_meanwhile(
    make_cache: CacheFactory,
) -> None:
    a, b = await make_cache(), await make_cache()
    source = {f"k{i}": "old" for i in range(10)}

    async def loader(key: str) -> str:
        value = source[key]
        if key == "k5":  # the update lands while this batch is loading
            for k in source:
                source[k] = "new"
            await b.invalidate_tag("t")
        return value

    filled = await a.warmup(list(source), loader, tags=["t"])
    assert filled == 0  # the whole batch loaded under the old version
    assert a.get_stats()["stale_sets_refused"] == 10
    for key in source:
        assert await a.get(key) is None
        assert await b.get(key) is None


async def test_warmup_survives_a_failing_loader(make_cache: CacheFactory) -> None:
    cache = await make_cache()

    async def loader(key: str) -> str:
        if key == "bad":
            raise RuntimeError("row locked")
        return key

    assert await cache.warmup(["a", "bad", "c"], loader) == 2
    assert cache.get_stats()["load_errors"] == 1
    assert await cache.get("bad") is None


async def test_warmup_sends_one_claim_and_one_fill_per_key(make_cache: CacheFactory) -> None:
    """Issue 8: the claim is the read (a claim that finds an entry returns it),
    so a fresh key costs two script calls and no GET; a batch is sent whole."""
    cache = await make_cache(health_interval=60)  # no idle health check in the window
    raw = aioredis.Redis.from_url(cache.redis_url or "")
    try:
        await cache.warmup(["warm"], lambda key: 1)  # first use: versions, horizon
        await raw.config_resetstat()
        keys = [f"k{i}" for i in range(2500)]
        assert await cache.warmup(keys, lambda key: key) == 2500
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    assert stats["cmdstat_evalsha"]["calls"] == 2 * 2500
    # Inside the scripts: claim reads the entry and the lease, fill the lease.
    # No GET of its own (there was one per key before).
    assert stats["cmdstat_get"]["calls"] == 3 * 2500


async def test_warmup_reloads_scripts_a_flushed_server_forgot(make_cache: CacheFactory) -> None:
    """`SCRIPT FLUSH` on the live server: the batch reloads the script and goes
    on, instead of filling L1 alone."""
    a, b = await make_cache(), await make_cache()
    raw = aioredis.Redis.from_url(a.redis_url or "")
    try:
        await raw.script_flush()
        assert await a.warmup([f"k{i}" for i in range(20)], lambda key: key.upper()) == 20
    finally:
        await raw.aclose()
    assert a.get_stats()["l2_errors"] == 0
    assert await b.get("k7") == "K7"  # in Redis, for the other instances
