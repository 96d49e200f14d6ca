"""http_cached follows RFC 9110/9111 (issue 19, item 3): If-None-Match over all its
lines, ETags per content coding and equal on every instance, the client's no-store
and max-age=0, HEAD, Age; and the background options (item 6): early refresh
really refreshes, never with a torn-down dependency, and a stale answer says STALE."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.testclient import TestClient

import twotier._decorator as decorator_module
from twotier import ConfigurationError, TwoTierCache
from twotier.fastapi import cached, http_cached, lifespan


def fresh(**options: Any) -> TwoTierCache:
    return TwoTierCache(namespace=f"r{uuid.uuid4().hex[:8]}", **options)


def app_for(cache: TwoTierCache, runs: list[int], **options: Any) -> FastAPI:
    app = FastAPI(lifespan=lifespan(cache))
    app.add_middleware(GZipMiddleware, minimum_size=100)

    @app.api_route("/rows", methods=["GET", "HEAD"])
    @http_cached(cache, ttl=60, **options)
    async def rows() -> list[dict[str, int]]:
        runs.append(1)
        return [{"id": i, "value": i * i} for i in range(50)]

    return app


def test_if_none_match_on_several_lines_and_lists() -> None:
    runs: list[int] = []
    with TestClient(app_for(fresh(), runs)) as client:
        etag = client.get("/rows").headers["etag"]
        lines = [("If-None-Match", '"a", "b,c"'), ("If-None-Match", f'"d", W/{etag}')]
        assert client.get("/rows", headers=lines).status_code == 304
        assert client.get("/rows", headers=[("If-None-Match", '"x"')]).status_code == 200
        assert client.get("/rows", headers={"If-None-Match": "*"}).status_code == 304
        # A quoted comma is part of a tag, not a separator.
        assert client.get("/rows", headers={"If-None-Match": f'"{etag[1:4]},"'}).status_code == 200


def test_etags_differ_per_content_coding() -> None:
    runs: list[int] = []
    with TestClient(app_for(fresh(), runs)) as client:
        gz = client.get("/rows", headers={"Accept-Encoding": "gzip"})
        plain = client.get("/rows", headers={"Accept-Encoding": "identity"})
        assert gz.headers["content-encoding"] == "gzip"
        assert "content-encoding" not in plain.headers
        assert gz.json() == plain.json()
        assert gz.headers["etag"] != plain.headers["etag"]
        assert "accept-encoding" in plain.headers["vary"].lower()
        again = client.get(
            "/rows", headers={"Accept-Encoding": "gzip", "If-None-Match": gz.headers["etag"]}
        )
        assert again.status_code == 304
        cross = client.get(
            "/rows", headers={"Accept-Encoding": "identity", "If-None-Match": gz.headers["etag"]}
        )
        assert cross.status_code == 200
    assert len(runs) == 1


def test_every_instance_computes_the_same_etag_even_without_a_shared_entry() -> None:
    """Two instances that share nothing (as with an entry too big for Redis) load
    their own copies: the ETag is a digest of the answer, so it is the same."""
    one, two = app_for(fresh(), []), app_for(fresh(), [])
    with TestClient(one) as a, TestClient(two) as b:
        etag = a.get("/rows").headers["etag"]
        from_b = b.get("/rows", headers={"If-None-Match": etag})
        assert (from_b.status_code, from_b.headers["x-cache"]) == (304, "MISS")


def test_client_no_store_and_max_age_zero() -> None:
    runs: list[int] = []
    with TestClient(app_for(fresh(), runs)) as client:
        first = client.get("/rows", headers={"Cache-Control": "no-store"})
        assert (first.headers["x-cache"], first.headers["cache-control"]) == ("MISS", "no-store")
        assert client.get("/rows").headers["x-cache"] == "MISS"  # nothing was stored
        assert client.get("/rows", headers={"Cache-Control": "no-store"}).headers["x-cache"] == "L1"
        # Without the opt-in, max-age=0 is answered from the cache (documented).
        assert (
            client.get("/rows", headers={"Cache-Control": "max-age=0"}).headers["x-cache"] == "L1"
        )
    assert len(runs) == 2
    runs.clear()
    with TestClient(app_for(fresh(), runs, revalidate_on_no_cache=True)) as client:
        client.get("/rows")
        assert (
            client.get("/rows", headers={"Cache-Control": "max-age=0"}).headers["x-cache"] == "MISS"
        )
        assert (
            client.get("/rows", headers={"Cache-Control": "no-cache"}).headers["x-cache"] == "MISS"
        )
    assert len(runs) == 3


def test_head_is_cached_like_get_and_age_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    import twotier._http_cached as http_module

    now = [2_000_000.0]
    monkeypatch.setattr(http_module.time, "time", lambda: now[0])
    runs: list[int] = []
    with TestClient(app_for(fresh(), runs)) as client:
        head = client.head("/rows")
        assert (head.status_code, head.content, head.headers["x-cache"]) == (200, b"", "MISS")
        now[0] += 7.9
        got = client.get("/rows")
        assert (got.headers["x-cache"], got.headers["etag"]) == ("L1", head.headers["etag"])
        assert (got.headers["age"], got.headers["cache-control"]) == ("7", "max-age=60")
    assert len(runs) == 1


class Session:
    closed = False


async def get_session() -> AsyncIterator[Session]:
    session = Session()
    yield session
    session.closed = True


def test_background_options_are_refused_where_dependencies_would_be_torn_down() -> None:
    cache = fresh()
    with pytest.raises(ConfigurationError, match=r"early_refresh.*session.*torn down"):

        @http_cached(cache, ttl=60, early_refresh=1.0, ignore=["session"])
        async def a(session: Session = Depends(get_session)) -> int:
            return 1

    with pytest.raises(ConfigurationError, match=r"soft_timeout.*session"):

        @cached(cache, ttl=60, soft_timeout=0.1, stale_if_error=60, ignore=["session"])
        async def b(item: int, session: Session = Depends(get_session)) -> int:
            return item

    @http_cached(cache, ttl=60, stale_if_error=60, ignore=["session"])
    async def c(session: Session = Depends(get_session)) -> int:
        return 1


def test_early_refresh_refreshes_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    cache = fresh(clock=lambda: now[0])
    monkeypatch.setattr(decorator_module.random, "random", lambda: 0.5)  # XFetch's draw
    app = FastAPI(lifespan=lifespan(cache))
    loads: list[int] = []
    refreshed = threading.Event()

    @app.get("/report")
    @http_cached(cache, ttl=60, early_refresh=10.0)
    async def report() -> dict[str, int]:
        now[0] += 5  # the load takes 5 s (XFetch's delta)
        loads.append(1)
        if len(loads) == 2:
            refreshed.set()
        return {"version": len(loads)}

    with TestClient(app) as client:
        assert client.get("/report").json() == {"version": 1}
        now[0] += 50  # 5 s before expiry: -5 × 10 × ln(0.5) = 35 s ahead
        hit = client.get("/report")
        assert (hit.headers["x-cache"], hit.json()) == ("L1", {"version": 1})
        assert refreshed.wait(10)  # a bounded wait for the background load, not a timing
        # The refresh stores its result after the load returns: ask until it shows
        # (a bounded number of requests, each a turn of the app's loop).
        versions = [client.get("/report").json()["version"] for _ in range(50)]
        assert versions[-1] == 2
        assert set(versions) <= {1, 2}


def test_a_stale_answer_says_stale() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    state = {"fail": False}

    @app.get("/price")
    @http_cached(cache, ttl=60, tags=["price"], stale_if_error=600)
    async def price() -> dict[str, int]:
        if state["fail"]:
            raise HTTPException(503)
        return {"price": 7}

    with TestClient(app) as client:
        assert client.get("/price").headers["x-cache"] == "MISS"
        client.portal.call(cache.invalidate_tag, "price")  # type: ignore[union-attr]
        state["fail"] = True
        stale = client.get("/price")
        assert (stale.status_code, stale.json(), stale.headers["x-cache"]) == (
            200, {"price": 7}, "STALE",
        )  # fmt: skip
