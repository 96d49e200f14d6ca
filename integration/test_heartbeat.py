"""Each instance reports its stats to Redis with a TTL (what `twotier stats` reads)."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from redis.crc import key_slot

from tests.contract import eventually
from twotier._redis import Layout
from twotier.testing import RedisServer

from .conftest import CacheFactory


async def _reports(server: RedisServer, namespace: str) -> dict[str, dict[str, object]]:
    raw = aioredis.Redis.from_url(server.url)
    try:
        names = [n async for n in raw.scan_iter(match=Layout(namespace).heartbeat_prefix + "*")]
        values = await raw.mget(names) if names else []
        return {r["instance"]: r for r in (json.loads(v) for v in values if v)}
    finally:
        await raw.aclose()


async def test_every_live_instance_reports_and_a_closed_one_disappears(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a = await make_cache(namespace="hb", heartbeat_interval=0.1)
    b = await make_cache(namespace="hb", heartbeat_interval=0.1)
    await a.set("k", 1)
    assert await a.get("k") == 1

    async def both_report_the_hit() -> bool:
        reports = await _reports(server, "hb")
        return (
            set(reports) == {a.instance_id, b.instance_id}
            and reports[a.instance_id]["l1_hits"] == 1
            and reports[b.instance_id]["redis_available"] is True
        )

    await eventually(both_report_the_hit)
    report = (await _reports(server, "hb"))[b.instance_id]
    assert report["redis_available"] is True
    assert {"host", "pid", "reported_at", "hit_rate"} <= set(report)
    await b.close()
    assert set(await _reports(server, "hb")) == {a.instance_id}  # gone at once, not at its TTL


def test_heartbeats_do_not_weigh_on_the_control_slot() -> None:
    """Issue 21, case 7: one heartbeat key per instance in the control slot made
    every move of that slot longer with the size of the fleet. They share a
    slot of their own (one MGET still reads them all)."""
    layout = Layout("erp")
    control = {key_slot(name.encode()) for name in layout.control}
    beats = {key_slot((layout.heartbeat_prefix + i).encode()) for i in ("a1", "b2", "c3")}
    assert len(control) == 1
    assert len(beats) == 1
    assert beats.isdisjoint(control)
