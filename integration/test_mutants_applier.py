"""How changes are applied to an instance (`_applier.py`), on a real server.

Written for the mutation run (.ci/mutation.py, module `applier`); each test
names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier.testing import FakeClock, RedisServer

from .conftest import started_caches

FAST = {"redis_timeout": 0.1, "health_interval": 0.1}


@pytest.fixture
async def pair(server: RedisServer) -> AsyncIterator[list[TwoTierCache]]:
    """Two started instances of one namespace on *server*, closed at the end."""
    async with started_caches(server.url, 2, namespace="ap", lease_ttl=60, **FAST) as caches:
        yield caches


async def test_with_redis_down_l1_serves_an_entry_for_max_stale_seconds_only(
    server: RedisServer,
) -> None:
    """Redis killed: nobody can tell this instance about changes any more, so an
    L1 entry with a minute to live is served for `max_stale` seconds, then missed.
    Kills: applier-263541 (the clock not kept), applier-e2337e (expiries not capped)."""
    clock = FakeClock()
    cache = TwoTierCache(redis_url=server.url, namespace="ap", clock=clock, max_stale=5, **FAST)
    await cache.start()
    try:
        await cache.set("k", "v", ttl=60)
        assert await cache.get("k") == "v"
        server.kill()

        async def breaker_open() -> bool:
            await cache.get("another key")  # an L2 read: its failures open the breaker
            return cache.get_stats()["breaker_state"] == "open"

        await eventually(breaker_open, timeout=10)
        clock.advance(4)
        assert await cache.get("k") == "v"  # within max_stale: L1 still serves
        clock.advance(2)
        assert await cache.get("k", "gone") == "gone"  # past max_stale, though its ttl is not
    finally:
        await cache.close()


@pytest.mark.parametrize("change", ["delete", "set", "tag", "clear"])
async def test_another_instances_change_reaches_this_instances_l1(
    pair: list[TwoTierCache], change: str
) -> None:
    """Each kind of change, made by one instance, evicts the other's L1 copy."""
    a, b = pair
    await a.set("k", "old", ttl=60, tags=["t"])
    assert await b.get("k") == "old"  # now in b's L1
    if change == "delete":
        await a.delete("k")
    elif change == "set":
        await a.set("k", "new", ttl=60, tags=["t"])
    elif change == "tag":
        await a.invalidate_tag("t")
    else:
        await a.clear()
    expected = "new" if change == "set" else None

    async def seen() -> bool:
        return await b.get("k") == expected

    await eventually(seen, timeout=5)


async def test_a_change_of_a_key_wakes_the_callers_waiting_on_its_fill_lease(
    pair: list[TwoTierCache],
) -> None:
    """B waits on A's lease while A's loader runs; a change of the key ends that
    wait at once (B reads the new value), not the lease's end a minute later.
    Kills: applier-b5c314 (lease waiters not woken by a key change)."""
    a, b = pair
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "loaded"

    async def fast() -> str:
        return "b's own"

    tasks: list[asyncio.Future[str]] = []
    try:
        leader = asyncio.ensure_future(a.cached(ttl=60, key="k")(slow)())
        tasks.append(leader)
        await eventually(lambda: _true(a.get_stats()["loads"] == 1), timeout=5)
        waiter = asyncio.ensure_future(b.cached(ttl=60, key="k")(fast)())
        tasks.append(waiter)
        await eventually(lambda: _true(b.get_stats()["lease_waits"] == 1), timeout=5)
        await a.set("k", "new", ttl=60)
        await eventually(lambda: _true(waiter.done()), timeout=10)
        assert waiter.result() == "new"
        assert not leader.done()
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("change", ["tag", "clear"])
async def test_another_instances_invalidation_outdates_the_l2_entries_this_one_knew(
    pair: list[TwoTierCache], change: str
) -> None:
    """B has read an entry tagged `t` from L2 (so its version mirror knows `t`
    and the generation); A invalidates `t`, or clears. The old entry is still
    in Redis, and B must judge it outdated by the version or the generation the
    message carried (nothing after it sets B's mirror right), and load anew.
    Kills: applier-ed4874 (a tag message's versions not mirrored),
    applier-eb7760 (`kind == "c"` flipped: the clear never reaches the mirror)."""
    a, b = pair
    source = {"value": "old"}

    async def load() -> str:
        return source["value"]

    fa = a.cached(ttl=60, key="k", tags=["t"])(load)
    fb = b.cached(ttl=60, key="k", tags=["t"])(load)
    assert await fa() == "old"
    assert await fb() == "old"  # from L2, judged by B's mirror
    source["value"] = "new"
    if change == "tag":
        await a.invalidate_tag("t")
    else:
        await a.clear()

    async def fresh() -> bool:
        return await fb() == "new"

    await eventually(fresh, timeout=5)


async def test_while_the_invalidation_link_is_down_and_redis_answers_l1_is_not_served(
    server: RedisServer, pair: list[TwoTierCache]
) -> None:
    """B's subscription is cut and cannot come back (subscribing is refused), while
    Redis still answers commands: B may miss changes, so it serves from L2, which
    judges every entry, not from L1. A's invalidation meanwhile reaches B's reads.
    Kills: applier-1d9725 (L1 not suspended)."""
    a, b = pair
    raw = aioredis.Redis.from_url(server.url)
    source = {"value": "old"}

    async def load() -> str:
        return source["value"]

    try:
        fa = a.cached(ttl=60, key="k", tags=["t"])(load)
        fb = b.cached(ttl=60, key="k", tags=["t"])(load)
        assert (await fa(), await fb()) == ("old", "old")  # in B's L1 now
        await raw.execute_command(
            "ACL", "SETUSER", "default", "-subscribe", "-ssubscribe", "-psubscribe"
        )
        await raw.client_kill_filter(_type="pubsub")
        source["value"] = "new"
        await a.invalidate_tag("t")  # B cannot hear of it

        async def fresh() -> bool:
            return await fb() == "new"

        await eventually(fresh, timeout=5)
    finally:
        await raw.execute_command("ACL", "SETUSER", "default", "+@all")
        await raw.aclose()
