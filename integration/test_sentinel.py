"""Sentinel (issue 9): the contract, the split brain of a manual failover, WAIT
confirmation, and the chaos runs (SENTINEL FAILOVER; SIGKILL of the master) on
a local set of one master, one replica and three sentinels
(`twotier.testing.LocalSentinel`), Redis and Valkey.

The contract shares one set per flavour; each test that fails the master over
builds its own (about 2 s), so every test starts from a healthy set.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.contract import CacheContract, eventually
from twotier import TwoTierCache
from twotier.testing import LocalSentinel

from ._chaos_check import Timeline
from ._confirm import unconfirmed_change_stays_queued
from .conftest import FLAVOURS, started_caches
from .test_chaos import (
    READERS,
    _chaos_workers,
    _run_workers,
    assert_no_stale_read_outside_the_trouble,
    settled_timeline,
)


@pytest.fixture(scope="module", params=FLAVOURS)
def shared(request: pytest.FixtureRequest) -> Iterator[LocalSentinel]:
    with LocalSentinel.start(request.param) as local:
        yield local


@pytest.fixture(params=FLAVOURS)
def sentinel(request: pytest.FixtureRequest) -> Iterator[LocalSentinel]:
    """A set of its own, for a test that fails its master over."""
    with LocalSentinel.start(request.param) as local:
        yield local


def _namespace() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


class TestSentinelMode(CacheContract):
    @pytest.fixture
    async def trio(self, shared: LocalSentinel) -> AsyncIterator[list[TwoTierCache]]:
        options = {"namespace": _namespace(), "redis_timeout": 0.5}
        async with started_caches(shared.url, 3, **options) as caches:
            yield caches


class Rows:
    """A source of truth with one row, and a cached reader of it per cache."""

    def __init__(self) -> None:
        self.value = "old"

    def reader(self, cache: TwoTierCache):  # type: ignore[no-untyped-def]
        @cache.cached(ttl=300, tags=["row"])
        async def row() -> str:
            return self.value

        return row


async def test_the_split_brain_of_a_manual_failover_loses_no_invalidation(
    sentinel: LocalSentinel,
) -> None:
    """`SENTINEL FAILOVER` promotes the replica while the old master goes on
    accepting writes until a sentinel demotes it, about 10 s later. An instance
    that connects meanwhile caches from the new master; an invalidation from an
    instance that was connected before must still reach it (the master's move
    is followed at once, and a change no replica confirmed stays queued)."""
    rows = Rows()
    namespace = _namespace()
    settings = {"namespace": namespace, "redis_timeout": 0.5, "confirm_replicas": 1}
    async with TwoTierCache(redis_url=sentinel.url, **settings) as before:  # type: ignore[arg-type]
        assert await rows.reader(before)() == "old"
        old_master = sentinel.current_master()
        await asyncio.to_thread(sentinel.failover)
        async with TwoTierCache(redis_url=sentinel.url, **settings) as after:  # type: ignore[arg-type]
            row_after = rows.reader(after)
            assert await row_after() == "old"  # cached by the new master
            rows.value = "new"
            await before.invalidate_tag("row")  # acknowledged (sent, or queued)

            async def after_sees_new() -> bool:
                return await row_after() == "new"

            took = await eventually(after_sees_new, timeout=5)
            print(f"\nthe invalidation reached the instance on the new master after {took:.3f} s")
            await asyncio.to_thread(sentinel.wait_demoted, old_master)
            assert await row_after() == "new"
            assert await rows.reader(before)() == "new"
            async with TwoTierCache(redis_url=sentinel.url, namespace=namespace) as fresh:
                assert await rows.reader(fresh)() == "new"


async def test_a_change_no_replica_confirmed_stays_queued_until_one_does(
    sentinel: LocalSentinel,
) -> None:
    await unconfirmed_change_stays_queued(sentinel.url, _namespace(), sentinel.replica)


async def test_passwords_for_the_sentinels_and_the_master_go_in_the_url() -> None:
    """`redis+sentinel://:pw@…?sentinel_password=…`: the master's password in
    the URL's user part, the sentinels' as a query argument; the cache works,
    and follows a failover, with both required."""
    with LocalSentinel.start(FLAVOURS[0], password="s3cret") as protected:
        assert "sentinel_password=s3cret" in protected.url
        namespace = _namespace()
        async with started_caches(protected.url, 2, namespace=namespace) as (a, b):
            await a.set("k", 1, tags=["t"])
            assert await b.get("k") == 1
            await asyncio.to_thread(protected.failover)
            await a.invalidate_tag("t")

            async def gone() -> bool:
                return await b.get("k") is None

            await eventually(gone, timeout=5)
            await a.set("k", 2)
            assert await b.get("k") == 2

            async def both_available() -> bool:
                return a.redis_available and b.redis_available

            await eventually(both_available, timeout=5)
        without = protected.url.split("?")[0].replace(":s3cret@", "")
        async with TwoTierCache(redis_url=without, namespace=namespace) as refused:
            assert not refused.redis_available
            assert refused.get_stats()["last_error"]


@pytest.mark.parametrize("trouble", ["failover", "kill"])
async def test_chaos_sentinel_failover_or_master_killed_under_load(
    sentinel: LocalSentinel, tmp_path: Path, trouble: str
) -> None:
    """Readers and a writer in separate processes while Sentinel fails the master
    over (`SENTINEL FAILOVER`: the old master lingers, the split brain) or the
    master is SIGKILLed (the replica is promoted after about two seconds). No
    read raises or hangs; no read is stale while connected, nor once the
    failover has settled (new master named + max_stale + a margin)."""

    async def scenario(processes: dict[str, asyncio.subprocess.Process]) -> Timeline:
        start = time.monotonic()
        await asyncio.sleep(3.0)
        began = time.monotonic()
        if trouble == "kill":
            await asyncio.to_thread(sentinel.kill_master)
        else:
            await asyncio.to_thread(sentinel.failover)
        named = time.monotonic()  # every sentinel names the new master
        return await settled_timeline(
            processes,
            tmp_path,
            start=start,
            trouble=began,
            recovered=named,
            names=(trouble, "new master named"),
        )

    run = await _run_workers(sentinel, tmp_path, _chaos_workers(), scenario)  # type: ignore[arg-type]
    title = f"Sentinel ({sentinel.flavour}), {trouble}: {READERS} readers, 1 writer"
    path = tmp_path / f"chaos-sentinel-{trouble}-{sentinel.flavour}.json"
    assert_no_stale_read_outside_the_trouble(run, title, path)
