"""Memory mode (`redis_url=None`) beyond the shared contract: clock-driven expiry,
the LRU bound, loader policies, early refresh, logging, lifecycle."""

import asyncio
import itertools
import uuid

import pytest

from twotier import (
    MISS,
    CacheClosedError,
    TwoTierCache,
)
from twotier.testing import FakeClock


async def test_ttl_expires_with_the_injected_clock() -> None:
    clock = FakeClock()
    cache = TwoTierCache(namespace=f"c{uuid.uuid4().hex[:8]}", clock=clock)
    calls = itertools.count()

    @cache.cached(ttl=10)
    async def value() -> int:
        return next(calls)

    async with cache:
        assert await value() == 0
        clock.advance(9.9)
        assert await value() == 0
        clock.advance(0.2)
        assert await value() == 1


async def test_lru_bound_and_tag_index_stay_consistent() -> None:
    cache = TwoTierCache(namespace=f"l{uuid.uuid4().hex[:8]}", l1_maxsize=10)
    async with cache:
        for i in range(100):
            await cache.set(f"k{i}", i, tags=[f"t{i}", "all"])
        stats = cache.get_stats()
        assert stats["entries"] == 10
        assert stats["tags"] == 11  # ten own tags + "all", evicted ones are gone
        await cache.invalidate_tag("all")
        assert cache.get_stats()["entries"] == 0


async def test_closed_cache_refuses_use() -> None:
    cache = TwoTierCache(namespace="closed")
    await cache.start()
    await cache.close()
    with pytest.raises(CacheClosedError):
        await cache.set("k", 1)


async def test_decorating_a_sync_function_is_an_error() -> None:
    from twotier import ConfigurationError

    with pytest.raises(ConfigurationError, match="async"):

        @TwoTierCache().cached()
        def sync(x: int) -> int:
            return x


async def test_stale_if_error_serves_the_last_value_for_a_bounded_time() -> None:
    clock = FakeClock()
    cache = TwoTierCache(namespace=f"s{uuid.uuid4().hex[:8]}", clock=clock)
    state = {"fail": False, "v": 1}

    @cache.cached(ttl=10, stale_if_error=60)
    async def value() -> dict[str, int]:
        if state["fail"]:
            raise RuntimeError("db down")
        return {"v": state["v"]}

    async with cache:
        assert await value() == {"v": 1}
        state["fail"] = True
        clock.advance(11)  # expired in L1: the loader runs and fails
        assert await value() == {"v": 1}
        assert cache.get_stats()["stale_served"] == 1
        clock.advance(60)  # past the stale bound: the error surfaces
        with pytest.raises(RuntimeError, match="db down"):
            await value()


async def test_hard_timeout_cancels_the_loader() -> None:
    from twotier import LoaderTimeoutError

    cache = TwoTierCache(namespace=f"h{uuid.uuid4().hex[:8]}")
    cancelled = asyncio.Event()

    @cache.cached(ttl=10, hard_timeout=0.05)
    async def hangs() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async with cache:
        with pytest.raises(LoaderTimeoutError):
            await hangs()
        assert cancelled.is_set()


async def test_soft_timeout_answers_with_the_last_value_and_refreshes_behind() -> None:
    cache = TwoTierCache(namespace=f"o{uuid.uuid4().hex[:8]}")
    state = {"v": 1, "delay": 0.0}

    @cache.cached(ttl=10, tags=["t"], soft_timeout=0.02, stale_if_error=60)
    async def value() -> int:
        await asyncio.sleep(state["delay"])
        return state["v"]

    async with cache:
        assert await value() == 1
        state.update(v=2, delay=0.2)
        await cache.invalidate_tag("t")
        assert await value() == 1  # answered after the soft timeout, with the last value
        await asyncio.sleep(0.3)  # the load finished in the background and filled L1
        state["delay"] = 10
        assert await value() == 2


def test_policy_arguments_are_checked() -> None:
    from twotier import ConfigurationError

    cache = TwoTierCache()
    for kwargs in (
        {"hard_timeout": 0},
        {"stale_if_error": -1},
        {"ttl_jitter": 0.9},
        {"soft_timeout": 1.0},
        {"soft_timeout": 2.0, "hard_timeout": 1.0, "stale_if_error": 5},
    ):
        with pytest.raises(ConfigurationError):
            cache.cached(**kwargs)  # type: ignore[arg-type]


async def test_ttl_jitter_shortens_ttls_within_the_bound() -> None:
    clock = FakeClock()
    cache = TwoTierCache(namespace=f"j{uuid.uuid4().hex[:8]}", clock=clock)

    @cache.cached(ttl=100, ttl_jitter=0.2)
    async def value(n: int) -> int:
        return n

    async with cache:
        for n in range(50):
            await value(n)
        clock.advance(79.9)
        assert cache.local.entries == 50  # nobody expires before ttl * (1 - 0.2)
        clock.advance(10)  # at 90 s: TTLs spread over 80..100 s, so some are gone, some not
        alive = sum(cache.local.get(value.key(n)) is not MISS for n in range(50))
        assert 0 < alive < 50


async def test_log_records_name_the_instance_and_the_tier(
    trio: list[TwoTierCache], caplog: pytest.LogCaptureFixture
) -> None:
    a = trio[0]

    async def loader(key: str) -> str:
        raise RuntimeError("row locked")

    with caplog.at_level("WARNING", logger="twotier"):
        assert await a.warmup(["k"], loader) == 0
    record = next(r for r in caplog.records if "warmup loader failed" in r.getMessage())
    assert (record.instance, record.tier) == (a.instance_id, "loader")  # type: ignore[attr-defined]


async def test_early_refresh_reloads_hot_keys_before_they_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import twotier._decorator as decorator

    # random() = 1 - e^-1, so the XFetch gap is exactly delta * beta: with a
    # 1 s loader and beta 1, a hit refreshes once the entry has < 1 s to live.
    monkeypatch.setattr(decorator.random, "random", lambda: 1 - 2.718281828459045**-1)
    clock = FakeClock()
    cache = TwoTierCache(namespace=f"x{uuid.uuid4().hex[:8]}", clock=clock)
    source = {"v": 1, "loads": 0}

    @cache.cached(ttl=10, early_refresh=1.0)
    async def value() -> int:
        source["loads"] += 1
        clock.advance(1.0)  # the loader takes one second
        return source["v"]

    async with cache:
        assert await value() == 1  # loaded at t=1, expires at t=11
        clock.advance(8.5)  # 1.5 s left: beyond the gap, no refresh yet
        assert await value() == 1
        await asyncio.sleep(0)
        assert source["loads"] == 1
        source["v"] = 2
        clock.advance(0.6)  # 0.9 s left: this hit answers at once and refreshes behind
        assert await value() == 1
        for _ in range(3):
            await asyncio.sleep(0)
        assert source["loads"] == 2
        assert await value() == 2  # the refreshed entry, still an L1 hit
        stats = cache.get_stats()
        assert (stats["early_refreshes"], stats["misses"], stats["l1_hits"]) == (1, 1, 3)


async def test_closed_cache_serves_nothing_from_l1() -> None:
    cache = TwoTierCache(namespace=f"z{uuid.uuid4().hex[:8]}")

    @cache.cached(ttl=60)
    async def value() -> int:
        return 1

    async with cache:
        assert await value() == 1
    with pytest.raises(CacheClosedError):  # no invalidations reach a closed cache
        await value()


async def test_joined_callers_get_their_own_copies(trio: list[TwoTierCache]) -> None:
    a = trio[0]
    gate = asyncio.Event()

    @a.cached(ttl=60)
    async def rows() -> list[int]:
        await gate.wait()
        return [1, 2]

    first, second = asyncio.create_task(rows()), asyncio.create_task(rows())
    await asyncio.sleep(0)
    gate.set()
    one, two = await first, await second
    assert one == two == [1, 2]
    assert one is not two  # one load, but no shared mutable result


async def test_early_refresh_failure_does_not_strand_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import twotier._decorator as decorator

    monkeypatch.setattr(decorator.random, "random", lambda: 0.999999)  # always refresh early
    clock = FakeClock()
    cache = TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}", clock=clock)
    gate = asyncio.Event()
    state = {"calls": 0}

    @cache.cached(ttl=1, early_refresh=10)
    async def value() -> int:
        state["calls"] += 1
        clock.advance(0.3)
        if state["calls"] == 2:  # the background refresh: slow, then it fails
            await gate.wait()
            raise RuntimeError("db hiccup")
        return state["calls"]

    async with cache:
        assert await value() == 1
        assert await value() == 1  # a hit that starts the refresh
        await asyncio.sleep(0)
        clock.advance(5)  # the entry expires while the refresh still runs
        caller = asyncio.create_task(value())  # joins the refresh's flight
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.wait_for(caller, timeout=2) == 3  # loads itself, never stranded


async def test_counts_must_be_positive() -> None:
    from twotier import ConfigurationError

    for kwargs in ({"outbox_limit": 0}, {"log_maxlen": -1}, {"l1_maxsize": True}):
        with pytest.raises(ConfigurationError):
            TwoTierCache(**kwargs)  # type: ignore[arg-type]


async def test_warmup_accepts_a_lambda_over_an_async_loader(trio: list[TwoTierCache]) -> None:
    a = trio[0]

    async def fetch(key: str) -> str:
        return key * 2

    assert await a.warmup(["x", "y"], lambda key: fetch(key)) == 2
    assert await a.get("y") == "yy"
