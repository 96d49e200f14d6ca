"""Operations endpoints: /health (database, cache ping, breaker) and /metrics (Prometheus)."""

from __future__ import annotations

import importlib
import time
from typing import Any

from fastapi import APIRouter, Depends, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from twotier import TwoTierError

from .cache import cache
from .db import get_session

router = APIRouter(tags=["operations"])

# The counters that only grow; every other number in get_stats() is a gauge.
_COUNTERS = frozenset(
    {
        "l1_hits",
        "l2_hits",
        "hits",
        "misses",
        "sets",
        "deletes",
        "tag_invalidations",
        "clears",
        "loads",
        "load_errors",
        "joined_loads",
        "stale_sets_refused",
        "l2_errors",
        "garbage_entries",
        "invalidations_received",
        "bad_messages",
        "resyncs",
        "l1_clears",
        "queued_ops",
        "dropped_ops",
        "stale_served",
        "lease_waits",
        "early_refreshes",
        "oversized_values",
    }
)


@router.get("/health")
async def health(
    response: Response, session: AsyncSession = Depends(get_session)
) -> dict[str, Any]:
    """200 while the service can answer: Redis down is degraded, not down (the cache
    serves from L1 and the database); the database down is a 503."""
    stats = cache.get_stats()
    report: dict[str, Any] = {
        "instance": stats["instance"],
        "namespace": cache.namespace,
        "redis": "memory-only" if cache.redis_url is None else "up",
        "breaker": stats["breaker_state"],
    }
    try:
        report["cache_ping_ms"] = round(1000 * await cache.ping(), 3)
    except TwoTierError as exc:
        report["redis"], report["cache_error"] = "down", str(exc)
    try:
        started = time.perf_counter()
        await session.execute(text("SELECT 1"))
        report["database_ms"] = round(1000 * (time.perf_counter() - started), 3)
        report["database"] = "up"
    except Exception as exc:  # any driver's error: the point is to report it
        report["database"], report["database_error"] = "down", type(exc).__name__
        response.status_code = 503
    report["status"] = (
        "down"
        if report["database"] == "down"
        else "degraded"
        if report["redis"] == "down"
        else "ok"
    )
    return report


def fallback_metrics(stats: dict[str, Any], namespace: str) -> str:
    """Minimal Prometheus text from get_stats(), until twotier.prometheus is there."""
    labels = f'namespace="{namespace}",instance="{stats.get("instance", "")}"'
    lines = []
    for name, value in sorted(stats.items()):
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float):
            continue
        kind = "counter" if name in _COUNTERS else "gauge"
        metric = f"twotier_{name}_total" if kind == "counter" else f"twotier_{name}"
        lines += [f"# TYPE {metric} {kind}", f"{metric}{{{labels}}} {value}"]
    breaker = stats.get("breaker_state", "none")
    lines += ["# TYPE twotier_breaker_state gauge"]
    for state in ("closed", "open", "half_open", "none"):
        lines.append(f'twotier_breaker_state{{{labels},state="{state}"}} {int(breaker == state)}')
    return "\n".join(lines) + "\n"


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus text. twotier's exporter (twotier.prometheus, another piece of work)
    is used when it is installed and offers `render(cache)`; until then, the
    fallback above."""
    try:
        exporter: Any = importlib.import_module("twotier.prometheus")
    except ImportError:
        exporter = None
    if exporter is not None and callable(getattr(exporter, "render", None)):
        body = exporter.render(cache)
    else:
        body = fallback_metrics(cache.get_stats(), cache.namespace)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
