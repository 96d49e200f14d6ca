"""Coherence against real servers, beyond the shared contract (tests/contract.py):
L2-specific propagation under RESP3 and RESP2, and the O(1) cost of tag invalidation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

from .conftest import FLAVOURS, CacheFactory


async def _three(make_cache: CacheFactory, protocol: int) -> list[TwoTierCache]:
    return [await make_cache(protocol=protocol) for _ in range(3)]


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


@pytest.mark.parametrize("change", ["invalidate_tag", "delete", "clear"])
async def test_a_change_landing_while_an_l2_read_is_in_flight_is_honoured(
    make_cache: CacheFactory, change: str
) -> None:
    """A decorated function's L2 hit renders no tags (issue 8: no tag work
    before the read). A change that reaches the reader while its GET is on
    the way — the entry is read, not yet judged — must still win: the read
    is judged against the mirror that took the change (tags, clear), or its
    flight is revoked (the key). The call returns the value it was entitled
    to, and nothing stale stays in L1: the next call loads the new value."""
    reader, writer = await make_cache(), await make_cache()
    source = {"v": "old"}

    def define(cache: TwoTierCache):
        @cache.cached(ttl=60, tags=["articles", "category:{category}"])
        async def articles(category: str) -> str:
            return source["v"]

        return articles

    read, write = define(reader), define(writer)
    assert await write("news") == "old"  # in Redis
    remote = reader._shared.remote
    got_entry, go_on = asyncio.Event(), asyncio.Event()
    real_get = remote.get

    async def held_get(key: str) -> bytes | None:
        data = await real_get(key)  # the old entry, read
        got_entry.set()
        await go_on.wait()  # ...and held before it is judged
        return data

    remote.get = held_get  # type: ignore[method-assign]
    reading = asyncio.create_task(read("news"))
    await got_entry.wait()
    received = reader.get_stats()["invalidations_received"]
    source["v"] = "new"
    if change == "invalidate_tag":
        await writer.invalidate_tag("category:news")
    elif change == "delete":
        await writer.delete(write.key("news"))
    else:
        await writer.clear()
    await eventually(lambda: _at_least(reader, received + 1))  # the reader has the change
    remote.get = real_get  # type: ignore[method-assign]
    go_on.set()
    first = await reading
    assert first in ("old", "new")  # asked before the change was acknowledged
    assert await read("news") == "new"  # but nothing stale was kept
    assert reader.local.entries == 1


@pytest.mark.parametrize("awaited", [True, False])
async def test_an_own_invalidation_during_an_l2_read_is_read_back(
    make_cache: CacheFactory, awaited: bool
) -> None:
    """Read-your-writes across tasks of one instance: a read's entry is in
    flight when this instance invalidates its tag. The mirror takes the bump
    only when Redis has it, so the read must not put the old entry into L1
    (found by review: with tags rendered after the read, the flight did not
    know them, and the old value stayed in L1 until its TTL)."""
    cache = await make_cache()
    source = {"v": "old"}

    @cache.cached(ttl=60, tags=["category:{category}"])
    async def articles(category: str) -> str:
        return source["v"]

    assert await articles("news") == "old"
    cache.local.clear()  # evicted from L1; the entry is in Redis
    remote = cache._shared.remote
    real_get = remote.get
    got_entry, go_on = asyncio.Event(), asyncio.Event()

    async def held_get(key: str) -> bytes | None:
        data = await real_get(key)
        got_entry.set()
        await go_on.wait()
        return data

    remote.get = held_get  # type: ignore[method-assign]
    reading = asyncio.create_task(articles("news"))
    await got_entry.wait()
    remote.get = real_get  # type: ignore[method-assign]
    source["v"] = "new"
    invalidation = cache.invalidate_tag("category:news")  # applied here at once
    sending = asyncio.ensure_future(_awaited(invalidation)) if awaited else None
    await asyncio.sleep(0)  # (awaited: the script is on its way, its reply not in)
    go_on.set()  # the read judges its entry before Redis has confirmed the change
    await reading
    if sending is not None:
        await sending
    else:
        await invalidation
    assert await articles("news") == "new"


async def _awaited(invalidation: object) -> None:
    await invalidation  # type: ignore[misc]


async def _at_least(cache: TwoTierCache, received: int) -> bool:
    return cache.get_stats()["invalidations_received"] >= received


async def _equals(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]


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
    layout = Layout("o1")
    template = await raw.get(layout.entry("probe"))
    async with raw.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.set(layout.entry(f"{tag}:{i}"), template)
            if i % 5000 == 4999:
                await pipe.execute()
        await pipe.execute()


@pytest.mark.parametrize(
    ("extra_args", "credentials"),
    [
        (("--requirepass", "s3cret"), ":s3cret@"),
        (
            ("--user", "erp", "on", ">pw", "~*", "&*", "+@all", "--user", "default", "off"),
            "erp:pw@",
        ),
    ],
    ids=["password", "acl-user"],
)
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_auth_and_acl_users_work_by_url(
    flavour: str, extra_args: tuple[str, ...], credentials: str
) -> None:
    """DESIGN §5: AUTH and ACL users by URL — data, scripts and pub/sub all authenticate."""
    with RedisServer.start(flavour, extra_args=extra_args) as server:
        url = f"redis://{credentials}127.0.0.1:{server.port}/0"
        async with (
            TwoTierCache(redis_url=url, namespace="auth", redis_timeout=1) as a,
            TwoTierCache(redis_url=url, namespace="auth", redis_timeout=1) as b,
        ):
            assert a.redis_available
            assert b.redis_available
            await a.set("k", 1, tags=["t"])
            assert await b.get("k") == 1
            await a.invalidate_tag("t")
            await eventually(lambda: _equals(b.get("k"), None))


def _documented_acl_rules() -> list[str]:
    """The ACL SETUSER line of docs/configuration.md, as arguments."""
    page = Path(__file__).parents[1] / "docs" / "configuration.md"
    line = next(
        line for line in page.read_text().splitlines() if line.startswith("ACL SETUSER app ")
    )
    return line.split()[2:]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_the_documented_acl_rules_are_enough(flavour: str) -> None:
    """The least-privilege ACL rules docs/configuration.md gives for namespace
    `erp` let two instances do everything, with nothing refused."""
    with RedisServer.start(flavour) as server:
        admin = aioredis.Redis.from_url(server.url)
        try:
            await admin.execute_command("ACL", "SETUSER", *_documented_acl_rules())
        finally:
            await admin.aclose()
        url = f"redis://app:secret@127.0.0.1:{server.port}/0"
        async with (
            TwoTierCache(redis_url=url, namespace="erp", redis_timeout=1) as a,
            TwoTierCache(redis_url=url, namespace="erp", redis_timeout=1) as b,
        ):
            calls = 0

            async def load() -> int:
                nonlocal calls
                calls += 1
                return calls

            await a.set("k", 1, tags=["t"])
            assert await b.get("k") == 1
            assert await b.load("l", lambda: ("t",), 60, load, True) == 1
            assert await a.load("l", lambda: ("t",), 60, load, True) == 1  # an L2 hit
            await a.invalidate_tag("t")
            await eventually(lambda: _equals(b.get("k"), None))
            await b.delete("l")
            await a.warmup(["w1", "w2"], lambda key: key.upper())
            assert await b.get("w2") == "W2"
            await b.clear()
            await eventually(lambda: _equals(a.get("w1"), None))
            assert await a.ping() > 0
            for cache in (a, b):
                stats = cache.get_stats()
                assert stats["l2_errors"] == 0, stats["last_error"]
                assert stats["last_error"] is None, stats["last_error"]
                assert cache.redis_available
