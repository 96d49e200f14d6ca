"""Changes made while cut off from Redis are delivered late, to a Redis that kept its data.

The outage tests of test_faults.py restart Redis empty: every instance then
wipes its L1 and nothing old is left in L2, so a queued change that was never
delivered goes unnoticed there. Here only one instance (`a`, through a proxy)
loses Redis; Redis and the other instance (`b`, connected all along) keep the
old entries, in L2 and in b's L1. Only a's queued changes, delivered once it is
back, can make b stop returning them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.contract import eventually
from twotier import TwoTierCache
from twotier.testing import RedisServer

from ._proxy import ChaosProxy
from .conftest import CacheFactory

FAST = {"redis_timeout": 0.2, "health_interval": 0.2, "max_stale": 1.0}
OLD = "old"


class SeveringProxy(ChaosProxy):
    """A proxy that can also refuse connections: `cut()` drops every connection
    and refuses new ones until `restore()`. Unlike a blackhole, it forwards
    nothing late: a command sent while cut never reaches Redis."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.refusing = False

    def cut(self) -> None:
        self.refusing = True
        self.reset()

    def restore(self) -> None:
        self.refusing = False

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_w.transport.abort()
            return
        await super()._accept(client_r, client_w)


@pytest.fixture
async def proxy(server: RedisServer) -> AsyncIterator[SeveringProxy]:
    made = SeveringProxy(server.port)
    await made.start()
    yield made
    await made.close()


@pytest.fixture
async def pair(
    proxy: SeveringProxy, make_cache: CacheFactory
) -> AsyncIterator[tuple[TwoTierCache, TwoTierCache]]:
    """(a, b): a reaches Redis through the proxy, b directly; one namespace."""
    b = await make_cache(namespace="ob", **FAST)
    async with TwoTierCache(redis_url=proxy.url, namespace="ob", **FAST) as a:
        yield a, b
        proxy.restore()  # a failed test must not leave `a` to close while cut off


async def _is(value: bool) -> bool:
    return value


async def _sees(cache: TwoTierCache, keys: list[str], expected: object) -> bool:
    return [await cache.get(key, "gone") for key in keys] == [expected] * len(keys)


async def _cut(proxy: SeveringProxy, a: TwoTierCache) -> None:
    proxy.cut()
    await eventually(lambda: _is(not a.redis_available), timeout=5)


async def _restore(proxy: SeveringProxy, a: TwoTierCache) -> None:
    proxy.restore()
    await eventually(lambda: _is(a.redis_available), timeout=10)


async def test_changes_queued_while_cut_off_reach_the_others_late(
    proxy: SeveringProxy, pair: tuple[TwoTierCache, TwoTierCache]
) -> None:
    a, b = pair
    keys = ["written", "deleted", "tagged", "also-tagged", "untouched"]
    await b.set("written", OLD)
    await b.set("deleted", OLD)
    await b.set("tagged", OLD, tags=["t1"])
    await b.set("also-tagged", OLD, tags=["other", "t2"])
    await b.set("untouched", OLD, tags=["t3"])
    assert await _sees(b, keys, OLD)  # in b's L1 and in Redis
    assert b.local.entries == len(keys)

    await _cut(proxy, a)
    await a.set("written", "new")  # queued as an invalidation of the key, not as a write
    await a.delete("deleted")
    await a.invalidate_tags(["t2", "t1"])
    stats = a.get_stats()
    assert stats["queued_ops_pending"] == 4  # two keys, two tags
    assert stats["redis_available"] is False
    assert await _sees(b, keys, OLD)  # nothing reached Redis or b yet

    await _restore(proxy, a)
    changed = keys[:4]
    await eventually(lambda: _sees(b, changed, "gone"), timeout=10)
    await eventually(lambda: _is(a.get_stats()["queued_ops_pending"] == 0), timeout=5)
    assert b.get_stats()["invalidations_received"] >= 2  # by pub/sub, while b stayed up
    b.local.clear()
    assert await _sees(b, changed, "gone")  # gone from Redis too, not only from b's L1
    assert await b.get("untouched") == OLD  # and nothing else was dropped
    assert b.get_stats()["l1_clears"] == 0  # b was repaired by the changes, not by a wipe


async def test_a_clear_queued_while_cut_off_reaches_the_others_late(
    proxy: SeveringProxy, pair: tuple[TwoTierCache, TwoTierCache]
) -> None:
    a, b = pair
    keys = ["plain", "tagged"]
    await b.set("plain", OLD)
    await b.set("tagged", OLD, tags=["t"])
    assert await _sees(b, keys, OLD)

    await _cut(proxy, a)
    await a.delete("plain")
    await a.clear()  # subsumes the delete queued before it
    await a.set("after", "new")  # and whatever follows it, until it is delivered
    assert a.get_stats()["queued_ops_pending"] == 1
    assert await _sees(b, keys, OLD)

    await _restore(proxy, a)
    await eventually(lambda: _sees(b, keys, "gone"), timeout=10)
    await eventually(lambda: _is(a.get_stats()["queued_ops_pending"] == 0), timeout=5)
    b.local.clear()
    assert await _sees(b, [*keys, "after"], "gone")  # Redis holds none of them either
    assert b.get_stats()["l1_clears"] == 0  # b cleared L1 because of a's clear, not a resync


async def test_the_cause_of_a_queued_change_stays_named_while_it_is_queued(
    make_cache: CacheFactory,
) -> None:
    """Issue 21, case 8: once any other call succeeded, `last_error` read None
    while a change was still queued. Here no replica can confirm a change
    (`confirm_replicas=1` on a lone server): it stays queued, and reads go on
    working."""
    cache = await make_cache(confirm_replicas=1, redis_timeout=0.2)
    await cache.invalidate_tag("t")
    assert cache.get_stats()["queued_ops_pending"] >= 1
    await cache.ping()  # a call that works: the guard forgets its last failure
    stats = cache.get_stats()
    assert stats["queued_ops_pending"] >= 1
    assert "replica" in (stats["last_error"] or ""), stats
