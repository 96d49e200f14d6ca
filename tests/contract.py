"""The cache's contract, written once and run on every topology (STYLE.md 11):
in memory mode by tests/test_contract_memory.py, and against real Redis and
Valkey servers by integration/test_contract_redis.py.

A subclass provides the `trio` fixture: three started caches that share a
namespace (so they are coherent with each other) and no one else's.
"""

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from twotier import (
    CachedFunction,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    TwoTierCache,
)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> float:
    """Poll *check* until true; return how long it took. Fails the test after *timeout*."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        if loop.time() - start > timeout:
            pytest.fail(f"condition not reached within {timeout}s")
        await asyncio.sleep(0.001)
    return loop.time() - start


class SlowSource:
    """The source behind a slow loader, staging the race every no-stale-set test
    needs: each load reads the current value, says it has started, and returns
    what it read once the test releases it."""

    def __init__(self, value: Any = "old") -> None:
        self.value = value
        self.loads = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def load(self) -> Any:
        self.loads += 1
        seen = self.value  # read before the change...
        self.started.set()
        await self.release.wait()
        return seen  # ...returned after it

    def loader(
        self, cache: TwoTierCache, key: str = "row", tags: Iterable[str] = (), ttl: float = 60
    ) -> CachedFunction[[], Any]:
        """*cache*'s decorated loader of this source, under *key*."""
        return cache.cached(ttl=ttl, key=key, tags=list(tags))(self.load)


class CacheContract:
    async def test_changes_reach_every_instance(self, trio: list[TwoTierCache]) -> None:
        a, b, _ = trio
        version = {"n": 0}

        def define(cache: TwoTierCache):  # the same API module, imported by three servers
            @cache.cached(ttl=60, tags=["articles", "category:{category}"])
            async def articles(category: str) -> dict[str, int]:
                return {"version": version["n"]}

            return articles

        fa, fb, fc = (define(x) for x in trio)

        async def everyone_sees(n: int) -> float:
            async def check() -> bool:
                return [await f("news") for f in (fa, fb, fc)] == [{"version": n}] * 3

            return await eventually(check)

        await everyone_sees(0)
        version["n"] = 1
        a.invalidate_tag("category:news")  # seed style: not awaited, still effective everywhere
        assert await fa("news") == {"version": 1}  # here at once, elsewhere over the bus
        await everyone_sees(1)
        version["n"] = 2
        await b.clear()
        await everyone_sees(2)
        version["n"] = 3
        await fc.invalidate("news")  # the key of one call, on every instance
        await everyone_sees(3)

    async def test_cached_none_is_a_hit(self, trio: list[TwoTierCache]) -> None:
        cache = trio[0]
        calls = 0

        @cache.cached(ttl=60)
        async def nothing(x: int) -> None:
            nonlocal calls
            calls += 1

        assert await nothing(1) is None
        assert await nothing(1) is None
        assert calls == 1
        assert cache.get_stats()["hits"] == 1

    async def test_read_your_writes_without_waiting(self, trio: list[TwoTierCache]) -> None:
        cache = trio[0]
        await cache.set("k", 1, tags=["t"])
        assert await cache.get("k") == 1
        await cache.set("k", 2)
        assert await cache.get("k") == 2
        await cache.delete("k")
        assert await cache.get("k", "gone") == "gone"

    async def test_slow_loader_racing_a_tag_invalidation_is_not_cached(
        self, trio: list[TwoTierCache]
    ) -> None:
        a, b, _ = trio
        source = SlowSource(10)
        price = source.loader(a, key="price:1", tags=["item:1"])
        slow = asyncio.create_task(price())
        await source.started.wait()
        source.value = 20
        await b.invalidate_tag("item:1")
        source.release.set()
        assert await slow == 10  # the caller that asked before the update gets the old value
        assert a.get_stats()["stale_sets_refused"] == 1
        c_price = source.loader(trio[2], key="price:1", tags=["item:1"])
        assert await c_price() == 20  # not in L2 (or any shared tier) for the others
        assert await price() == 20  # nor in a's L1: the next call loads again

    async def test_slow_loader_racing_a_key_delete_is_not_cached(
        self, trio: list[TwoTierCache]
    ) -> None:
        a, b, _ = trio
        source = SlowSource()
        doc = source.loader(a, key="doc:7")
        slow = asyncio.create_task(doc())
        await source.started.wait()
        source.value = "new"
        await b.delete("doc:7")
        source.release.set()
        assert await slow == "old"
        assert await b.get("doc:7") is None  # the revoked loader stored nothing for the others
        assert await doc() == "new"
        assert await b.get("doc:7") in (None, "new")  # None in memory mode: no shared tier

    async def test_slow_loader_racing_a_set_of_its_key_is_not_cached(
        self, trio: list[TwoTierCache]
    ) -> None:
        """A set revokes the fill lease of a load already running: the loader's
        (older) result lands neither in the shared tier nor in the loader's L1."""
        a, b, c = trio
        source = SlowSource()
        doc = source.loader(a, key="doc:7")
        slow = asyncio.create_task(doc())
        await source.started.wait()
        source.value = "new"
        await b.set("doc:7", "new")
        source.release.set()
        assert await slow == "old"  # its caller asked before the set
        shared = None if c.redis_url is None else "new"  # memory mode has no shared tier
        assert await c.get("doc:7") == shared  # L2 holds the set's value, not the load's
        assert await doc() == "new"  # a's L1 did not keep the load's result either
        assert a.get_stats()["stale_sets_refused"] == 1

    async def test_every_clear_clears(self, trio: list[TwoTierCache]) -> None:
        """Entries written after a clear are gone after the next one, on every instance."""
        a, b, c = trio
        version = {"n": 0}

        def define(cache: TwoTierCache):
            @cache.cached(ttl=60, tags=["t"])
            async def value() -> int:
                return version["n"]

            return value

        loaders = [define(x) for x in trio]

        async def everyone_sees(n: int) -> None:
            async def check() -> bool:
                return [await f() for f in loaders] == [n] * 3

            await eventually(check)

        async def nobody_has(key: str) -> None:
            async def check() -> bool:
                return [await x.get(key, "gone") for x in trio] == ["gone"] * 3

            await eventually(check)

        await everyone_sees(0)
        for n, clearer in enumerate((b, b, c, a), start=1):  # twice in a row from b
            await clearer.set(f"k{n}", n)
            # now in a's L1 too, unless there is no shared tier to read it from
            assert await a.get(f"k{n}") == (n if a.redis_url or clearer is a else None)
            version["n"] = n
            await clearer.clear()
            await everyone_sees(n)
            await nobody_has(f"k{n}")

    async def test_caller_after_invalidation_does_not_join_the_old_load(
        self, trio: list[TwoTierCache]
    ) -> None:
        a = trio[0]
        source = SlowSource(1)
        value = source.loader(a, key="value", tags=["t"])
        first = asyncio.create_task(value())
        await source.started.wait()  # the first load has read the old source
        source.started.clear()
        source.value = 2
        await a.invalidate_tag("t")
        second = asyncio.create_task(value())
        # Hold the first load until the second caller has either joined it or
        # begun a load of its own (with Redis, it first waits for the fill
        # lease the first load still holds): only then can the outcome tell.
        await eventually(lambda: _is(source.started.is_set() or _joined_or_waiting(a)))
        source.release.set()
        assert (await first, await second) == (1, 2)
        assert a.get_stats()["joined_loads"] == 0

    async def test_concurrent_misses_run_the_loader_once(self, trio: list[TwoTierCache]) -> None:
        a = trio[0]
        calls = itertools.count()
        gate = asyncio.Event()

        @a.cached(ttl=60)
        async def slow(x: int) -> int:
            next(calls)
            await gate.wait()
            return x * 2

        misses = asyncio.gather(*(slow(21) for _ in range(50)))
        # The load is held until every other caller has joined it.
        await eventually(lambda: _is(a.get_stats()["joined_loads"] == 49))
        gate.set()
        assert await misses == [42] * 50
        assert next(calls) == 1

    async def test_loader_error_is_shared_and_not_cached(self, trio: list[TwoTierCache]) -> None:
        a = trio[0]
        attempts = itertools.count()
        fail = asyncio.Event()

        @a.cached(ttl=60)
        async def flaky() -> str:
            if next(attempts) == 0:
                await fail.wait()
                raise RuntimeError("db down")
            return "ok"

        both = asyncio.gather(flaky(), flaky(), return_exceptions=True)
        await eventually(lambda: _is(a.get_stats()["joined_loads"] == 1))  # the second joined
        fail.set()
        results = await both
        assert [type(r) for r in results] == [RuntimeError, RuntimeError]
        assert await flaky() == "ok"
        assert next(attempts) == 2  # one failed run, shared; one good run after it

    async def test_cancelled_leader_does_not_fail_its_waiters(
        self, trio: list[TwoTierCache]
    ) -> None:
        a = trio[0]
        started, gate = asyncio.Event(), asyncio.Event()

        @a.cached(ttl=60)
        async def value() -> str:
            started.set()
            await gate.wait()
            return "v"

        leader = asyncio.create_task(value())
        await started.wait()  # the leader is inside its loader
        waiter = asyncio.create_task(value())
        await eventually(lambda: _is(a.get_stats()["joined_loads"] == 1))  # and joined by one
        leader.cancel()
        await asyncio.wait([leader])
        assert leader.cancelled()
        gate.set()  # from here on, a load the waiter starts itself completes
        assert await asyncio.wait_for(waiter, timeout=5) == "v"

    async def test_values_from_l1_are_copies_unless_immutable(
        self, trio: list[TwoTierCache]
    ) -> None:
        a = trio[0]

        @a.cached(ttl=60)
        async def rows() -> list[dict[str, int]]:
            return [{"n": 1}]

        first = await rows()
        first[0]["n"] = 99  # a caller mutating its result...
        assert await rows() == [{"n": 1}]  # ...does not change what others get

        @a.cached(ttl=60, copy_on_read=False)
        async def shared() -> list[int]:
            return [1]

        assert await shared() is await shared()

    async def test_bad_input_raises_and_changes_nothing(self, trio: list[TwoTierCache]) -> None:
        a = trio[0]
        await a.set("k", "v", tags=["t"])
        before = a.get_stats()
        with pytest.raises(SerializationError):
            await a.set("k", object())
        with pytest.raises(InvalidTTLError):
            await a.set("k", "w", ttl=-1)
        with pytest.raises(InvalidKeyError):
            await a.set("k", "w", tags=["bad\ntag"])
        with pytest.raises(InvalidKeyError):
            a.invalidate_tag("")
        assert await a.get("k") == "v"
        assert a.get_stats()["sets"] == before["sets"]

    async def test_stats_have_the_seed_keys(self, trio: list[TwoTierCache]) -> None:
        a = trio[0]

        @a.cached(ttl=60, tags=["articles", "category:{c}"])
        async def f(c: str) -> str:
            return c

        for c in ["a", "a", "a", "b"]:
            await f(c)
        stats = a.get_stats()
        for key in (
            "hits",
            "misses",
            "sets",
            "deletes",
            "tag_invalidations",
            "hit_rate",
            "entries",
            "tags",
            "l1_hits",
            "l2_hits",
            "l2_errors",
            "invalidations_received",
            "resyncs",
            "redis_available",
        ):
            assert key in stats
        assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (2, 2, 50.0)
        assert stats["sets"] == 2  # as in the seed: every value cached counts as a set
        assert (stats["entries"], stats["tags"]) == (2, 3)

    async def test_warmup_with_sync_and_async_loaders(self, trio: list[TwoTierCache]) -> None:
        a = trio[0]

        def sync_loader(key: str) -> dict[str, int] | None:
            n = int(key.split(":")[1])
            return {"id": n} if n <= 8 else None  # None: nothing to cache

        async def async_loader(key: str) -> str:
            return key.upper()

        filled = await a.warmup([f"article:{i}" for i in range(1, 11)], sync_loader, concurrency=3)
        assert filled == 8
        assert await a.get("article:8") == {"id": 8}
        assert await a.get("article:9") is None
        assert await a.warmup(["x", "y"], async_loader) == 2
        assert await a.get("y") == "Y"


async def _is(value: bool) -> bool:
    return value


def _joined_or_waiting(cache: TwoTierCache) -> bool:
    stats = cache.get_stats()
    return stats["joined_loads"] > 0 or stats["lease_waits"] > 0
