"""Issue 20, item 4: invalidations asked for while one is on its way travel
together — one script call, one change number, one message — and every other
instance applies them as one change. Counted on the channel and in the
receivers' stats; never timed."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

from .conftest import started_caches

NS = "burst"
BURST = 1000


async def _messages(server: RedisServer, counted: list[bytes], ready: asyncio.Event) -> None:
    client = aioredis.Redis.from_url(server.url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(Layout(NS).channel)
        ready.set()
        async for message in pubsub.listen():
            if message["type"] == "message":
                counted.append(message["data"])
    finally:
        await pubsub.aclose()
        await client.aclose()


async def _burst(server: RedisServer, awaited: bool) -> tuple[list[bytes], TwoTierCache]:
    counted: list[bytes] = []
    ready = asyncio.Event()
    listener = asyncio.create_task(_messages(server, counted, ready))
    await ready.wait()
    try:
        async with started_caches(server.url, 2, namespace=NS) as (writer, reader):
            tags = [f"row:{i}" for i in range(BURST)]
            for i in (0, 499, 999):
                await writer.set(f"k{i}", i, tags=[tags[i]])
                assert await reader.get(f"k{i}") == i  # in the reader's L1 now
            before = reader.get_stats()["invalidations_received"]
            if awaited:
                await asyncio.gather(*(writer.invalidate_tag(tag) for tag in tags))
            else:  # the seed's style: nothing awaited but the last
                for tag in tags[:-1]:
                    writer.invalidate_tag(tag)  # delivered in the background
                await writer.invalidate_tag(tags[-1])
                await asyncio.sleep(0.1)  # the background deliveries' last batch
            for i in (0, 499, 999):
                assert await writer.get(f"k{i}") is None  # read-your-writes

            async def dropped() -> bool:
                return all([await reader.get(f"k{i}") is None for i in (0, 499, 999)])

            await eventually(dropped, timeout=5.0)
            received = reader.get_stats()["invalidations_received"] - before
            assert received * 10 <= BURST, received
            await asyncio.sleep(0.05)
            return [m for m in counted if m.split(b"\x1f")[1] == b"t"], reader
    finally:
        listener.cancel()


async def test_a_burst_of_invalidations_is_a_few_messages(server: RedisServer) -> None:
    messages, _ = await _burst(server, awaited=True)
    # 1,000 before: one message per call. Now the first call, then what queued
    # behind it (a batch of more than 1,000 tags would be two changes).
    assert 1 <= len(messages) <= BURST // 10, len(messages)
    tags = {tag for m in messages for tag in m.split(b"\x1f")[5::2]}
    assert tags == {f"row:{i}".encode() for i in range(BURST)}  # none lost


async def test_unawaited_invalidations_coalesce_too(server: RedisServer) -> None:
    messages, _ = await _burst(server, awaited=False)
    assert 1 <= len(messages) <= BURST // 10, len(messages)


async def test_a_missed_batch_is_found_and_replayed_as_one_change(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    """The batch is one numbered change in the log: a receiver that missed its
    message finds the gap at the next number and replays it, L1 kept."""
    layout = Layout(NS)
    async with started_caches(server.url, 2, namespace=NS) as (writer, reader):
        await writer.set("a", 1, tags=["ta"])
        await writer.set("b", 2, tags=["tb"])
        assert (await reader.get("a"), await reader.get("b")) == (1, 2)
        seq = int(await raw.get(layout.seq))
        # Sent on a channel nobody listens to: numbered and logged, never delivered.
        sender = writer._remote.layout  # type: ignore[attr-defined]
        sender.channel, saved = "nowhere", sender.channel
        try:
            await asyncio.gather(*(writer.invalidate_tag(t) for t in ("ta", "tb", "tc")))
        finally:
            sender.channel = saved
        entries = await raw.xrange(layout.log, min=f"{seq + 1}-0")
        assert len(entries) == 2  # the first call, then the other two as one
        assert int(await raw.get(layout.seq)) == seq + 2
        await writer.invalidate_tag("other")  # its number reveals the gap

        async def dropped() -> bool:
            return await reader.get("a") is None and await reader.get("b") is None

        await eventually(dropped, timeout=5.0)
        await eventually(lambda: _at_least(reader, "resyncs", 1), timeout=5.0)
        assert reader.get_stats()["l1_clears"] == 0  # replayed from the log, not wiped


async def _at_least(cache: TwoTierCache, stat: str, count: int) -> bool:
    return bool(cache.get_stats()[stat] >= count)
