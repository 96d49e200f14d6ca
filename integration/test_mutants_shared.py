"""The L2 side of a read (`_shared.py`) on a real server.

Written for the mutation run (.ci/mutation.py, module `shared`); each test
names in its docstring the mutants it kills (ids from `--list`). The same
paths with a remote tier kept in a dict (failures, lost replies, the lease
release's retries on a clock moved by hand) are in tests/test_mutants_shared.py.
"""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from integration.conftest import CacheFactory
from twotier._redis import Layout

NS = "sh"


async def test_a_tagged_load_records_the_compaction_horizon_in_redis(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Before a tagged load, Redis learns how long its entry may live, lease time
    included; a longer lifetime raises it, a shorter one leaves it.
    Kills: shared-347d63, shared-16cbd1 (never recorded)."""
    cache = await make_cache(namespace=NS, lease_ttl=5)

    async def load() -> int:
        return 1

    async def horizon() -> int:
        return int(await raw.hget(Layout(NS).tags, "\x1fhorizon") or 0)

    await cache.cached(ttl=100, key="a", tags=["t"])(load)()
    assert await horizon() == 105_000
    await cache.cached(ttl=30, key="b", tags=["t"])(load)()
    assert await horizon() == 105_000
    await cache.cached(ttl=200, key="c", tags=["t"])(load)()
    assert await horizon() == 205_000


async def test_foreign_data_in_redis_is_counted_logged_and_deleted(
    make_cache: CacheFactory, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Kills: shared-c5fb49, shared-da6c11, shared-7a390b, shared-8e0799,
    shared-a67f93, shared-4e30a7, shared-3643b8 (see the unit test of the same
    name in tests/test_mutants_shared.py)."""
    cache = await make_cache(namespace=NS)
    entry = Layout(NS).entry("k")
    await raw.set(entry, b"written by someone else")
    with caplog.at_level(logging.WARNING, logger="twotier"):
        assert await cache.get("k", "default") == "default"
    assert cache.get_stats()["garbage_entries"] == 1
    assert any("'k' is not readable" in r.getMessage() for r in caplog.records)
    assert not await raw.exists(entry)
