"""The read path (`_reads.py`) in memory mode, with a clock that moves only when told.

Written for the mutation run (.ci/mutation.py, module `reads`); each test
names in its docstring the mutants it kills (ids from `--list`). The Redis
side is in integration/test_mutants_reads.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import uuid

import pytest

import twotier._decorator as decorator
from tests.contract import eventually
from twotier import TwoTierCache
from twotier.testing import FakeClock


async def _true(value: bool) -> bool:
    return value


async def _turns(count: int = 10) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.fixture
def refreshing(monkeypatch: pytest.MonkeyPatch) -> tuple[TwoTierCache, FakeClock]:
    """A memory-mode cache on a clock moved by hand, whose every hit asks for an
    early refresh (XFetch's draw pinned near 1)."""
    monkeypatch.setattr(decorator.random, "random", lambda: 0.999999)
    clock = FakeClock()
    return TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}", clock=clock), clock


async def test_a_failed_early_refresh_is_logged_and_the_value_stays_served(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Kills: reads-5db68b (the log not kept: the failure is not reported)."""
    # random() = 1 - 1/e: the XFetch gap is exactly delta * beta (see test_memory_cache)
    monkeypatch.setattr(decorator.random, "random", lambda: 1 - math.e**-1)
    clock = FakeClock()
    cache = TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}", clock=clock)
    source = {"fail": False, "loads": 0}

    @cache.cached(ttl=10, early_refresh=1.0)
    async def value() -> int:
        source["loads"] += 1
        if source["fail"]:
            raise RuntimeError("the database is away")
        clock.advance(1.0)  # the loader takes one second
        return 1

    async with cache:
        assert await value() == 1  # loaded at t=1, expires at t=11
        source["fail"] = True
        clock.advance(9.1)  # 0.9 s left: the hit refreshes behind
        with caplog.at_level(logging.WARNING, logger="twotier"):
            assert await value() == 1
            await _turns()
        assert source["loads"] == 2
        assert any("early refresh of" in r.getMessage() for r in caplog.records)
        assert await value() == 1  # still served until it expires


async def test_a_get_that_misses_counts_a_miss_and_leaves_no_watch_behind() -> None:
    """A plain get registers a watch for the key while its L2 read runs (so that a
    change meanwhile keeps the reply out of L1), and removes it when done: a hot key
    read a million times and never changed must not keep a million watches.
    Kills: reads-a6e24d (the miss not counted), reads-bc6043 (the watch left behind)."""
    async with TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}") as cache:
        assert await cache.get("absent", "default") == "default"
        assert await cache.get("absent") is None
        assert cache.get_stats()["misses"] == 2
        assert cache._flights._watches == {}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"rows": [[1, 2]]}, id="mutable-deep-inside"),  # decoded per caller
        pytest.param([{"id": 1}], id="rows"),  # a copy of each row
        pytest.param((1, "x"), id="immutable"),  # shared
    ],
)
async def test_callers_joining_one_load_get_their_own_copies(value: object) -> None:
    """Whatever the value's copy plan, the callers who joined a load get equal
    values, none of them the object another caller can change.
    Kills: reads-300ad8, reads-a79ca7 (the decoded plan taken for a copy function),
    reads-9ed6ef, reads-150192 (no copy), reads-bb1eec (the joiner loads again)."""
    gate = asyncio.Event()
    loads = 0
    async with TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}") as cache:

        @cache.cached(ttl=60)
        async def load() -> object:
            nonlocal loads
            loads += 1
            await gate.wait()
            return copy.deepcopy(value)

        first, second = asyncio.ensure_future(load()), asyncio.ensure_future(load())
        await _turns()
        gate.set()
        one, two = await first, await second
        assert one == two == value
        assert loads == 1
        if isinstance(value, tuple):
            assert one is two  # immutable: shared
        else:
            assert one is not two


async def test_hits_that_all_call_for_an_early_refresh_start_one(
    refreshing: tuple[TwoTierCache, FakeClock],
) -> None:
    """Every hit near the expiry asks for a refresh; one runs, the others leave
    it be. (`two` has never loaded, so it has no load time and its hits ask for
    no refresh: the case of two functions both asking is
    test_two_functions_cached_under_one_key_refresh_it_once_at_a_time.)"""
    cache, clock = refreshing
    gate = asyncio.Event()
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        if loads > 1:
            await gate.wait()  # the refresh waits until every hit has asked for one
        else:
            clock.advance(1.0)  # the first load takes a second: the XFetch gap is 13.8 s
        return loads

    async with cache:
        one = cache.cached(ttl=10, key="k", early_refresh=1.0)(load)
        two = cache.cached(ttl=10, key="k", early_refresh=1.0)(load)
        assert await one() == 1
        for _ in range(3):
            assert (await one(), await two()) == (1, 1)
            await _turns()
        gate.set()
        await _turns()
        assert loads == 2
        assert cache.get_stats()["early_refreshes"] == 1
        assert await two() == 2


async def test_an_early_refresh_cancelled_by_close_is_not_reported_as_a_failure(
    refreshing: tuple[TwoTierCache, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """close() cancels a refresh still running after its grace period: that is the
    refresh ending, not failing (no warning), and the cancellation is not swallowed.
    Kills: reads-484454 (a cancellation caught and logged as a failure)."""
    cache, clock = refreshing
    never = asyncio.Event()
    loads = 0

    @cache.cached(ttl=10, early_refresh=1.0)
    async def value() -> int:
        nonlocal loads
        loads += 1
        if loads > 1:
            await never.wait()  # the refresh never ends by itself
        clock.advance(1.0)
        return loads

    with caplog.at_level(logging.WARNING, logger="twotier"):
        async with cache:
            assert await value() == 1
            assert await value() == 1  # starts the refresh
            await _turns()
            assert loads == 2
    assert not [r for r in caplog.records if "early refresh" in r.getMessage()]


async def test_a_caller_whose_copy_expired_during_a_refresh_joins_it(
    refreshing: tuple[TwoTierCache, FakeClock],
) -> None:
    """The entry expires while its early refresh runs: the caller that misses
    joins the refresh's flight and gets its result; no third load.
    Kills: reads-c0dc42 (the refresh's result never handed to its joiners),
    reads-c90631 (the joiners made to load for themselves)."""
    cache, clock = refreshing
    gate = asyncio.Event()
    loads = 0

    @cache.cached(ttl=10, early_refresh=1.0)
    async def value() -> int:
        nonlocal loads
        loads += 1
        if loads > 1:
            await gate.wait()
        else:
            clock.advance(1.0)
        return loads

    async with cache:
        assert await value() == 1
        assert await value() == 1  # starts the refresh
        await _turns()
        clock.advance(20)  # the entry has expired meanwhile
        joined = asyncio.ensure_future(value())
        await _turns()
        assert not joined.done()
        gate.set()
        await eventually(lambda: _true(joined.done()), timeout=5)
        assert joined.result() == 2
        assert loads == 2


async def test_loads_and_failed_loads_are_counted() -> None:
    """Kills: reads-4e573b, reads-f73fdf (loads), reads-5fc925, reads-ded55e (load_errors)."""
    async with TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}") as cache:

        @cache.cached(ttl=60)
        async def value(n: int) -> int:
            if n < 0:
                raise ValueError(n)
            return n

        assert (await value(1), await value(2), await value(1)) == (1, 2, 1)
        with pytest.raises(ValueError, match="-1"):
            await value(-1)
        stats = cache.get_stats()
        assert (stats["loads"], stats["load_errors"]) == (3, 1)


async def test_loads_leave_no_lease_waiter_registered() -> None:
    """A load registers a waiter for its key's fill lease before it claims (so a
    lease that ends before the claim's reply still wakes it) and removes it once
    the claim is answered: a process loading a million distinct keys must not
    keep a million futures.
    Kills: reads-416ba5 (the registration not removed), reads-4d67e8 (only
    someone else's registration removed)."""
    async with TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}") as cache:

        @cache.cached(ttl=60)
        async def value(n: int) -> int:
            return n

        assert [await value(n) for n in range(3)] == [0, 1, 2]
        assert cache._reads._lease_waiters == {}


async def test_two_functions_cached_under_one_key_refresh_it_once_at_a_time(
    refreshing: tuple[TwoTierCache, FakeClock],
) -> None:
    """Two functions cached under one key both call for an early refresh of it
    (each knows only of its own refreshes, and each has loaded before, so both
    have a load time for XFetch): the second finds the first's refresh in flight
    and leaves it be; the key is loaded once more, not twice.
    Kills: reads-c81bd2 (a refresh begun while one is in flight)."""
    cache, clock = refreshing
    gate = asyncio.Event()
    loads: dict[int, int] = {}

    async def load(n: int) -> str:
        loads[n] = loads.get(n, 0) + 1
        if loads[n] == 1:
            clock.advance(1.0)  # a first load takes a second: the XFetch gap is 13.8 s
        else:
            await gate.wait()  # a refresh waits until both have asked for one
        return f"{n}.{loads[n]}"

    async with cache:
        one = cache.cached(ttl=10, key=lambda n: f"k{n}", early_refresh=1.0)(load)
        two = cache.cached(ttl=10, key=lambda n: f"k{n}", early_refresh=1.0)(load)
        assert await two(0) == "0.1"  # two's own load time
        assert await one(1) == "1.1"
        for _ in range(3):
            assert (await one(1), await two(1)) == ("1.1", "1.1")  # hits: refreshes asked
            await _turns()
        gate.set()
        await eventually(lambda: _true(cache.get_stats()["early_refreshes"] >= 1), timeout=5)
        await _turns()
        assert loads[1] == 2
        assert cache.get_stats()["early_refreshes"] == 1
        await eventually(lambda: _equals(one(1), "1.2"), timeout=5)


async def _equals(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]
