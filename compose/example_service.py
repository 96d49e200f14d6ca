"""A minimal ASGI service (no framework) showing twotier in an API module.

GET  /articles/<category>        cached per category, tags "articles" and "category:<c>"
POST /articles/<category>/bump   writes the database, then invalidates the tag
GET  /stats                      cache.get_stats()
GET  /metrics                    Prometheus metrics (twotier.prometheus)

The database is a SQLite file shared by the instances (a stand-in for the ERP's).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import twotier.prometheus
from twotier import cache  # configured from TWOTIER_* (see docker-compose.yml)

DB = os.environ.get("DATABASE_PATH", "erp.sqlite3")


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB)
    conn.execute("CREATE TABLE IF NOT EXISTS articles (category TEXT PRIMARY KEY, version INT)")
    return conn


def _read(category: str) -> int:
    with _db() as conn:
        row = conn.execute("SELECT version FROM articles WHERE category=?", (category,)).fetchone()
        return int(row[0]) if row else 0


def _bump(category: str) -> None:
    with _db() as conn:
        conn.execute(
            "INSERT INTO articles VALUES (?, 1) "
            "ON CONFLICT(category) DO UPDATE SET version = version + 1",
            (category,),
        )


@cache.cached(ttl=300, tags=["articles", "category:{category}"])
async def get_articles_by_category(category: str) -> dict[str, Any]:
    version = await anyio.to_thread.run_sync(_read, category)
    return {"category": category, "version": version, "instance": cache.instance_id}


async def update_articles(category: str) -> None:
    await anyio.to_thread.run_sync(_bump, category)
    await cache.invalidate_tag(f"category:{category}")


twotier.prometheus.instrument(cache)
metrics_app = twotier.prometheus.make_asgi_app()

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    parts = [p for p in scope["path"].split("/") if p]
    if parts == ["metrics"]:
        await metrics_app(scope, receive, send)
        return
    status, body = 404, {"error": "not found"}
    if parts == ["stats"]:
        status, body = 200, cache.get_stats()
    elif len(parts) == 2 and parts[0] == "articles" and scope["method"] == "GET":
        status, body = 200, await get_articles_by_category(parts[1])
    elif len(parts) == 3 and parts[::2] == ["articles", "bump"] and scope["method"] == "POST":
        await update_articles(parts[1])
        status, body = 200, {"bumped": parts[1]}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
