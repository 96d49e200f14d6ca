"""Metrics of caches on a real server: the exporter's output as Prometheus scrapes
it (checked by promtool), and the observer's events for the breaker and resyncs."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

import twotier.prometheus
from tests._promtool import promtool
from tests.contract import eventually
from tests.test_events import Recorder
from tests.test_prometheus import value
from twotier.testing import RedisServer

from .conftest import CacheFactory


async def _true(v: bool) -> bool:
    return v


async def test_a_running_cache_exports_what_promtool_accepts(make_cache: CacheFactory) -> None:
    registry = CollectorRegistry()
    a, b = await make_cache(), await make_cache()
    for cache in (a, b):
        twotier.prometheus.instrument(cache, registry)
    recorder = Recorder()
    b.events.add(recorder)

    @b.cached(ttl=60, tags=["articles"])
    async def article(n: int) -> int:
        return n

    await a.set("k", 1, tags=["articles"])
    assert await b.get("k") == 1  # an L2 hit
    assert await article(1) == 1  # an L2 miss and a load
    await a.invalidate_tag("articles")
    # the message carries its send time: the lag is measured, not None
    await eventually(lambda: _true(any(_lagged(e) for e in recorder.events)))

    text = twotier.prometheus.metrics_text(registry)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    mine = {"instance_id": b.instance_id}
    assert value(registry, "twotier_lookups_total", tier="l2", outcome="hit", **mine) == 1
    assert value(registry, "twotier_l2_read_seconds_count", outcome="hit", **mine) == 1
    assert value(registry, "twotier_l2_read_seconds_count", outcome="miss", **mine) == 1
    assert value(registry, "twotier_loader_seconds_count", outcome="ok", **mine) == 1
    assert value(registry, "twotier_invalidations_received_total", **mine) >= 1
    assert value(registry, "twotier_redis_available", **mine) == 1
    assert value(registry, "twotier_info", mode="redis", **mine) == 1


def _lagged(event: tuple[object, ...]) -> bool:
    return event[:2] == ("invalidation", "t") and isinstance(event[2], float) and event[2] >= 0


async def test_breaker_and_resync_reach_the_observer_and_the_gauges(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    registry = CollectorRegistry()
    recorder = Recorder()
    cache = await make_cache(redis_timeout=0.05, health_interval=0.2, observers=[recorder])
    twotier.prometheus.instrument(cache, registry)
    await cache.set("k", 1)

    server.kill()
    for i in range(20):  # L2 reads that fail until the breaker opens
        await cache.get(f"absent{i}")
        if ("breaker", "open") in recorder.events:
            break
        await asyncio.sleep(0.01)
    assert ("breaker", "open") in recorder.events
    assert ("l2_read", "error") in recorder.events
    assert value(registry, "twotier_breaker_open") == 1
    assert value(registry, "twotier_l2_read_seconds_count", outcome="error") >= 1

    server.launch()  # back, empty: a new server, so the link resyncs
    await eventually(lambda: _true(cache.get_stats()["redis_available"]), timeout=10)
    assert ("breaker", "closed") in recorder.events
    await eventually(lambda: _true(any(e[0] == "resynced" for e in recorder.events)), timeout=5)
    assert value(registry, "twotier_breaker_open") == 0
    assert value(registry, "twotier_resyncs_total") >= 1
