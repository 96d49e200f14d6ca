"""The read path (`_reads.py`) on a real server.

Written for the mutation run (.ci/mutation.py, module `reads`); each test
names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

import twotier._decorator as decorator
from tests.contract import eventually
from twotier import MsgpackSerializer, TwoTierCache
from twotier._events import BaseObserver
from twotier._redis import Layout
from twotier.testing import FakeClock, RedisServer

from .conftest import failing_call_of_k, own_call_of_k

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


async def _scripts(raw: aioredis.Redis) -> int:
    """Scripts the server ran since its last CONFIG RESETSTAT (claims, fills,
    releases, drops: every change of the cache is one)."""
    stats = await raw.info("commandstats")
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def _warm(*caches: TwoTierCache) -> None:
    """One load on each cache first: its generation is known and its horizon noted,
    so what is counted next is the scenario's own commands only."""

    async def warm() -> str:
        return "warm"

    for n, cache in enumerate(caches):
        assert await cache.cached(ttl=60, key=f"warm{n}", tags=["t"])(warm)() == "warm"


async def test_a_caller_that_waited_for_another_instances_load_pays_three_commands(
    pair: tuple[TwoTierCache, TwoTierCache], raw: aioredis.Redis
) -> None:
    """B misses while A's loader runs: B's GET, its claim (the lease is held: B
    waits), and once woken by A's fill the one GET that finds A's entry; A's fill
    is the only other script. No second claim for an entry the re-read found,
    and no claim in place of that re-read.
    Kills: reads-b4e2af (the re-read skipped: a claim instead), reads-d67fb1,
    reads-66873a, reads-1d3d9b (a hit after the wait claimed again anyway)."""
    a, b = pair
    await _warm(a, b)
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "a's"

    async def own() -> str:
        return "b's own"

    leader = asyncio.ensure_future(a.cached(ttl=60, key="k")(slow)())
    try:
        await eventually(lambda: _true(a.get_stats()["loads"] == 2), timeout=5)  # claimed
        await raw.config_resetstat()
        reads = b._remote.reads  # type: ignore[attr-defined]
        waiter = asyncio.ensure_future(b.cached(ttl=60, key="k")(own)())
        await eventually(lambda: _true(b.get_stats()["lease_waits"] == 1 or waiter.done()))
        gate.set()
        assert await waiter == "a's"
        assert await leader == "a's"
    finally:
        gate.set()
        await asyncio.gather(leader, return_exceptions=True)
    assert b._remote.reads - reads == 2  # type: ignore[attr-defined]
    assert await _scripts(raw) == 2  # B's claim, A's fill


async def test_a_caller_whose_leader_failed_loads_under_its_own_lease_and_fills_l2(
    pair: tuple[TwoTierCache, TwoTierCache], raw: aioredis.Redis
) -> None:
    """A's loader fails while B waits on A's lease: B is woken by the release,
    reads once more (a miss), takes the lease itself, loads and fills Redis, so
    A's next read finds B's value there instead of loading again. Cost: B's two
    GETs, its two claims and its fill, and A's release.
    Kills: reads-38f98e, reads-b897a1 (B loads without a lease: L1 only, not in
    Redis), reads-bf0a85 (the second claim's result lost), reads-d67fb1 (no
    second claim after the miss)."""
    a, b = pair
    await _warm(a, b)
    gate = asyncio.Event()
    leader = failing_call_of_k(a, gate)
    try:
        await eventually(lambda: _true(a.get_stats()["loads"] == 2), timeout=5)  # claimed
        await raw.config_resetstat()
        reads = b._remote.reads  # type: ignore[attr-defined]
        waiter = own_call_of_k(b)
        await eventually(lambda: _true(b.get_stats()["lease_waits"] == 1 or waiter.done()))
        gate.set()
        assert await waiter == "b's own"
    finally:
        gate.set()
        results = await asyncio.gather(leader, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert b.get_stats()["loads"] == 2  # the warm-up's and this one
    assert await a.get("k") == "b's own"  # in Redis
    assert b._remote.reads - reads == 2  # type: ignore[attr-defined]
    assert await _scripts(raw) == 4  # B's claim, A's release, B's claim, B's fill


async def test_a_load_that_replaces_an_outdated_entry_does_not_delete_it_first(
    pair: tuple[TwoTierCache, TwoTierCache], raw: aioredis.Redis
) -> None:
    """An entry outdated by its tag's invalidation is overwritten by the fill of
    the load that follows: deleting it first is a script per instance for
    nothing, both on the first read and on the re-read after a lease wait.
    Here A and B both find it outdated; A's loader fails, B loads and fills.
    Commands: A's claim, B's claim, A's release, B's claim, B's fill; no drop.
    Kills: reads-c93822 (the first read drops it), reads-8d6b53 (the re-read
    after the wait drops it)."""
    a, b = pair
    await _warm(a, b)
    await a.set("k", "old", ttl=60, tags=["t"])
    heard = b.get_stats()["invalidations_received"]
    await a.invalidate_tag("t")
    await eventually(lambda: _true(b.get_stats()["invalidations_received"] > heard), timeout=5)
    gate = asyncio.Event()

    async def failing() -> str:
        await gate.wait()
        raise RuntimeError("the database is away")

    async def own() -> str:
        return "b's own"

    await raw.config_resetstat()
    leader = asyncio.ensure_future(a.cached(ttl=60, key="k", tags=["t"])(failing)())
    try:
        await eventually(lambda: _true(a.get_stats()["loads"] == 2), timeout=5)  # claimed
        waiter = asyncio.ensure_future(b.cached(ttl=60, key="k", tags=["t"])(own)())
        await eventually(lambda: _true(b.get_stats()["lease_waits"] == 1 or waiter.done()))
        gate.set()
        assert await waiter == "b's own"
    finally:
        gate.set()
        results = await asyncio.gather(leader, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert await a.get("k") == "b's own"
    # (a drop is sent in the background: counted once both caches' tasks are done)
    await eventually(lambda: _true(not a._deliveries and not b._deliveries), timeout=5)  # type: ignore[attr-defined]
    assert await _scripts(raw) == 5


async def test_a_load_right_after_an_unawaited_invalidation_of_its_tag_reads_l2_once(
    pair: tuple[TwoTierCache, TwoTierCache],
) -> None:
    """A cached call whose tag this instance is invalidating (not awaited) first
    waits for the invalidation to reach Redis, then reads L2 once: the entry it
    finds is outdated (a miss, no L2 hit) and the loader runs. Reading before
    the wait costs a GET that finds the old entry, a wait, and a second GET.
    Kills: reads-e4641b (no wait before the read), reads-d0dc94 (the wait
    without the tags: only the key's own changes awaited)."""
    a, b = pair

    async def load() -> str:
        return "loaded"

    for n in range(5):
        await b.set("k", n, ttl=60, tags=["t"])  # in L2
        reads = a._remote.reads  # type: ignore[attr-defined]
        hits = a.get_stats()["l2_hits"]
        invalidation = a.invalidate_tag("t")  # not awaited
        assert await a.cached(ttl=60, key="k", tags=["t"])(load)() == "loaded"
        assert a._remote.reads - reads == 1  # type: ignore[attr-defined]
        assert a.get_stats()["l2_hits"] == hits
        await invalidation


async def test_an_early_refresh_gives_way_to_another_instances_load_of_the_key(
    pair: tuple[TwoTierCache, TwoTierCache], raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's hit calls for an early refresh while B is refreshing the same key
    (B holds its fill lease): A's refresh finds the lease taken and ends at once,
    without waiting for B's load or running its own loader; A keeps serving its
    copy. (XFetch's draw is pinned to its far end and each function's first load
    takes 0.3 s, so every hit calls for a refresh.)
    Kills: reads-261916 (the refresh waits on the lease like a miss),
    reads-685eb4 (it runs its loader anyway, without the lease)."""
    monkeypatch.setattr(decorator.random, "random", lambda: 1 - 2**-53)
    a, b = pair
    calls = {"a": 0, "b": 0}
    started, gate = asyncio.Event(), asyncio.Event()

    async def load_a(n: int) -> str:
        if n == 0:
            await asyncio.sleep(0.3)  # delta: the XFetch gap outgrows the ttl
        else:
            calls["a"] += 1
        return f"a{n}"

    async def load_b(n: int) -> str:
        if n == 2:
            await asyncio.sleep(0.3)
        else:
            calls["b"] += 1
            started.set()
            await gate.wait()
        return f"b{n}"

    fa = a.cached(ttl=60, key=lambda n: f"r{n}", early_refresh=10)(load_a)
    fb = b.cached(ttl=60, key=lambda n: f"r{n}", early_refresh=10)(load_b)
    try:
        assert (await fa(0), await fb(2)) == ("a0", "b2")  # the first loads: slow
        assert await fa(1) == "a1"  # loaded by A, filled into Redis

        async def b_refreshes() -> bool:  # B's hits in L1 call for a refresh
            assert await fb(1) == "a1"
            return started.is_set()

        await eventually(b_refreshes, timeout=5)  # B's refresh holds the lease
        assert await fa(1) == "a1"  # A's hit: its refresh starts
        await eventually(lambda: _true(a.get_stats()["early_refreshes"] == 1), timeout=5)
        await eventually(lambda: _true(a._flights.join("r1") is None), timeout=5)  # ended
        assert calls["a"] == 1  # A's first load only
        assert a.get_stats()["lease_waits"] == 0
        assert await fa(1) == "a1"
    finally:
        gate.set()
    await eventually(lambda: _true(b.get_stats()["early_refreshes"] == 1), timeout=5)
    assert calls["b"] == 1


async def test_a_cached_calls_l2_hit_costs_one_get_and_no_script(
    pair: tuple[TwoTierCache, TwoTierCache], raw: aioredis.Redis
) -> None:
    """B's cached call finds A's entry in Redis: one GET, no claim of the fill
    lease (the claim is for misses only).
    Kills: reads-189b93 (the claim condition's `and` made `or`: every L2 hit
    claims as well)."""
    a, b = pair
    await _warm(a, b)

    async def load() -> str:
        return "v"

    assert await a.cached(ttl=60, key="k", tags=["t"])(load)() == "v"
    await raw.config_resetstat()
    reads = b._remote.reads  # type: ignore[attr-defined]
    assert await b.cached(ttl=60, key="k", tags=["t"])(load)() == "v"
    assert b.get_stats()["loads"] == 1  # the warm-up's only
    assert b._remote.reads - reads == 1  # type: ignore[attr-defined]
    assert await _scripts(raw) == 0


async def test_while_degraded_a_loaded_value_stays_in_l1_for_max_stale_at_most(
    server: RedisServer,
) -> None:
    """With Redis away no change can reach this instance, so what its loader
    returns is kept in L1 for `max_stale` seconds, not the function's ttl: past
    that, the next call runs the loader again.
    Kills: reads-ca1990 (the full ttl kept while degraded)."""
    server.kill()
    clock = FakeClock()
    cache = TwoTierCache(redis_url=server.url, namespace=NS, clock=clock, max_stale=5, **FAST)
    await cache.start()  # degraded from the start
    try:
        # (L1 is suspended while the listener is lost but Redis might still
        # answer; it serves, for max_stale, once the breaker has opened)
        async def breaker_open() -> bool:  # the failed reads open it
            assert await cache.get("probe") is None
            return cache._link.degraded and not cache.local.suspended  # type: ignore[union-attr]

        await eventually(breaker_open, timeout=10)
        loads = 0

        @cache.cached(ttl=60)
        async def value() -> int:
            nonlocal loads
            loads += 1
            return loads

        assert await value() == 1
        assert await value() == 1  # from L1
        clock.advance(4)
        assert await value() == 1
        clock.advance(2)  # 6 s: past max_stale, well inside the ttl
        assert await value() == 2
    finally:
        await cache.close()


async def test_a_caller_that_joined_an_early_refresh_which_gave_way_loads_for_itself(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's copy expires while A's early refresh is under way, and the caller that
    misses joins that refresh; the refresh then gives way to B's load of the key
    (B holds its lease). The joiner is let go and reads for itself (A's entry
    in Redis is still current: Redis' expiry is wall-clock time), rather than
    left waiting on a flight that ended. (One clock, moved by hand, for both
    instances; XFetch's draw pinned to its far end, and each function's first
    load takes a second of it.)
    Kills: reads-cc4aaa (the given-way refresh's flight ended unresolved)."""
    monkeypatch.setattr(decorator.random, "random", lambda: 1 - 2**-53)
    clock = FakeClock()
    a = TwoTierCache(redis_url=server.url, namespace=NS, clock=clock, **FAST)
    b = TwoTierCache(redis_url=server.url, namespace=NS, clock=clock, **FAST)
    await a.start()
    await b.start()
    calls = {"a": 0, "b": 0}
    started, gate = asyncio.Event(), asyncio.Event()

    async def load_a(n: int) -> str:
        if n == 0:
            clock.advance(1)  # a load time: the XFetch gap outgrows the ttl
        else:
            calls["a"] += 1
        return f"a{n}"

    async def load_b(n: int) -> str:
        if n == 2:
            clock.advance(1)
        else:
            calls["b"] += 1
            started.set()
            await gate.wait()
        return f"b{n}"

    fa = a.cached(ttl=60, key=lambda n: f"r{n}", early_refresh=10)(load_a)
    fb = b.cached(ttl=60, key=lambda n: f"r{n}", early_refresh=10)(load_b)
    try:
        assert (await fa(0), await fb(2)) == ("a0", "b2")  # the first loads
        assert await fa(1) == "a1"  # loaded by A, filled into Redis

        async def b_refreshes() -> bool:  # B's hits in L1 call for a refresh
            assert await fb(1) == "a1"
            return started.is_set()

        await eventually(b_refreshes, timeout=5)  # B's refresh holds the lease
        assert await fa(1) == "a1"  # A's hit: its refresh is spawned...
        await asyncio.sleep(0)  # ...and begins (its GET on its way)
        assert a._flights.join("r1") is not None
        clock.advance(100)  # A's copy expires
        joiner = asyncio.ensure_future(fa(1))
        await asyncio.sleep(0)
        assert a.get_stats()["joined_loads"] == 1
        # let go, it reads for itself: A's entry in Redis is still current
        await eventually(lambda: _true(joiner.done()), timeout=5)
        assert joiner.result() == "a1"
        assert calls == {"a": 1, "b": 1}  # nobody loaded but B's refresh
    finally:
        gate.set()
        await a.close()
        await b.close()


class _AsTheWaitEnds(BaseObserver):
    """Runs an action the moment a lease wait ends, before the read that follows
    it: this instance's own change, made just then by another task of its loop."""

    def __init__(self) -> None:
        self.action: Callable[[], object] | None = None

    def lease_waited(self, seconds: float) -> None:
        action, self.action = self.action, None
        if action is not None:
            action()


async def _wait_and_change(
    server: RedisServer, tag: str, rounds: int = 3, b_tags: tuple[str, ...] = ("t",)
) -> list[tuple[str, int]]:
    """B waits on A's load of a key tagged "t" (B's function tags it *b_tags*); as
    B's wait ends, B invalidates *tag* (not awaited). B's result and the GETs B
    paid, per round."""
    seen = _AsTheWaitEnds()
    a = TwoTierCache(redis_url=server.url, namespace=NS, **FAST)
    b = TwoTierCache(redis_url=server.url, namespace=NS, observers=[seen], **FAST)
    await a.start()
    await b.start()
    try:
        return [
            await _wait_and_change_once(a, b, seen, f"k{n}", tag, b_tags) for n in range(rounds)
        ]
    finally:
        await a.close()
        await b.close()


async def _wait_and_change_once(
    a: TwoTierCache,
    b: TwoTierCache,
    seen: _AsTheWaitEnds,
    key: str,
    tag: str,
    b_tags: tuple[str, ...],
) -> tuple[str, int]:
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "a's"

    async def own() -> str:
        return "b's own"

    invalidations: list[Any] = []
    loads = a.get_stats()["loads"]
    leader = asyncio.ensure_future(a.cached(ttl=60, key=key, tags=["t"])(slow)())
    try:
        await eventually(lambda: _true(a.get_stats()["loads"] > loads), timeout=5)  # claimed
        waits, reads = b.get_stats()["lease_waits"], b._remote.reads  # type: ignore[attr-defined]
        seen.action = lambda: invalidations.append(b.invalidate_tag(tag))
        waiter = asyncio.ensure_future(b.cached(ttl=60, key=key, tags=list(b_tags))(own)())
        await eventually(
            lambda: _true(b.get_stats()["lease_waits"] > waits or waiter.done()), timeout=5
        )
        gate.set()
        value = await waiter
        assert await leader == "a's"
    finally:
        gate.set()
        await asyncio.gather(leader, return_exceptions=True)
    assert len(invalidations) == 1  # made as the wait ended
    await invalidations[0]
    return value, b._remote.reads - reads  # type: ignore[attr-defined]


async def test_a_read_after_a_lease_wait_never_answers_an_entry_its_own_invalidation_outdated(
    server: RedisServer,
) -> None:
    """B waits for A's load; as the wait ends, B invalidates the tag A's entry
    carries (not awaited). B's read then finds A's entry, which B's mirror does
    not yet know outdated: it waits for its invalidation to reach Redis and reads
    again, so it answers its own load, never the entry its own invalidation
    outdated (read-your-writes).
    Kills: reads-1d8b04 (after the wait for the invalidation, the outdated entry
    answered)."""
    for value, _ in await _wait_and_change(server, "t"):
        assert value == "b's own"


async def test_a_read_after_a_lease_wait_is_not_repeated_for_an_unrelated_change(
    server: RedisServer,
) -> None:
    """As B's wait for A's load ends, B invalidates a tag A's entry does not
    carry: B takes A's entry with the one GET after the wait (two in all), and
    does not read again until that invalidation has reached Redis.
    Kills: reads-6d7253 (any change of this instance on its way makes the read
    repeat)."""
    assert await _wait_and_change(server, "elsewhere") == [("a's", 2)] * 3


async def test_a_read_that_waited_for_its_own_invalidation_reads_once_more_not_twice(
    server: RedisServer,
) -> None:
    """As in the test above, but B's function tags the key differently from A's
    entry ("u", not "t"): B finds A's entry current by its mirror, waits for
    its own invalidation of "t" to reach Redis, then reads once more and loads:
    three GETs at most (two when the invalidation is there before the read
    after the wait). Reading again before that wait costs one GET more.
    Kills: reads-ce38f0 (no wait before the new read: the entry is found
    current once more, then waited for)."""
    for value, reads in await _wait_and_change(server, "t", rounds=5, b_tags=("u",)):
        assert value == "b's own"
        assert reads <= 3
