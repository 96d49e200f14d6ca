"""warmup against a real server: batched, fills both tiers, honours invalidations."""

from __future__ import annotations

import asyncio

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


async def test_a_fresh_key_costs_a_get_a_set_nx_and_one_fill_script(
    make_cache: CacheFactory,
) -> None:
    """Issue 8: before the loader runs, warmup sends plain commands only (one
    GET, one SET NX per key), and one script call per key stores the results:
    the claim script it replaced was half of a fresh key's server time."""
    # No idle health check in the window, and no heartbeat tick either: a tick
    # closes the pool's idle connections (issue 20), and a connection opened
    # in the window meets the server with one more EVALSHA (server.lua).
    cache = await make_cache(health_interval=60, heartbeat_interval=60)
    raw = aioredis.Redis.from_url(cache.redis_url or "")
    try:
        # First use: versions, horizon, and the pool connections a batch this
        # size opens beside the read pipe (pool connections open under load).
        await cache.warmup([f"warm{i}" for i in range(2500)], lambda key: 1)
        await raw.config_resetstat()
        keys = [f"k{i}" for i in range(2500)]
        assert await cache.warmup(keys, lambda key: key) == 2500
        stats = await raw.info("commandstats")
        opened = int((await raw.info("stats"))["total_connections_received"])
    finally:
        await raw.aclose()
    # fill.lua, and nothing else but the meeting (server.lua, which reads the
    # epoch) of a pool connection the batch opened beside the first one's
    assert stats["cmdstat_evalsha"]["calls"] == 2500 + opened
    # Plain: a GET and a SET NX per key; inside fill.lua: a GET of the lease,
    # the SET of the entry (and a DEL of the lease).
    assert stats["cmdstat_get"]["calls"] == 2 * 2500 + opened
    assert stats["cmdstat_set"]["calls"] == 2 * 2500
    assert stats["cmdstat_del"]["calls"] == 2500


async def test_a_key_deleted_while_warmup_loads_it_is_not_stored(
    make_cache: CacheFactory,
) -> None:
    """The key-level half of the no-stale-set guard holds for warmup's plain
    leases: `delete()` removes the lease, so the fill of a value loaded before
    the delete is refused, here and in Redis."""
    a, b = await make_cache(), await make_cache()
    source = {"k1": "old", "k2": "old"}

    async def loader(key: str) -> str:
        value = source[key]
        if key == "k2":  # the row changes, and the app deletes the key, mid-batch
            source["k1"] = "new"
            await b.delete("k1")
        return value

    assert await a.warmup(list(source), loader) == 1  # k2 only
    assert a.get_stats()["stale_sets_refused"] == 1
    assert await b.get("k1") is None  # not in Redis
    assert await a.get("k1") is None  # nor in a's L1
    assert await b.get("k2") == "old"


async def test_warmup_leaves_a_key_another_instance_is_loading(
    make_cache: CacheFactory,
) -> None:
    """A key whose fill lease is held is being loaded elsewhere: warmup does
    not load it too (no second loader run), and the holder's value is what
    lands in Redis."""
    a, b = await make_cache(), await make_cache()
    started, finish = asyncio.Event(), asyncio.Event()

    @b.cached(ttl=60, key="k")
    async def load() -> str:
        started.set()
        await finish.wait()
        return "b's value"

    loading = asyncio.create_task(load())
    await started.wait()
    calls: list[str] = []

    def loader(key: str) -> str:
        calls.append(key)
        return key

    assert await a.warmup(["k", "other"], loader) == 1
    assert calls == ["other"]
    finish.set()
    assert await loading == "b's value"
    assert await a.get("k") == "b's value"


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


async def test_a_cached_call_that_joins_a_warmup_of_its_key_gets_an_answer(
    make_cache: CacheFactory,
) -> None:
    """Found by the model checker: a `@cached` call that joined a warmup's load
    of its key waited forever (warmup never settled its flights)."""
    cache = await make_cache()
    loading = asyncio.Event()

    @cache.cached(ttl=60)
    async def row(n: int) -> str:
        return f"loaded {n}"

    async def slow_loader(key: str) -> str:
        loading.set()
        await asyncio.sleep(0.05)
        return "warmed"

    warming = asyncio.create_task(cache.warmup([row.key(1), row.key(2)], slow_loader))
    await loading.wait()
    joined = await asyncio.wait_for(row(1), 5)  # joins the warmup's flight of the key
    assert joined == "warmed"
    assert await warming == 2

    # A warmup cancelled while it loads: a call that joined it loads for itself.
    loading.clear()
    warming = asyncio.create_task(cache.warmup([row.key(3)], slow_loader))
    await loading.wait()
    joining = asyncio.create_task(row(3))
    await asyncio.sleep(0)
    warming.cancel()
    assert await asyncio.wait_for(joining, 5) == "loaded 3"
