"""Issue 20, item 3: the connection budget, counted on the server.

An idle instance holds at most two connections (the read pipe, which carries
commands too, and its subscription); a burst opens pool connections, which
are given back once the instance is idle again; the scripts are loaded once
per server, not on every connection. Counts, never times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier._redis import _SCRIPTS
from twotier.testing import RedisServer

from .conftest import CacheFactory, started_caches

IDLE_BUDGET = 2
PROBE = "probe"


async def _connections(raw: aioredis.Redis) -> int:
    """Client connections on the server, the probes' own excluded (a probe
    cancelled mid-command leaves its connection behind: counted by name)."""
    return sum(1 for client in await raw.client_list() if client["name"] != PROBE)


@pytest.fixture
async def probe(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url, client_name=PROBE)
    yield client
    await client.aclose()


async def _script_loads(raw: aioredis.Redis) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


async def test_idle_instances_hold_two_connections_and_load_scripts_once(
    server: RedisServer, probe: aioredis.Redis
) -> None:
    async with started_caches(server.url, 5, namespace="budget") as caches:
        await caches[0].set("k", {"v": 1}, tags=["t"])
        await caches[1].get("k")
        await caches[2].invalidate_tag("t")
        await asyncio.sleep(0.2)  # the listeners' first idle checks
        assert await _connections(probe) <= IDLE_BUDGET * len(caches)
        # Every script once (eleven), loaded by the first instance to meet
        # the server; the others find them there (60 per instance before:
        # every script on every connection).
        assert await _script_loads(probe) == len(_SCRIPTS)


async def test_a_burst_opens_pool_connections_and_idle_gives_them_back(
    make_cache: CacheFactory, probe: aioredis.Redis
) -> None:
    cache = await make_cache(heartbeat_interval=0.2)
    await cache.set("warm", 1)

    async def change(i: int) -> None:
        await cache.set(f"k{i}", i, tags=[f"t{i}"])
        await cache.invalidate_tag(f"t{i}")

    opened = 0
    burst_over = asyncio.Event()

    async def watch() -> None:
        # Stopped by an event, never cancelled: a cancellation landing inside
        # redis-py's command can be swallowed there, and the watcher then spun
        # on through the loop's shutdown until the test timed out (CI, once).
        nonlocal opened
        while not burst_over.is_set():
            opened = max(opened, await _connections(probe))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*(change(i) for i in range(200)))
    finally:
        burst_over.set()
        await watcher
    assert opened > IDLE_BUDGET  # the burst used the pool beside the pipe
    assert await cache.get("k7") is None  # read-your-writes through the pool too

    async def idle_again() -> bool:
        return await _connections(probe) <= IDLE_BUDGET

    await eventually(idle_again, timeout=5.0)


async def test_after_a_restart_an_idle_instance_reopens_its_pipe_not_the_pool(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    """An instance that only idles after a server restart (no read to reopen
    the pipe) sends its heartbeats and counter reads on the pipe again, not on
    a pool connection closed and reopened at every heartbeat tick."""
    cache = await make_cache(heartbeat_interval=0.1)
    await cache.set("k", 1)
    server.restart()
    await eventually(lambda: _available(cache), timeout=10.0)
    await asyncio.sleep(0.5)  # the first heartbeats and trims after recovery
    probe = aioredis.Redis.from_url(server.url, client_name=PROBE)
    try:
        opened = int((await probe.info("stats"))["total_connections_received"])
        await asyncio.sleep(1.0)  # ten heartbeat ticks
        again = int((await probe.info("stats"))["total_connections_received"])
        assert again - opened <= 1, again - opened  # 10 before: one per tick
        assert await _connections(probe) <= IDLE_BUDGET
    finally:
        await probe.aclose()


async def _available(cache: TwoTierCache) -> bool:
    return bool(cache.get_stats()["redis_available"])


async def test_after_every_connection_is_cut_an_instance_reopens_two_and_fails_nothing(
    server: RedisServer, make_cache: CacheFactory, probe: aioredis.Redis
) -> None:
    """What a restart or a failover does to a fleet's connections, without
    the data: every one cut at once (`CLIENT KILL`). The pipe's connection was
    closed by the server, and nobody had read from it yet: its first command,
    the listener's resync, used to fail on it. That counted a Redis failure
    on every instance, failed the resync and made the listener subscribe a
    second time, and the next commands took pool connections meanwhile: four
    connections, two subscriptions and one failure per instance, where two
    connections and one subscription will do (issue 20: a fleet of 1,000 was
    trusted again 5.0 s after the cut, 1.3 s with this)."""
    cache = await make_cache()
    await cache.set("k", 1)
    await asyncio.sleep(0.3)  # idle: the pool's connections given back
    failures = cache._link.guard.errors if cache._link else 0
    await probe.config_resetstat()
    for kind in ("normal", "pubsub"):
        await probe.execute_command("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")

    async def trusted_again() -> bool:
        link = cache._link
        return link is not None and link.listener.connected.is_set() and link.mirror.trusted

    await asyncio.sleep(0.05)
    await eventually(trusted_again, timeout=5.0)
    assert cache._link is not None
    assert cache._link.guard.errors == failures, cache.get_stats()["last_error"]
    opened = int((await probe.info("stats"))["total_connections_received"])
    assert opened == IDLE_BUDGET, opened  # the pipe and the subscription
    subscribes = (await probe.info("commandstats")).get("cmdstat_subscribe", {}).get("calls")
    assert subscribes == 1, subscribes
    assert await cache.get("k") == 1
