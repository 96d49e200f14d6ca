"""Foreign data under our namespace is a counted miss or a repair, never an exception."""

from __future__ import annotations

import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import PickleSerializer, TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

from .conftest import CacheFactory

L = Layout("it")  # the Redis names of the tests' namespace
SECRET = "a-secret-of-at-least-16-bytes"


async def _raw(server: RedisServer) -> aioredis.Redis:
    return aioredis.Redis.from_url(server.url)


async def test_garbage_entries_are_counted_misses_and_deleted(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    cache = await make_cache()
    raw = await _raw(server)
    try:
        await raw.set(L.entry("string"), "not an entry")  # no header at all
        await raw.set(L.entry("partial"), b"2\x1f123")  # half a header
        await raw.hset(L.entry("hash"), "p", "x")  # wrong Redis types
        await raw.lpush(L.entry("list"), "x")
        await cache.set("corrupt", {"a": 1})
        entry = await raw.get(L.entry("corrupt"))
        header = entry[: entry.index(b"\x1e") + 1]
        await raw.set(L.entry("corrupt"), header + b"M\xc1\xc1")  # payload msgpack refuses
        cache.local.clear()
        keys = ("string", "partial", "hash", "list", "corrupt")
        for key in keys:
            assert await cache.get(key, "default") == "default"
        for key in keys:
            assert not await raw.exists(L.entry(key))
        assert cache.get_stats()["garbage_entries"] == 5

        @cache.cached(ttl=60, key="string")  # a decorated read over the same garbage
        async def loader() -> str:
            return "loaded"

        await raw.set(L.entry("string"), "again")
        assert await loader() == "loaded"
        assert await cache.get("string") == "loaded"  # and the key works again
    finally:
        await raw.aclose()


async def _gone(raw: aioredis.Redis, key: str) -> bool:
    return not await raw.exists(key)


async def test_bad_signature_is_a_miss_never_unpickled(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    signed = await make_cache(serializer=PickleSerializer(SECRET))
    forger = await make_cache(serializer=PickleSerializer("another-secret-of-16-bytes"))
    await forger.set("k", {"forged": True})
    signed.local.clear()
    assert await signed.get("k") is None
    assert signed.get_stats()["garbage_entries"] == 1
    await signed.set("k", {"genuine": True})
    forger.local.clear()
    assert await forger.get("k") is None  # symmetric


async def test_foreign_control_keys_are_repaired(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a, b = await make_cache(), await make_cache()
    raw = await _raw(server)
    try:
        await a.set("k", 1, tags=["t"])
        await raw.delete(L.tags, L.seq)
        await raw.set(L.tags, "garbage")
        await raw.lpush(L.seq, "garbage")
        b.local.clear()
        assert await b.get("k") is None  # versions unknown: the entry cannot be trusted
        await a.set("k", 2, tags=["t"])  # changes work again, and repair the keys
        await a.invalidate_tag("t")
        assert await b.get("k") is None
        await a.set("k", 3, tags=["t"])
        await eventually(lambda: _equals(b.get("k"), 3))
    finally:
        await raw.aclose()


async def _equals(coro, expected: object) -> bool:
    return await coro == expected


async def test_unknown_messages_and_log_entries_clear_l1(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    cache = await make_cache(health_interval=0.2)
    raw = await _raw(server)
    try:
        await cache.set("k", 1)
        await raw.publish(L.channel, b"9\x1fz\x1f1\x1fsomeone\x1fk")  # a future format
        await eventually(lambda: _true(cache.local.entries == 0))
        assert cache.get_stats()["bad_messages"] == 1

        await cache.set("k", 2)
        seq = int(await raw.get(L.seq))
        await raw.incr(L.seq)  # a change nobody was told about...
        await raw.xadd(L.log, {"m": b"\xff\xfe garbage"}, id=f"{seq + 1}-1")
        await eventually(lambda: _true(cache.local.entries == 0))  # ...found while idle
        assert cache.get_stats()["l1_clears"] >= 1
        assert await cache.get("k") == 2  # L2 still answers
    finally:
        await raw.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_other_namespaces_and_formats_do_not_interfere(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    erp = await make_cache(namespace="erp")
    erp_peer = await make_cache(namespace="erp")
    shop = await make_cache(namespace="shop")
    await erp.set("k", "erp")
    await shop.set("k", "shop")
    await shop.clear()
    await shop.invalidate_tag("t")
    # A change erp must hear of, published after shop's: Redis delivers a
    # subscriber's messages in publication order, so once erp has this one,
    # shop's three would have arrived before it, had they reached erp at all.
    await erp_peer.invalidate_tag("unrelated")
    await eventually(lambda: _true(erp.get_stats()["invalidations_received"] >= 1))
    assert erp.get_stats()["invalidations_received"] == 1
    assert erp.local.get("k") == "erp"  # shop's clear did not clear erp's L1...
    erp.local.clear()
    assert await erp.get("k") == "erp"  # ...nor its entries in Redis


def test_namespace_cannot_escape() -> None:
    import pytest

    from twotier import ConfigurationError

    for bad in ("", "a b", "a:b", "{ctl}", 3):
        with pytest.raises(ConfigurationError):
            TwoTierCache(namespace=bad)  # type: ignore[arg-type]
