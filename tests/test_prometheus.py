"""twotier.prometheus on memory-mode caches, the dashboard and its provisioning."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import twotier.prometheus
from twotier import TwoTierCache

from ._promtool import DASHBOARD, ROOT, metric_names, promtool


def ns() -> str:
    return f"pm{uuid.uuid4().hex[:8]}"


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = twotier.prometheus.metrics_text(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = [
        v for (n, ls), v in samples(registry).items() if n == name and set(labels.items()) <= ls
    ]
    assert found, (name, labels)
    return sum(found)


def exported_metric_names() -> set[str]:
    """Every sample name the exporter writes (histogram suffixes included)."""

    async def scrape() -> set[str]:
        registry = CollectorRegistry()
        async with TwoTierCache(namespace=ns()) as cache:
            twotier.prometheus.instrument(cache, registry)
            return {name for name, _ in samples(registry)}

    return asyncio.run(scrape())


async def test_counters_and_gauges_come_from_the_stats() -> None:
    registry = CollectorRegistry()
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.prometheus.instrument(cache, registry)
        labels = {"namespace": cache.namespace, "instance_id": cache.instance_id}

        @cache.cached(ttl=60, tags=["articles"])
        async def article(n: int) -> int:
            return n

        for n in (1, 1, 1, 2):
            await article(n)
        await cache.invalidate_tag("articles")
        stats = cache.get_stats()
        assert value(registry, "twotier_lookups_total", tier="l1", outcome="hit", **labels) == 2
        assert value(registry, "twotier_lookups_total", tier="l2", outcome="miss", **labels) == 2
        assert value(registry, "twotier_loads_total", **labels) == stats["loads"] == 2
        assert value(registry, "twotier_tag_invalidations_total", **labels) == 1
        assert value(registry, "twotier_l1_entries", **labels) == stats["entries"] == 0
        assert value(registry, "twotier_breaker_open", **labels) == 0
        assert value(registry, "twotier_info", mode="memory", **labels) == 1
        assert value(registry, "twotier_loader_seconds_count", outcome="ok", **labels) == 2


async def test_histograms_come_through_the_observer() -> None:
    registry = CollectorRegistry()
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.prometheus.instrument(cache, registry)

        @cache.cached(ttl=60)
        async def failing(n: int) -> int:
            raise RuntimeError(n)

        for n in range(3):
            with contextlib.suppress(RuntimeError):
                await failing(n)
        cache.events.invalidation_received(SimpleNamespace(kind="t", sent_at=time.time() - 0.2))
        cache.events.breaker_changed("open")  # read at scrape time; the event is ignored
    assert value(registry, "twotier_loader_seconds_count", outcome="error") == 3
    assert value(registry, "twotier_l2_read_seconds_count", outcome="miss") == 3
    assert value(registry, "twotier_invalidation_lag_seconds_count") == 1
    assert value(registry, "twotier_invalidation_lag_seconds_bucket", le="0.1") == 0
    assert value(registry, "twotier_invalidation_lag_seconds_bucket", le="0.25") == 1


async def test_caches_share_a_registry_and_instrument_is_idempotent() -> None:
    registry = CollectorRegistry()
    namespace = ns()
    async with TwoTierCache(namespace=namespace) as a, TwoTierCache(namespace=namespace) as b:
        first = twotier.prometheus.instrument(a, registry)
        assert twotier.prometheus.instrument(a, registry) is first
        twotier.prometheus.instrument(b, registry)
        await a.set("k", 1)
        ids = {dict(ls)["instance_id"] for (n, ls) in samples(registry) if n == "twotier_info"}
        assert ids == {a.instance_id, b.instance_id}
        twotier.prometheus.uninstrument(b, registry)
        left = {dict(ls).get("instance_id") for (n, ls) in samples(registry)}
        assert left == {a.instance_id}
    # a closed cache is no longer reported
    assert not [n for (n, _) in samples(registry) if n == "twotier_info"]


async def test_the_exposition_passes_promtool_check_metrics() -> None:
    registry = CollectorRegistry()
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.prometheus.instrument(cache, registry)
        await cache.set("k", 1)
        await cache.get("k")
        await cache.get("absent")
        text = twotier.prometheus.metrics_text(registry)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    names = {name for name, _ in samples(registry)} or {"twotier_info"}
    assert all(name.startswith("twotier_") for name in names)


async def test_the_asgi_app_serves_the_registry() -> None:
    registry = CollectorRegistry()
    async with TwoTierCache(namespace=ns()) as cache:
        twotier.prometheus.instrument(cache, registry)
        app = twotier.prometheus.make_asgi_app(registry)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "query_string": b"",
            "headers": [],
        }
        await app(scope, receive, send)
    assert sent[0]["status"] == 200
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert b"twotier_lookups_total" in body


def test_the_dashboard_reads_only_metrics_the_exporter_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [
        var["definition"] for var in dashboard["templating"]["list"] if var["type"] == "query"
    ]
    assert len(exprs) > 15
    exported = exported_metric_names() | {"up"}
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)


def test_the_tokenizer_finds_metric_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(x_bucket{a="b(c)"}[5m]))) '
        "> 0.1 and on (namespace) y offset 1h or label_values(z, namespace)"
    )
    assert metric_names(expr) == {"x_bucket", "y", "z"}


def test_the_provisioning_points_grafana_at_the_dashboard_and_prometheus() -> None:
    provisioning = ROOT / "compose" / "grafana" / "provisioning"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "twotier.yml").read_text())
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = dashboards["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    assert "./prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
