"""OpenTelemetry traces and metrics for twotier caches (extra `otel`: opentelemetry-api).

    import twotier.otel
    twotier.otel.instrument(cache)       # the global tracer and meter providers

Spans (through the observer seam, `twotier._events`):

* ``twotier.get`` and ``twotier.cached`` around each read, with the attributes
  ``twotier.tier`` (l1, l2, loader, joined, none), ``twotier.hit``,
  ``twotier.key_digest`` (a SHA-256 prefix, never the raw key),
  ``twotier.tags``, ``twotier.namespace`` and, for decorated calls,
  ``twotier.function``;
* ``twotier.load`` around the loader (so the loader's own database spans are
  its children) and ``twotier.lease_wait`` around a wait for another
  instance's loader.

The metrics are those of `twotier.prometheus` under OTel names
(``twotier.lookups``, ``twotier.l2_read.duration``, …): the counters and gauges
are observable instruments that read `get_stats()` when the reader collects,
the four durations are histograms fed by the observer. Attributes:
``namespace`` and ``instance_id``. Spans of L1 hits are cheap but not free
(a few microseconds each with the SDK); a sampler that drops them is the way
to keep tracing on a very hot path. The core never imports this module.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import TracerProvider

from ._events import BaseObserver, BreakerChange, L2Outcome, Read
from ._metrics import COUNTERS

if TYPE_CHECKING:
    from ._cache import TwoTierCache

__all__ = ["OTelObserver", "instrument", "uninstrument"]

_SCOPE = "twotier"


class _Instruments:
    """One per meter: histograms, and observable instruments over its caches."""

    def __init__(self, meter: Meter) -> None:
        self.caches: weakref.WeakSet[TwoTierCache] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.l2_read = meter.create_histogram(
            "twotier.l2_read.duration", unit="s", description="Duration of L2 (Redis) reads."
        )
        self.loader = meter.create_histogram(
            "twotier.loader.duration", unit="s", description="Duration of loader runs."
        )
        self.lease_wait = meter.create_histogram(
            "twotier.lease_wait.duration",
            unit="s",
            description="Time spent waiting for another instance's loader (fill lease).",
        )
        self.lag = meter.create_histogram(
            "twotier.invalidation.lag",
            unit="s",
            description="Invalidation propagation lag: receipt minus the sender's send time.",
        )
        meter.create_observable_counter(
            "twotier.lookups",
            callbacks=[self._lookups],
            description="Reads by tier and outcome: l1/hit, l2/hit, l2/miss.",
        )
        for key, (name, help_) in COUNTERS.items():
            meter.create_observable_counter(
                name.replace("twotier_", "twotier.", 1),
                callbacks=[self._counter(key)],
                description=help_,
            )
        for name, key, help_ in (
            ("twotier.l1.entries", "entries", "Entries in L1."),
            ("twotier.outbox.pending", "queued_ops_pending", "Changes queued for Redis."),
        ):
            meter.create_observable_gauge(name, callbacks=[self._counter(key)], description=help_)
        meter.create_observable_gauge(
            "twotier.breaker.open",
            callbacks=[self._breaker],
            description="1 while the circuit breaker around Redis is open.",
        )

    def _live(self) -> list[TwoTierCache]:
        with self.lock:
            return [c for c in self.caches if not c.closed]

    def _lookups(self, options: CallbackOptions) -> Iterable[Observation]:
        for cache in self._live():
            stats, attrs = cache.get_stats(), _attributes(cache)
            yield Observation(stats["l1_hits"], {**attrs, "tier": "l1", "outcome": "hit"})
            yield Observation(stats["l2_hits"], {**attrs, "tier": "l2", "outcome": "hit"})
            yield Observation(stats["misses"], {**attrs, "tier": "l2", "outcome": "miss"})

    def _counter(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for cache in self._live():
                yield Observation(cache.get_stats().get(key, 0), _attributes(cache))

        return observe

    def _breaker(self, options: CallbackOptions) -> Iterable[Observation]:
        for cache in self._live():
            is_open = cache.get_stats().get("breaker_state") == "open"
            yield Observation(1 if is_open else 0, _attributes(cache))


def _attributes(cache: TwoTierCache) -> dict[str, str]:
    return {"namespace": cache.namespace, "instance_id": cache.instance_id}


class OTelObserver(BaseObserver):
    """Spans and histograms for one cache."""

    traces = True

    def __init__(self, cache: TwoTierCache, tracer: trace.Tracer, instruments: _Instruments):
        self._tracer = tracer
        self._instruments = instruments
        self._attrs = _attributes(cache)
        self._span_attrs = {"twotier.namespace": cache.namespace}

    @contextlib.contextmanager
    def span(self, name: str, read: Read | None) -> Iterator[None]:
        with self._tracer.start_as_current_span(name, attributes=self._span_attrs) as span:
            try:
                yield
            finally:
                if read is not None and span.is_recording():
                    span.set_attributes(
                        {
                            "twotier.tier": read.tier,
                            "twotier.hit": read.hit,
                            "twotier.key_digest": read.key_digest,
                            "twotier.tags": list(read.tags),
                        }
                    )
                    if read.function:
                        span.set_attribute("twotier.function", read.function)

    def l2_read(self, seconds: float, outcome: L2Outcome) -> None:
        self._instruments.l2_read.record(seconds, {**self._attrs, "outcome": outcome})

    def loaded(self, seconds: float, ok: bool) -> None:
        outcome = "ok" if ok else "error"
        self._instruments.loader.record(seconds, {**self._attrs, "outcome": outcome})

    def lease_waited(self, seconds: float) -> None:
        self._instruments.lease_wait.record(seconds, self._attrs)

    def invalidation_received(self, kind: str, lag: float | None) -> None:
        if lag is not None:
            self._instruments.lag.record(lag, self._attrs)

    def resynced(self, reason: str) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("twotier.resync", {"reason": reason})

    def breaker_changed(self, state: BreakerChange) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("twotier.breaker", {"state": state})


_instruments: weakref.WeakKeyDictionary[Meter, _Instruments] = weakref.WeakKeyDictionary()
_observers: weakref.WeakKeyDictionary[TwoTierCache, OTelObserver] = weakref.WeakKeyDictionary()
_setup = threading.Lock()


def instrument(
    cache: TwoTierCache,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> OTelObserver:
    """Trace *cache*'s reads and export its metrics (default: the global providers).
    Idempotent: a cache is instrumented once; call `uninstrument` to change providers."""
    from . import __version__

    with _setup:
        observer = _observers.get(cache)
        if observer is not None:
            return observer
        tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider)
        instruments = _instruments.get(meter)
        if instruments is None:
            instruments = _instruments[meter] = _Instruments(meter)
        with instruments.lock:
            instruments.caches.add(cache)
        observer = _observers[cache] = OTelObserver(cache, tracer, instruments)
        cache.events.add(observer)
    return observer


def uninstrument(cache: TwoTierCache) -> None:
    """Stop tracing *cache* and reporting its metrics."""
    with _setup:
        observer = _observers.pop(cache, None)
        if observer is None:
            return
        cache.events.remove(observer)
        with observer._instruments.lock:
            observer._instruments.caches.discard(cache)
