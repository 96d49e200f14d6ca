"""Operations endpoints: /health (database, cache ping, breaker) and /metrics (Prometheus)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from twotier import TwoTierError
from twotier.prometheus import instrument, metrics_text

from .cache import cache
from .db import get_session

# One registry per service process, exporting its cache (`docs/observability.md`).
REGISTRY = CollectorRegistry()
instrument(cache, REGISTRY)

router = APIRouter(tags=["operations"])

# The counters that only grow; every other number in get_stats() is a gauge.


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


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus text from twotier's exporter (`twotier.prometheus`)."""
    return Response(metrics_text(REGISTRY), media_type=CONTENT_TYPE_LATEST)
