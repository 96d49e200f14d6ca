"""Reads racing changes of their key (issue 17, cases 1–3), on a real server.

The rule (docs/coherence.md, guarantee 1): a read whose L2 reply may predate a
change of its key — this instance's or another's, applied while the read was
in flight — returns it but never keeps it in L1; and a read that starts while
one of this instance's own changes of the key is on its way to Redis waits
for it first, so it never reads back, and keeps, what was just changed.

Each race is made deterministic by holding one call of the Redis tier (a
latency spike at exactly that point) while the change runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from twotier import TwoTierCache

from .conftest import CacheFactory


@asynccontextmanager
async def held(cache: TwoTierCache, method: str) -> AsyncIterator[asyncio.Event]:
    """Hold the next call of the Redis tier's *method* after Redis answered it
    (or, for a change, before it is sent) until the yielded event is set."""
    remote: Any = cache._shared.remote
    original = getattr(remote, method)
    release = asyncio.Event()
    reached = asyncio.Event()
    calls = 0

    async def slow(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            return await original(*args, **kwargs)
        if method == "get":
            reply = await original(*args, **kwargs)  # the old entry, read now
            reached.set()
            await release.wait()
            return reply
        reached.set()
        await release.wait()  # the change is on its way, not yet in Redis
        return await original(*args, **kwargs)

    setattr(remote, method, slow)
    try:
        release.reached = reached  # type: ignore[attr-defined]
        yield release
    finally:
        setattr(remote, method, original)


async def reached(release: asyncio.Event) -> None:
    await asyncio.wait_for(release.reached.wait(), 5)  # type: ignore[attr-defined]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_a_get_racing_a_set_on_its_instance_keeps_no_old_value(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache()
    await cache.set("k", "v1")
    cache.local.clear()  # the next get reads L2
    async with held(cache, "get") as release:
        reading = asyncio.create_task(cache.get("k"))
        await reached(release)  # the read has the old entry in hand
        await cache.set("k", "v2")  # completes while the read is in flight
        release.set()
        await reading  # v1 or v2: concurrent with the set
    # Before the fix the read stored v1 over v2: read-your-writes broken until the TTL.
    assert await cache.get("k") == "v2"


@pytest.mark.parametrize("change", ["set", "delete"])
async def test_a_get_racing_another_instances_change_keeps_no_old_value(
    make_cache: CacheFactory, change: str
) -> None:
    reader, writer = await make_cache(), await make_cache()
    await writer.set("k", "v1")
    async with held(reader, "get") as release:
        reading = asyncio.create_task(reader.get("k"))
        await reached(release)
        if change == "set":
            await writer.set("k", "v2")
        else:
            await writer.delete("k")
        before = reader.counters.invalidations_received
        await eventually(lambda: _async(reader.counters.invalidations_received > before))
        release.set()  # the old reply arrives after the change was applied here
        await reading
    assert await reader.get("k") == ("v2" if change == "set" else None)


@pytest.mark.parametrize("change", ["delete", "clear", "fn.invalidate"])
async def test_a_read_during_its_instances_own_change_does_not_read_it_back(
    make_cache: CacheFactory, change: str
) -> None:
    cache = await make_cache()
    loads = 0

    @cache.cached(ttl=60)
    async def row(n: int) -> str:
        nonlocal loads
        loads += 1
        return f"load {loads}"

    assert await row(1) == "load 1"
    await cache.set("k", "v1")
    method = {"delete": "delete", "clear": "clear", "fn.invalidate": "delete"}[change]
    async with held(cache, method) as release:
        changing = asyncio.create_task(
            cache.delete("k")
            if change == "delete"
            else cache.clear()
            if change == "clear"
            else row.invalidate(1)
        )
        await reached(release)  # applied here, on its way to Redis
        read_key = asyncio.create_task(cache.get("k"))
        read_row = asyncio.create_task(row(1))
        await asyncio.sleep(0.05)  # the reads are under way (or waiting for the change)
        release.set()
        await changing
        await asyncio.gather(read_key, read_row)
    # Before the fix the reads took the old entries from L2 and kept them in L1.
    if change != "fn.invalidate":
        assert await cache.get("k") is None
    if change != "delete":
        assert await row(1) != "load 1"


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize("invalidate", ["fn.invalidate", "invalidate_tag"])
async def test_callers_of_a_cancelled_load_are_all_revoked_by_an_invalidation(
    make_cache: CacheFactory, invalidate: str
) -> None:
    """Found by the model checker: when a load's leader was cancelled, each of
    its callers began a flight of its own, the last replacing the others in
    the registry; an invalidation then revoked only that one, and another kept
    its outdated result in L1. (Values over `max_value_size` live in L1 only:
    no fill in Redis, whose lease would refuse the outdated one, guards them.)"""
    cache = await make_cache(max_value_size=64)
    db = {"value": "old" * 100}
    gate = asyncio.Event()
    started = 0

    @cache.cached(ttl=60, tags=["row:{n}"])
    async def row(n: int) -> str:
        nonlocal started
        started += 1
        seen = db["value"]
        await gate.wait()
        return seen

    leader = asyncio.create_task(row(1))
    await eventually(lambda: _async(started == 1))
    joiners = [asyncio.create_task(row(1)) for _ in range(2)]
    await asyncio.sleep(0.01)  # both joined the leader's load
    leader.cancel()
    await eventually(lambda: _async(started >= 2))  # they load again, having read "old"
    await asyncio.sleep(0.01)
    db["value"] = "new" * 100
    if invalidate == "fn.invalidate":
        await row.invalidate(1)
    else:
        await cache.invalidate_tag("row:1")
    gate.set()
    await asyncio.gather(*joiners)  # concurrent with the change: either value
    assert await row(1) == "new" * 100
