"""twotier.otel with the OpenTelemetry SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import twotier.otel
from twotier import TwoTierCache
from twotier._events import key_digest


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def ns() -> str:
    return f"ot{uuid.uuid4().hex[:8]}"


async def test_reads_and_loads_are_spans_with_tier_hit_digest_and_tags(spans: Any) -> None:
    provider, exporter = spans
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.otel.instrument(cache, tracer_provider=provider, meter_provider=MeterProvider())

        @cache.cached(ttl=60, tags=["articles", "category:{category}"])
        async def articles(category: str) -> list[str]:
            return [category]

        await articles("news")
        await articles("news")
        await cache.get("customer:alice@example.com")
        key = articles.key("news")
    finished = exporter.get_finished_spans()
    by_name = [(s.name, dict(s.attributes or {})) for s in finished]
    load, miss, hit, get = by_name
    assert load[0] == "twotier.load"
    assert miss[0] == "twotier.cached"
    assert hit[0] == "twotier.cached"
    assert miss[1]["twotier.tier"] == "loader"
    assert miss[1]["twotier.hit"] is False
    assert hit[1]["twotier.tier"] == "l1"
    assert hit[1]["twotier.hit"] is True
    assert hit[1]["twotier.tags"] == ("articles", "category:news")
    assert hit[1]["twotier.key_digest"] == key_digest(key)
    assert hit[1]["twotier.function"].endswith("articles")
    assert get[0] == "twotier.get"
    assert get[1]["twotier.tier"] == "none"
    # the raw key never leaves the process
    assert all("alice" not in str(attrs) for _, attrs in by_name)
    # the loader span is a child of the read's span
    load_span, miss_span = finished[0], finished[1]
    assert load_span.parent is not None
    assert load_span.parent.span_id == miss_span.context.span_id


async def test_a_failing_loader_marks_its_spans(spans: Any) -> None:
    provider, exporter = spans
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.otel.instrument(cache, tracer_provider=provider, meter_provider=MeterProvider())

        @cache.cached(ttl=60)
        async def broken() -> int:
            raise RuntimeError("database down")

        with pytest.raises(RuntimeError, match="database down"):
            await broken()
    statuses = {s.name: s.status.status_code for s in exporter.get_finished_spans()}
    assert statuses == {"twotier.load": StatusCode.ERROR, "twotier.cached": StatusCode.ERROR}


async def test_lease_waits_are_spans_and_joined_callers_say_so(spans: Any) -> None:
    provider, exporter = spans
    release = asyncio.Event()
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.otel.instrument(cache, tracer_provider=provider, meter_provider=MeterProvider())

        @cache.cached(ttl=60)
        async def slow() -> int:
            await release.wait()
            return 1

        tasks = [asyncio.create_task(slow()) for _ in range(2)]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)
        # A wait on another instance's lease, as the core runs it on an L2 miss
        await cache.events.lease_wait(asyncio.sleep(0))
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["twotier.cached", "twotier.cached", "twotier.lease_wait", "twotier.load"]
    tiers = sorted(
        (s.attributes or {})["twotier.tier"]
        for s in exporter.get_finished_spans()
        if s.name == "twotier.cached"
    )
    assert tiers == ["joined", "loader"]


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_the_same_metrics_through_an_otel_meter(spans: Any) -> None:
    provider, _ = spans
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    namespace = ns()
    async with TwoTierCache(namespace=namespace) as a, TwoTierCache(namespace=namespace) as b:
        twotier.otel.instrument(a, tracer_provider=provider, meter_provider=meters)
        twotier.otel.instrument(b, tracer_provider=provider, meter_provider=meters)

        @a.cached(ttl=60)
        async def f(n: int) -> int:
            return n

        await f(1)
        await f(1)
        points = _points(reader)
        lookups = {
            (p.attributes["instance_id"], p.attributes["tier"], p.attributes["outcome"]): p.value
            for p in points["twotier.lookups"]
        }
        assert lookups[(a.instance_id, "l1", "hit")] == 1
        assert lookups[(a.instance_id, "l2", "miss")] == 1
        assert lookups[(b.instance_id, "l1", "hit")] == 0  # both caches, one meter
        (loader,) = points["twotier.loader.duration"]
        assert loader.count == 1
        assert loader.attributes["outcome"] == "ok"
        assert {p.attributes["instance_id"] for p in points["twotier.l1.entries"]} == {
            a.instance_id,
            b.instance_id,
        }
        assert "twotier.breaker.open" in points
        assert "twotier.resyncs" in points
    meters.shutdown()


async def test_instrument_is_idempotent_and_can_be_undone(spans: Any) -> None:
    provider, exporter = spans
    async with TwoTierCache(namespace=ns()) as cache:
        meters = MeterProvider()
        first = twotier.otel.instrument(cache, tracer_provider=provider, meter_provider=meters)
        assert twotier.otel.instrument(cache, tracer_provider=provider) is first
        twotier.otel.uninstrument(cache)
        assert not cache.events.tracing
        await cache.get("k")
    assert exporter.get_finished_spans() == ()
