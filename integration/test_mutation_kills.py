"""Redis-side behaviours the mutation run (.ci/mutation.py) found unchecked.

Each test states what a user relies on, on a real server, and names in its
docstring the Lua mutants it kills (ids from `python .ci/mutation.py --list`).
Redis's own keys are reached with a raw client only to make what the tests
simulate happen (a counter evicted, foreign data under our names) and, where a
guarantee is about Redis's memory, to look at it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.contract import SlowSource, eventually
from twotier import TwoTierCache
from twotier._redis import Layout

from .conftest import CacheFactory

NS = "it"  # make_cache's namespace
LAYOUT = Layout(NS)
TAGS = LAYOUT.tags
BUMPED = LAYOUT.bumped
SEQ = LAYOUT.seq
LOG = LAYOUT.log


def _entry(key: str) -> str:
    return LAYOUT.entry(key)


def _lease(key: str) -> str:
    return LAYOUT.lease(key)


async def _true(value: bool) -> bool:
    return value


async def _equals(awaitable: Awaitable[Any], expected: object) -> bool:
    return await awaitable == expected


class Source:
    """The source of truth behind the loaders: one value per key, and a count of loads."""

    def __init__(self, **values: str) -> None:
        self.values = dict(values)
        self.loads = 0

    def loader(self, cache: TwoTierCache, key: str, **options: Any) -> Callable[[], Any]:
        async def load() -> str:
            self.loads += 1
            return self.values[key]

        return cache.cached(ttl=60, key=key, **options)(load)


# -- the change counter: numbers are never reused ------------------------------------------


@pytest.mark.parametrize("changes_before", [0, 4])
async def test_a_lost_counter_continues_after_the_log(
    make_cache: CacheFactory, raw: aioredis.Redis, changes_before: int
) -> None:
    """The change counter evicted (the log still there): the next change is numbered
    after the log's last one, so the other instances apply it as the next change,
    without wiping their L1. Right after startup the log's last change is number 1
    (the server's first generation), which is the boundary.
    Kills: lua-86a9a5 (`seq == 1` flipped), lua-a78d2a, lua-b19e64 (the log
    reply's checks), lua-93346a, lua-3280f3 (`>=` -> `>`), lua-70da1d (`+ 0`),
    lua-e35966 (the counter not stored)."""
    a, b = await make_cache(), await make_cache()
    for n in range(changes_before):
        await a.invalidate_tag(f"warm:{n}")
    source = Source(k="old", other="kept")
    load_k, load_other = source.loader(b, "k"), source.loader(b, "other")
    assert (await load_k(), await load_other()) == ("old", "kept")  # fills: not changes
    await eventually(lambda: _true(b.get_stats()["invalidations_received"] == changes_before))
    seq = int(await raw.get(SEQ))
    assert seq == changes_before + 1  # the first generation took number 1

    await raw.delete(SEQ)  # evicted
    source.values["k"] = "new"
    await a.delete("k")
    assert int(await raw.get(SEQ)) == seq + 1
    await eventually(lambda: _equals(load_k(), "new"))
    source.values["other"] = "changed"
    await a.delete("other")  # and the counter goes on from there
    assert int(await raw.get(SEQ)) == seq + 2
    await eventually(lambda: _equals(load_other(), "changed"))
    assert b.get_stats()["l1_clears"] == 0  # applied one by one, not by wiping L1
    assert a.get_stats()["queued_ops"] == 0


async def test_a_lost_counter_and_log_start_afresh_without_an_error(
    make_cache: CacheFactory, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """With the counter and the log both gone (a fresh namespace is the same case)
    changes still go through at once, and nothing is logged as a failure.
    Kills: lua-409092 (`and` -> `or` in the log reply's check: the first change on
    an empty log fails)."""
    with caplog.at_level(logging.WARNING, logger="twotier"):
        a, b = await make_cache(), await make_cache()
        await a.set("k", 1)
        await raw.delete(SEQ, LOG)
        await a.delete("k")
        await a.set("k", 2)
        await eventually(lambda: _equals(b.get("k"), 2))
    assert a.get_stats()["queued_ops"] == 0
    assert not [r for r in caplog.records if "Redis call failed" in r.getMessage()], caplog.text


async def test_a_tag_version_never_returns_to_an_old_value(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """A tag's new version is above every version it had, even when the counter and
    the log were lost and numbering starts again: otherwise an entry stored under
    an old version would match again and be served after its invalidation.
    Kills: lua-7752fa (`+ 1` -> `+ 0` in the version bump), the hand mutant
    lua-705d5e (the version is the change number alone)."""
    a, c = await make_cache(), await make_cache()
    await a.invalidate_tag("t")  # t's version: this change's number (2)
    await a.set("first", "old", tags=["t"])  # stored under that version
    await a.invalidate_tag("t")
    await a.set("second", "old", tags=["t"])  # stored under the newer version
    await raw.delete(SEQ, LOG)  # both evicted: numbering starts again at 1
    await a.invalidate_tag("other")  # 1
    await a.invalidate_tag("t")  # 2: must not bring back 'first', nor keep 'second'
    c.local.clear()
    assert await c.get("first") is None
    assert await c.get("second") is None


# -- foreign data and lost metadata ---------------------------------------------------------


async def test_foreign_data_in_the_version_hash_is_replaced_by_the_next_read(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Foreign data under the tag-version hash: the next read repairs it, and writes
    work again at once. Kills: lua-93c2ae (the read does not delete the foreign
    value)."""
    a, b = await make_cache(), await make_cache()
    await a.set("k", 1, tags=["t"])
    await raw.delete(TAGS)
    await raw.set(TAGS, "foreign")
    b.local.clear()
    assert await b.get("k") is None  # versions unknown: the entry cannot be trusted
    assert await raw.type(TAGS) == b"hash"
    await a.set("k2", 2, tags=["t"])
    b.local.clear()
    assert await b.get("k2") == 2
    assert a.get_stats()["queued_ops"] == 0


async def test_foreign_data_under_the_log_is_replaced_and_changes_are_logged(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Foreign data under the change log does not stop changes: the log starts
    afresh with the change in it (where a listener that missed the message finds
    it), and the others hear of it. Kills: lua-9b0bce (`==` -> `~=` in the XADD
    error check), lua-828dc3 (the foreign log is not deleted), lua-aec8bd (the
    change is not logged)."""
    a, b = await make_cache(), await make_cache()
    await a.set("k", "old")
    assert await b.get("k") == "old"
    await raw.delete(LOG)
    await raw.set(LOG, "foreign")
    await a.delete("k")
    assert a.get_stats()["queued_ops"] == 0
    seq = int(await raw.get(SEQ))
    last = await raw.xrevrange(LOG, count=1)
    assert [entry_id for entry_id, _ in last] == [f"{seq}-1".encode()]
    await eventually(lambda: _equals(b.get("k", "gone"), "gone"))


async def test_clear_frees_every_tag_version(make_cache: CacheFactory, raw: aioredis.Redis) -> None:
    """After clear() nothing stored before it can match again, so Redis keeps no
    tag version from before it: the metadata stays bounded by what is in use
    (guarantee 10). Kills: lua-509724 (the versions are not deleted)."""
    a = await make_cache()
    for n in range(20):
        await a.set(f"k{n}", n, tags=[f"t{n}"])
    await a.invalidate_tags([f"t{n}" for n in range(20)])
    assert await raw.hlen(TAGS) > 20
    await a.clear()
    assert set(await raw.hkeys(TAGS)) <= {b""}  # at most the new generation
    assert not await raw.exists(BUMPED)
    assert await a.get("k3") is None


async def test_an_outdated_entry_is_freed_when_read(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """An entry outdated by a tag invalidation is deleted from Redis by the first
    read that finds it so, not kept until its TTL. Kills: lua-8275ff."""
    a, b = await make_cache(), await make_cache()
    await a.set("k", "v" * 1000, ttl=3600, tags=["t"])
    await a.invalidate_tag("t")
    assert await raw.exists(_entry("k"))  # an O(1) invalidation touches no entry...
    b.local.clear()
    assert await b.get("k") is None
    # ...the read that finds it outdated frees it (in the background)
    await eventually(lambda: _equals(raw.exists(_entry("k")), 0))


async def test_foreign_data_under_the_bump_times_is_left_alone_then_replaced(
    make_cache: CacheFactory, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Foreign data under the sorted set of tag bump times: compaction skips it
    without an error, and the next tag invalidation replaces it, goes through at
    once and reaches the others. Kills: lua-c3021f (`or` -> `and` in compaction's
    guard), lua-ec37df and lua-cdc664 (the foreign value is not replaced)."""
    a, b = await make_cache(compaction_interval=0.1), await make_cache()
    await a.set("k", "old", tags=["t"])  # records a horizon: compaction has work to consider
    assert await b.get("k") == "old"
    await raw.delete(BUMPED)
    await raw.set(BUMPED, "foreign")
    with caplog.at_level(logging.WARNING, logger="twotier"):
        await asyncio.sleep(0.6)  # several compaction rounds
    assert not [r for r in caplog.records if "Redis call failed" in r.getMessage()], caplog.text
    await a.invalidate_tag("t")
    assert a.get_stats()["queued_ops"] == 0
    assert await raw.type(BUMPED) == b"zset"
    assert await raw.zscore(BUMPED, "t") is not None  # so compaction can drop it in time
    await eventually(lambda: _equals(b.get("k", "gone"), "gone"))


# -- compaction's horizon ------------------------------------------------------------------


async def test_a_short_write_does_not_shorten_the_compaction_horizon(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """The horizon (how long an entry stored now can live) only grows: a long-lived
    entry written before short-lived ones keeps its tag's version from being
    compacted away while it lives, or it would become valid again after its
    invalidation. Kills: lua-b1745d and lua-baee0b (`or` -> `and` in reading the
    recorded horizon: the last write's horizon replaces a longer one)."""
    options = {"lease_ttl": 0.1, "compaction_interval": 0.1}
    a, b, c = [await make_cache(**options) for _ in range(3)]
    await a.set("doc", "old", ttl=60, tags=["T"])  # a long horizon first
    await a.set("short", 0, ttl=0.1)  # then a short one
    await b.invalidate_tag("T")  # 'doc' is invalid from here on
    await asyncio.sleep(1.0)  # several compaction rounds, well past the short horizon
    assert await raw.hexists(TAGS, "T"), "T's version was compacted while 'doc' lives"
    assert await c.get("doc") is None


# -- leases and conditional fills ----------------------------------------------------------


async def test_a_set_during_a_slow_load_wins_over_the_loaded_value(
    make_cache: CacheFactory,
) -> None:
    """set() revokes the fill lease of a load under way: the loader's older value
    is returned to its caller but never stored over the new one. Kills:
    lua-1eac54 (write.lua does not delete the entry and the lease)."""
    a, b, c = await make_cache(), await make_cache(), await make_cache()
    source = SlowSource()
    loading = asyncio.create_task(source.loader(a, key="k")())
    await source.started.wait()  # a loader runs once its instance holds the lease
    await b.set("k", "new")
    source.release.set()
    assert await loading == "old"
    assert a.get_stats()["stale_sets_refused"] == 1
    c.local.clear()
    assert await c.get("k") == "new"


async def test_a_revoked_fill_is_refused_while_another_instance_holds_the_lease(
    make_cache: CacheFactory,
) -> None:
    """A load whose lease was revoked by a delete must not store its result, even
    when another instance has taken the key's lease since: the fill checks the
    lease is its own, not that there is one. Kills: lua-c17fb5 (`or` -> `and` in
    end_lease: another's lease is taken for one's own)."""
    a, b, c = [await make_cache(lease_ttl=30) for _ in range(3)]
    first, second = SlowSource("old"), SlowSource("new")
    old = asyncio.create_task(first.loader(a, key="k")())
    await first.started.wait()
    await b.delete("k")  # revokes a's lease
    new = asyncio.create_task(second.loader(c, key="k")())
    await second.started.wait()  # c holds the key's lease now
    first.release.set()
    assert await old == "old"
    assert await b.get("k", "nothing") == "nothing"  # a's fill was refused
    second.release.set()
    assert await new == "new"
    b.local.clear()
    assert await b.get("k") == "new"


async def test_waiters_on_an_outdated_lease_are_woken_by_the_load_that_takes_it_over(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """A load outdated by clear() holds a lease others are waiting on. The instance
    that takes the lease over after the clear keeps it marked as waited on, so its
    fill wakes the waiters at once instead of after the lease's 30 s. Kills:
    lua-776632 (`==` -> `~=`) and lua-11ad3c (`and` -> `or`) in carrying the mark."""
    a, b, c = [await make_cache(lease_ttl=30) for _ in range(3)]
    gate = asyncio.Event()

    @a.cached(ttl=60, key="k")
    async def outdated() -> str:
        await gate.wait()
        return "old"

    @b.cached(ttl=60, key="k")
    async def waiting() -> str:
        return "b's own"

    @c.cached(ttl=60, key="k")
    async def fresh() -> str:
        return "fresh"

    holder = asyncio.create_task(outdated())
    await eventually(lambda: _true_async(raw.exists(_lease("k"))))
    waiter = asyncio.create_task(waiting())
    await eventually(lambda: _ends_with(raw.get(_lease("k")), b"+"))  # b is waiting on it
    await c.clear()
    try:
        assert await fresh() == "fresh"  # c takes the outdated lease over and fills
        assert await asyncio.wait_for(waiter, timeout=5) == "fresh"
    finally:
        gate.set()
    assert await holder == "old"  # its caller's answer; never stored
    assert b.get_stats()["lease_waits"] == 1


async def _true_async(awaitable: Awaitable[Any]) -> bool:
    return bool(await awaitable)


async def _ends_with(awaitable: Awaitable[bytes | None], suffix: bytes) -> bool:
    return (await awaitable or b"").endswith(suffix)


async def test_foreign_data_appearing_under_an_entry_during_a_load_is_replaced(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """A fill replaces whatever is under its entry's name, foreign data included,
    instead of failing on it. Kills: lua-07eb7d (the fill does not delete the
    entry first)."""
    a, b = await make_cache(), await make_cache()
    source = SlowSource("loaded")
    loading = asyncio.create_task(source.loader(a, key="k")())
    await source.started.wait()
    await raw.set(_entry("k"), "foreign")
    source.release.set()
    assert await loading == "loaded"
    assert await b.get("k") == "loaded"  # from Redis
    assert a.get_stats()["l2_errors"] == 0


async def test_warmup_replaces_foreign_data_and_fills_every_key(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Warmup over keys one of which holds foreign data: the foreign data is counted
    and deleted, and every key, that one too, is filled with a real entry."""
    a, b = await make_cache(), await make_cache()
    await raw.set(_entry("k1"), "foreign")
    filled = await a.warmup(["k0", "k1", "k2"], lambda key: f"value of {key}", ttl=60)
    assert filled == 3
    assert a.get_stats()["garbage_entries"] == 1
    assert (await raw.get(_entry("k1"))) != b"foreign"
    assert [await b.get(k) for k in ("k0", "k1", "k2")] == [f"value of k{i}" for i in range(3)]


async def test_a_warmup_fill_wakes_the_instances_waiting_on_its_lease(
    make_cache: CacheFactory,
) -> None:
    """An instance waiting for a key that warmup is loading is woken by the fill's
    message and reads the value, long before the lease would expire. Kills:
    lua-f55aa3 (the key named in fill_batch's wake-up message is wrong)."""
    a, b = await make_cache(lease_ttl=30), await make_cache(lease_ttl=30)
    started = asyncio.Event()
    loads = {"b": 0}

    async def slow(key: str) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return f"warm {key}"

    @b.cached(ttl=60, key="k")
    async def load() -> str:
        loads["b"] += 1
        return "b's own"

    warming = asyncio.create_task(a.warmup(["k"], slow, ttl=60))
    await started.wait()
    assert await asyncio.wait_for(load(), timeout=5) == "warm k"
    assert await warming == 1
    assert loads["b"] == 0
    assert b.get_stats()["lease_waits"] == 1
