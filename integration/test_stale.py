"""Issue 7, "Lost invalidations and entries that come back": stale data after
a restore from an older snapshot, under `maxmemory`, and with thousands of tags.

The source of truth in each test is a plain dict: a read is stale when it
returns a value that the source had already replaced when the change was
acknowledged.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from tests.contract import eventually
from twotier import TwoTierCache
from twotier._redis import Layout
from twotier._topology import Bus
from twotier.testing import RedisServer

from ._proxy import ChaosProxy
from .conftest import FLAVOURS

FAST = {"redis_timeout": 0.5, "health_interval": 0.2, "max_stale": 1.0}


def _api(cache: TwoTierCache, source: dict[int, int]):  # one key per row
    @cache.cached(ttl=300, tags=["rows", "row:{id}"])
    async def row(id: int) -> int:
        return source[id]

    return row


# -- item 4: a restore from an older snapshot ------------------------------------


async def test_a_restore_from_an_older_snapshot_brings_nothing_back(server: RedisServer) -> None:
    source = {1: 0, 2: 0}
    raw = aioredis.Redis.from_url(server.url)
    async with TwoTierCache(redis_url=server.url, namespace="r", **FAST) as cache:
        row = _api(cache, source)
        assert (await row(1), await row(2)) == (0, 0)  # cached in L1 and Redis
        await raw.save()  # the snapshot: entries valid under the versions of now
        snapshot = Path(server.dir) / "dump.rdb"
        saved = snapshot.with_name("old.rdb")
        shutil.copy(snapshot, saved)
        source[1] = 1
        await cache.invalidate_tag("row:1")  # acknowledged: row 1 is 1 from now on
        assert await row(1) == 1
        await raw.aclose()
        server.kill()
        shutil.copy(saved, snapshot)  # Redis comes back from the older snapshot
        server.launch()
        assert await raw.dbsize() > 0  # the old entries really are back in Redis

        async def recovered() -> bool:
            return cache.redis_available

        await eventually(recovered, timeout=10)
        assert await row(1) == 1  # not the entry the snapshot brought back
        # a fresh instance, which never saw the invalidation, must not serve it either
        async with TwoTierCache(redis_url=server.url, namespace="r", **FAST) as fresh:
            assert await _api(fresh, source)(1) == 1
    await raw.aclose()


async def test_a_connection_meets_a_restored_server_before_its_first_control_call(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guarantee 9 where the listener cannot help: an instance whose
    subscription never comes up (so no resync meets the server) reads an entry
    the restore brought back. Its version read goes over a connection that met
    the restored server when it opened, so the entry is judged under a new
    generation, not under the versions the snapshot brought back. (Control
    scripts skip the run-id check on a single server and Sentinel: each
    connection made it when it opened.)"""
    source = {1: 0, 2: 0}
    raw = aioredis.Redis.from_url(server.url)
    async with TwoTierCache(redis_url=server.url, namespace="r", **FAST) as cache:
        row = _api(cache, source)
        assert (await row(1), await row(2)) == (0, 0)
        await raw.save()
        snapshot = Path(server.dir) / "dump.rdb"
        saved = snapshot.with_name("old.rdb")
        shutil.copy(snapshot, saved)
        source[1] = 1
        await cache.invalidate_tag("row:1")
    await raw.aclose()
    server.kill()
    shutil.copy(saved, snapshot)
    server.launch()

    async def never(*args: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Bus, "subscription", never)  # no listener, no resync
    quick = {"redis_timeout": 0.1, "connect_timeout": 0.2, "health_interval": 0.2}
    async with TwoTierCache(redis_url=server.url, namespace="r", **quick) as blind:
        assert not blind.redis_available  # running without its invalidation link
        assert await blind.get(_api(blind, source).key(1)) is None  # not the restored entry


async def test_a_version_read_meets_the_server_even_on_a_connection_that_met_it(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection can outlive the dataset behind it: a proxy that keeps client
    connections across a failover (Azure's Enterprise clustering policy, Redis
    Enterprise, Envoy), a live REPLICAOF. The scripts that only change versions
    skip the run-id check on such a connection; the version read, which judges
    entries, never does. Here the server's recorded run is replaced under open
    connections, as a promoted replica behind a proxy would present it."""
    source = {1: 0}
    async with TwoTierCache(redis_url=server.url, namespace="r", **FAST) as cache:
        row = _api(cache, source)
        assert await row(1) == 0  # in Redis
        key = row.key(1)

    async def never(*args: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Bus, "subscription", never)  # no listener: entries judged by reads
    quick = {"redis_timeout": 0.1, "connect_timeout": 0.2, "health_interval": 0.2}
    async with TwoTierCache(redis_url=server.url, namespace="r", **quick) as blind:
        assert await blind.get(key) == 0  # its connections are open and met the server
        raw = aioredis.Redis.from_url(server.url)
        try:
            await raw.set(Layout("r").epoch, "another server run")
        finally:
            await raw.aclose()
        assert await blind.get(key) is None  # a new generation: the entry is no more


async def test_a_master_demoted_and_promoted_again_brings_nothing_back(
    server: RedisServer,
) -> None:
    """Issue 21, case 1: a master stalls (a VM pause), its replica is promoted and
    acknowledges invalidations, then dies before the old master synced; the old
    master is taken back. Its run id is the recorded one, but what it holds may
    predate acknowledged changes: its promotion gave it a new replication id,
    and that starts a new generation. Here the demotion and promotion are made
    by hand (REPLICAOF a port nobody answers, then NO ONE), the lost
    invalidation by a change of the source no instance was told of."""
    source = {1: 0}
    async with TwoTierCache(redis_url=server.url, namespace="r", **FAST) as cache:
        row = _api(cache, source)
        assert await row(1) == 0  # in Redis, under the generation of this run
    source[1] = 1  # invalidated on the replica that was lost with it
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.execute_command("REPLICAOF", "127.0.0.1", "1")  # demoted: nobody there
        await raw.execute_command("REPLICAOF", "NO", "ONE")  # taken back as master
    finally:
        await raw.aclose()
    async with TwoTierCache(redis_url=server.url, namespace="r", **FAST) as fresh:
        # Before the fix the old entry was judged current: 0, until its TTL.
        assert await _api(fresh, source)(1) == 1


# -- item 5: maxmemory with noeviction ---------------------------------------------


@pytest.fixture(params=FLAVOURS)
def full_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    args = ("--maxmemory", "3mb", "--maxmemory-policy", "noeviction")
    with RedisServer.start(request.param, extra_args=args) as srv:
        yield srv


async def _fill_until_full(url: str) -> None:
    raw = aioredis.Redis.from_url(url)
    try:
        for i in range(10_000):
            try:
                await raw.set(f"ballast:{i}", b"x" * 50_000)
            except OutOfMemoryError:
                return
        pytest.fail("the server never reported OOM")
    finally:
        await raw.aclose()


async def test_invalidations_reach_every_instance_while_redis_is_full(
    full_server: RedisServer,
) -> None:
    source = {n: 0 for n in range(10)}
    async with (
        TwoTierCache(redis_url=full_server.url, namespace="m", **FAST) as writer,
        TwoTierCache(redis_url=full_server.url, namespace="m", **FAST) as reader,
    ):
        row_w, row_r = _api(writer, source), _api(reader, source)
        for n in source:
            assert (await row_w(n), await row_r(n)) == (0, 0)
        await _fill_until_full(full_server.url)
        for n in source:  # every change a new number; none may be mistaken for an old one
            source[n] = 1
            await writer.invalidate_tag(f"row:{n}")
            assert await row_w(n) == 1  # read-your-writes on the writer

            async def seen(n: int = n) -> bool:
                return await row_r(n) == 1

            await eventually(seen, timeout=2)
        assert reader.get_stats()["l1_clears"] == 0  # told change by change, not wiped


async def test_the_cache_does_not_write_past_maxmemory(full_server: RedisServer) -> None:
    raw = aioredis.Redis.from_url(full_server.url)
    try:
        async with TwoTierCache(redis_url=full_server.url, namespace="m", **FAST) as cache:
            for i in range(300):  # 30 MB of values under a 3 MB limit
                await cache.set(f"big:{i}", b"y" * 100_000)
            assert await cache.get("big:299") == b"y" * 100_000  # this instance keeps it
            info = await raw.info("memory")
        assert info["used_memory"] < 2 * info["maxmemory"], info["used_memory_human"]
    finally:
        await raw.aclose()


async def test_a_full_redis_still_serves_reads(full_server: RedisServer) -> None:
    async with TwoTierCache(redis_url=full_server.url, namespace="m", **FAST) as writer:
        await writer.set("kept", "value")
        await _fill_until_full(full_server.url)
        async with TwoTierCache(redis_url=full_server.url, namespace="m", **FAST) as reader:
            assert await reader.get("kept") == "value"
            assert reader.get_stats()["l2_hits"] == 1


# -- item 6: thousands of tags in one call -------------------------------------------


async def test_invalidating_thousands_of_tags_at_once(make_cache) -> None:
    writer, reader = await make_cache(), await make_cache()
    tags = [f"item:{n}" for n in range(5_000)]
    await writer.set("last", "old", tags=[tags[-1]])
    assert await reader.get("last") == "old"
    await writer.invalidate_tags(tags)
    assert await writer.get("last") is None  # not read back from Redis

    async def gone() -> bool:
        return await reader.get("last") is None

    await eventually(gone)
    assert writer.get_stats()["queued_ops_pending"] == 0


async def test_an_outage_queue_of_thousands_of_tags_is_delivered(server: RedisServer) -> None:
    """One instance is cut off while Redis keeps its data; it queues 8,000 tag
    invalidations, and they reach the instance that stayed connected."""
    proxy = ChaosProxy(server.port)
    await proxy.start()
    try:
        async with (
            TwoTierCache(redis_url=proxy.url, namespace="q", **FAST) as cut,
            TwoTierCache(redis_url=server.url, namespace="q", **FAST) as stayed,
        ):
            await stayed.set("e", "old", tags=["item:7777"])
            assert await cut.get("e") == "old"
            proxy.blackhole = True
            for n in range(8_000):
                cut.invalidate_tag(f"item:{n}")
            await asyncio.sleep(0)

            async def queued() -> bool:
                return cut.get_stats()["queued_ops_pending"] >= 8_000

            await eventually(queued, timeout=10)
            assert await stayed.get("e") == "old"  # nobody could tell it yet
            proxy.blackhole = False

            async def delivered() -> bool:
                return cut.get_stats()["queued_ops_pending"] == 0

            await eventually(delivered, timeout=10)

            async def gone() -> bool:
                return await stayed.get("e") is None

            await eventually(gone)
    finally:
        await proxy.close()
