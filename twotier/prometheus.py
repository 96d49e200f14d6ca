"""Prometheus metrics for twotier caches (extra `prometheus`: prometheus_client).

    import twotier.prometheus
    twotier.prometheus.instrument(cache)                    # the default registry
    app.mount("/metrics", twotier.prometheus.make_asgi_app())   # or make_wsgi_app()

Counters and gauges are collected, not pushed (STYLE.md 17): a custom
collector reads each instrumented cache's `get_stats()` when Prometheus
scrapes, so the L1 hit path pays nothing for them. The four latency
histograms (L2 reads, loaders, lease waits, invalidation propagation lag)
need a timing per event and come through the observer seam
(`twotier._events.Observer`). Every metric is named `twotier_…` and labelled
with the cache's `namespace` and `instance_id`. The label is not called
`instance`: Prometheus gives every scraped series an `instance` label of its
own (host:port of the target) and would rename ours to `exported_instance`.

The metric table, the alert rules built on it and the dashboard are described
in docs/observability.md. The core never imports this module.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client import make_asgi_app as _make_asgi_app
from prometheus_client import make_wsgi_app as _make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ._events import BaseObserver, BreakerChange, L2Outcome
from ._metrics import COUNTERS

if TYPE_CHECKING:
    from ._cache import TwoTierCache

__all__ = [
    "COUNTERS",
    "PrometheusObserver",
    "instrument",
    "make_asgi_app",
    "make_wsgi_app",
    "metrics_text",
    "uninstrument",
]

LABELS = ("namespace", "instance_id")

#: The histograms' buckets, in seconds, each around what is normal for it.
L2_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LOADER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LEASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class _Exporter:
    """One per registry: the histograms, and the collector over its caches."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.caches: weakref.WeakSet[TwoTierCache] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.l2_read = Histogram(
            "twotier_l2_read_seconds",
            "Duration of L2 (Redis) reads, by outcome: hit, miss, error.",
            [*LABELS, "outcome"],
            buckets=L2_BUCKETS,
            registry=registry,
        )
        self.loader = Histogram(
            "twotier_loader_seconds",
            "Duration of loader runs, by outcome: ok, error.",
            [*LABELS, "outcome"],
            buckets=LOADER_BUCKETS,
            registry=registry,
        )
        self.lease_wait = Histogram(
            "twotier_lease_wait_seconds",
            "Time spent waiting for another instance's loader (fill lease).",
            LABELS,
            buckets=LEASE_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "twotier_invalidation_lag_seconds",
            "Invalidation propagation lag: receipt minus the sender's send time (wall clocks).",
            LABELS,
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        registry.register(_StatsCollector(self))


class _StatsCollector:
    """Counters and gauges from `get_stats()`, read at scrape time."""

    def __init__(self, exporter: _Exporter) -> None:
        self._exporter = exporter

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering does not read any cache, and a second
        # collector of the same names in one registry fails loudly.
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        with self._exporter.lock:
            caches = [c for c in self._exporter.caches if not c.closed]
        families = self._families()
        for cache in caches:
            stats = cache.get_stats()
            labels = [cache.namespace, cache.instance_id]
            _fill(families, labels, stats, cache)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, Any]:
        def counter(name: str, help_: str, extra: Iterable[str] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(name, help_, labels=[*LABELS, *extra])

        def gauge(name: str, help_: str, extra: Iterable[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help_, labels=[*LABELS, *extra])

        families: dict[str, Any] = {
            "lookups": counter(
                "twotier_lookups",
                "Reads by tier and outcome: l1/hit, l2/hit, l2/miss (a miss of both tiers).",
                ("tier", "outcome"),
            ),
        }
        for key, (name, help_) in COUNTERS.items():
            families[key] = counter(name, help_)
        families.update(
            entries=gauge("twotier_l1_entries", "Entries in L1."),
            tags=gauge("twotier_l1_tags", "Distinct tags of the usable L1 entries."),
            outbox=gauge("twotier_outbox_pending", "Changes queued for Redis, not yet delivered."),
            available=gauge("twotier_redis_available", "1 while Redis answers and the link is up."),
            breaker=gauge(
                "twotier_breaker_open", "1 while the circuit breaker around Redis is open."
            ),
            info=gauge("twotier_info", "Always 1; the cache's mode (redis, memory).", ("mode",)),
        )
        return families


def _fill(families: dict[str, Any], labels: list[str], stats: dict[str, Any], cache: Any) -> None:
    lookups = families["lookups"]
    lookups.add_metric([*labels, "l1", "hit"], stats["l1_hits"])
    lookups.add_metric([*labels, "l2", "hit"], stats["l2_hits"])
    lookups.add_metric([*labels, "l2", "miss"], stats["misses"])
    for key in COUNTERS:
        families[key].add_metric(labels, stats.get(key, 0))
    families["entries"].add_metric(labels, stats["entries"])
    families["tags"].add_metric(labels, stats["tags"])
    families["outbox"].add_metric(labels, stats.get("queued_ops_pending", 0))
    families["available"].add_metric(labels, 1.0 if stats.get("redis_available") else 0.0)
    families["breaker"].add_metric(labels, 1.0 if stats.get("breaker_state") == "open" else 0.0)
    mode = "memory" if cache.redis_url is None else "redis"
    families["info"].add_metric([*labels, mode], 1.0)


class PrometheusObserver(BaseObserver):
    """Feeds one cache's events into its registry's histograms."""

    traces = False

    def __init__(self, exporter: _Exporter, cache: TwoTierCache) -> None:
        self._exporter = exporter
        self._cache = weakref.ref(cache)
        self._bind(cache.namespace, cache.instance_id)

    def _bind(self, namespace: str, instance_id: str) -> None:
        exporter = self._exporter
        labels = (namespace, instance_id)
        self._l2 = {o: exporter.l2_read.labels(*labels, o) for o in ("hit", "miss", "error")}
        self._loader = {True: exporter.loader.labels(*labels, "ok")}
        self._loader[False] = exporter.loader.labels(*labels, "error")
        self._lease = exporter.lease_wait.labels(*labels)
        self._lag = exporter.lag.labels(*labels)
        self._labels = labels

    def _follow(self) -> None:
        """A forked child is a new instance with a new id (guarantee 11): its
        series take the new id, as its scraped stats do, and the parent's
        series inherited with the registry leave the child's output. Checked
        per event (one comparison): the label children are bound once, not
        looked up per observation."""
        cache = self._cache()
        if cache is not None and cache.instance_id != self._labels[1]:
            self.forget()
            self._bind(cache.namespace, cache.instance_id)

    def l2_read(self, seconds: float, outcome: L2Outcome) -> None:
        self._follow()
        self._l2[outcome].observe(seconds)

    def loaded(self, seconds: float, ok: bool) -> None:
        self._follow()
        self._loader[ok].observe(seconds)

    def lease_waited(self, seconds: float) -> None:
        self._follow()
        self._lease.observe(seconds)

    def invalidation_received(self, kind: str, lag: float | None) -> None:
        if lag is not None:
            self._follow()
            self._lag.observe(lag)

    def breaker_changed(self, state: BreakerChange) -> None:
        pass  # the breaker gauge is read at scrape time

    def forget(self) -> None:
        """Drop this cache's histogram series from the registry."""
        exporter = self._exporter
        for histogram, extra in (
            (exporter.l2_read, ("hit", "miss", "error")),
            (exporter.loader, ("ok", "error")),
        ):
            for value in extra:
                histogram.remove(*self._labels, value)
        exporter.lease_wait.remove(*self._labels)
        exporter.lag.remove(*self._labels)


_exporters: weakref.WeakKeyDictionary[CollectorRegistry, _Exporter] = weakref.WeakKeyDictionary()
_observers: weakref.WeakKeyDictionary[TwoTierCache, dict[int, PrometheusObserver]] = (
    weakref.WeakKeyDictionary()
)
_setup = threading.Lock()


def instrument(
    cache: TwoTierCache, registry: CollectorRegistry | None = None
) -> PrometheusObserver:
    """Export *cache*'s metrics through *registry* (default: prometheus_client's
    global one). Idempotent; any number of caches may share one registry."""
    registry = REGISTRY if registry is None else registry
    with _setup:
        exporter = _exporters.get(registry)
        if exporter is None:
            exporter = _exporters[registry] = _Exporter(registry)
        per_cache = _observers.setdefault(cache, {})
        observer = per_cache.get(id(registry))
        if observer is None:
            observer = PrometheusObserver(exporter, cache)
            per_cache[id(registry)] = observer
            cache.events.add(observer)
        with exporter.lock:
            exporter.caches.add(cache)
    return observer


def uninstrument(cache: TwoTierCache, registry: CollectorRegistry | None = None) -> None:
    """Stop exporting *cache* (its series disappear from the next scrape)."""
    registry = REGISTRY if registry is None else registry
    with _setup:
        exporter = _exporters.get(registry)
        observer = _observers.get(cache, {}).pop(id(registry), None)
        if exporter is None or observer is None:
            return
        cache.events.remove(observer)
        observer.forget()
        with exporter.lock:
            exporter.caches.discard(cache)


def metrics_text(registry: CollectorRegistry | None = None) -> bytes:
    """The exposition text of *registry*, as a `/metrics` endpoint serves it."""
    return generate_latest(REGISTRY if registry is None else registry)


def make_asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving `/metrics` (prometheus_client's, on the same registry)."""
    return _make_asgi_app(REGISTRY if registry is None else registry)


def make_wsgi_app(registry: CollectorRegistry | None = None) -> Any:
    """A WSGI app serving `/metrics` (prometheus_client's, on the same registry)."""
    return _make_wsgi_app(REGISTRY if registry is None else registry)
