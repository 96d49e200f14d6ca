"""The read path (`_reads.py`) on a real server.

Written for the mutation run (.ci/mutation.py, module `reads`); each test
names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import MsgpackSerializer, TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

NS = "rd"
FAST = {"redis_timeout": 0.5, "health_interval": 0.1, "lease_ttl": 60}


@pytest.fixture
async def pair(server: RedisServer) -> AsyncIterator[tuple[TwoTierCache, TwoTierCache]]:
    a = TwoTierCache(redis_url=server.url, namespace=NS, **FAST)
    b = TwoTierCache(redis_url=server.url, namespace=NS, **FAST)
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def test_a_get_keeps_its_l2_hit_in_l1(pair: tuple[TwoTierCache, TwoTierCache]) -> None:
    """Kills: reads-81cf18 (an L2 hit of `get` not stored in L1)."""
    a, b = pair
    await a.set("k", "v", ttl=60)

    async def hit_in_l1() -> bool:
        # (a read that A's own announcement of the set overtakes is not kept: retried)
        assert await b.get("k") == "v"
        return b.get_stats()["l1_hits"] > 0

    await eventually(hit_in_l1, timeout=5)
    assert b.get_stats()["l2_hits"] >= 1


async def test_a_get_that_finds_an_outdated_entry_deletes_it_from_redis(
    pair: tuple[TwoTierCache, TwoTierCache], raw: aioredis.Redis
) -> None:
    """An entry outdated by its tag's invalidation is deleted by the first plain
    read that finds it, not left in Redis (memory) until its ttl ends.
    Kills: reads-b2cf6f (`get` reads with drop=False)."""
    a, b = pair
    await a.set("k", "v", ttl=600, tags=["t"])
    entry = Layout(NS).entry("k")
    assert await raw.exists(entry)
    await a.invalidate_tag("t")
    assert await b.get("k") is None

    async def gone() -> bool:
        return not await raw.exists(entry)

    await eventually(gone, timeout=5)


async def test_a_get_while_this_instances_set_of_the_key_is_on_its_way_waits_for_it(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    """A read of a key this instance is changing waits until Redis has the change
    (the Unsettled rule), so it answers the value being set, not the miss Redis
    would give a moment before.
    Kills: reads-8ff96a (the read does not wait: a miss)."""
    a, _ = pair
    setting = asyncio.ensure_future(a.set("k", "new", ttl=60))
    await asyncio.sleep(0)  # the set has begun: applied here, on its way to Redis
    assert not setting.done()
    assert await a.get("k") == "new"
    await setting


async def test_a_get_right_after_an_unawaited_invalidation_of_its_tag_misses(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    """invalidate_tag not awaited (delivered in the background): a read of an entry
    carrying that tag, on the same instance, waits for the delivery and reads
    again, so it never answers the entry the invalidation outdates
    (read-your-writes holds for an un-awaited invalidation too).
    Kills: reads-ecd1dc (the entry returned without that check)."""
    a, _ = pair
    await a.set("k", "old", ttl=60, tags=["t"])
    for _ in range(5):
        a.invalidate_tag("t")  # not awaited
        assert await a.get("k") is None
        await a.set("k", "old", ttl=60, tags=["t"])


@pytest.mark.parametrize("tag", ["t", "elsewhere"])
async def test_a_get_during_an_invalidation_on_its_way_reads_l2_no_more_than_needed(
    pair: tuple[TwoTierCache, TwoTierCache], tag: str
) -> None:
    """While an un-awaited invalidation is on its way, a read of an entry carrying
    that tag waits for it once and reads again (one L2 hit at most, the first
    read); an invalidation of another tag does not make the read wait or repeat.
    Kills: reads-fd57a4 (no wait: re-read until delivered), reads-ad603c (any
    change on its way makes the read repeat until delivered)."""
    a, b = pair
    for n in range(5):
        await b.set("k", n, ttl=60, tags=["t"])  # in L2, not in a's L1
        hits = a.get_stats()["l2_hits"]
        invalidation = a.invalidate_tag(tag)  # not awaited
        expected = None if tag == "t" else n
        assert await a.get("k") == expected
        read = a.get_stats()["l2_hits"] - hits
        assert read <= 1 if tag == "t" else read == 1  # for "t": the read before the wait
        await invalidation


async def test_with_redis_down_a_cached_call_runs_its_loader_and_answers(
    server: RedisServer,
) -> None:
    """Kills: reads-dfce03 (no lease token on the path where L2 cannot be read)."""
    cache = TwoTierCache(redis_url=server.url, namespace=NS, **FAST)
    await cache.start()
    try:
        loads = 0

        @cache.cached(ttl=60)
        async def value(n: int) -> int:
            nonlocal loads
            loads += 1
            return n

        assert await value(1) == 1
        server.kill()
        for n in range(2, 6):  # the first ones meet the dead server, the later an open breaker
            assert await value(n) == n
        assert loads == 5
    finally:
        await cache.close()


async def test_a_cached_call_keeps_its_l2_hit_in_l1(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    """Kills: reads-f225d2, reads-ac2a40 (a cached call's L2 hit not stored in L1)."""
    a, b = pair

    async def load() -> str:
        return "v"

    assert await a.cached(ttl=60, key="k")(load)() == "v"  # loaded, filled into L2
    fb = b.cached(ttl=60, key="k")(load)

    async def hit_in_l1() -> bool:
        assert await fb() == "v"
        return b.get_stats()["l1_hits"] > 0

    await eventually(hit_in_l1, timeout=5)
    assert b.get_stats()["loads"] == 0  # B never ran the loader


async def test_a_loaded_value_up_to_max_value_size_goes_to_l2_a_larger_one_stays_in_l1(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    """Exactly max_value_size bytes is still filled into Redis; one byte more is
    kept in this L1 only, and counted.
    Kills: reads-08e680 (`>` -> `>=`), reads-1f8948, reads-0c59ec (the count),
    reads-4963e0 (its fill lease kept until it expires)."""
    size = len(MsgpackSerializer().dumps("x" * 100))
    a = TwoTierCache(redis_url=server.url, namespace=NS, max_value_size=size, **FAST)
    b = TwoTierCache(redis_url=server.url, namespace=NS, max_value_size=size, **FAST)
    await a.start()
    await b.start()
    try:

        async def fits() -> str:
            return "x" * 100

        async def too_big() -> str:
            return "x" * 101

        assert await a.cached(ttl=60, key="fits")(fits)() == "x" * 100
        assert await a.cached(ttl=60, key="big")(too_big)() == "x" * 101
        assert a.get_stats()["oversized_values"] == 1
        assert await b.get("fits") == "x" * 100  # in Redis
        assert await b.get("big") is None  # not in Redis

        async def lease_freed() -> bool:  # not held until lease_ttl ends
            return not await raw.exists(Layout(NS).lease("big"))

        await eventually(lease_freed, timeout=5)
    finally:
        await a.close()
        await b.close()


async def test_a_caller_waits_for_another_instances_load_and_gets_its_result(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    """B misses while A's loader runs under the key's fill lease: B waits for the
    lease's end and takes A's result from L2, without running its own loader.
    Kills: reads-4bb43e (B does not wait: it loads for itself), reads-979f74 (B
    not woken by the lease's end: it waits out the lease)."""
    a, b = pair
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "a's"

    async def own() -> str:
        return "b's own"

    leader = asyncio.ensure_future(a.cached(ttl=60, key="k")(slow)())
    try:
        await eventually(lambda: _true(a.get_stats()["loads"] == 1), timeout=5)
        waiter = asyncio.ensure_future(b.cached(ttl=60, key="k")(own)())
        await eventually(lambda: _true(b.get_stats()["lease_waits"] == 1 or waiter.done()))
        gate.set()
        await eventually(lambda: _true(waiter.done()), timeout=10)  # woken, not timed out
        assert waiter.result() == "a's"
        assert b.get_stats()["loads"] == 0
    finally:
        gate.set()
        await leader


async def _true(value: bool) -> bool:
    return value
