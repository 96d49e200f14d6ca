"""Keys of HTTP-cached endpoints: no credential in a Redis key name (issue 19, item 4),
and route-aware, with duplicate names refused (item 5)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header
from fastapi.testclient import TestClient

from twotier import ConfigurationError, TwoTierCache
from twotier.fastapi import http_cached, lifespan


def fresh() -> TwoTierCache:
    return TwoTierCache(namespace=f"k{uuid.uuid4().hex[:8]}")


def keys_of(cache: TwoTierCache) -> list[str]:
    return list(cache.local._data.keys())  # type: ignore[attr-defined]


def test_credentials_never_appear_in_key_names() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    def token(authorization: str = Header()) -> str:
        return authorization

    @app.get("/a/{account_id}")
    @http_cached(cache, ttl=60)
    async def by_header(account_id: int, authorization: str = Header()) -> int:
        return account_id

    @app.get("/b")
    @http_cached(cache, ttl=60)
    async def by_query(api_key: str) -> str:
        return api_key[:1]

    @app.get("/c")
    @http_cached(cache, ttl=60)
    async def by_dependency(bearer: str = Depends(token)) -> str:
        return bearer[:1]

    secret = "Bearer s3cr3t-t0ken"
    with TestClient(app) as client:
        assert client.get("/a/7", headers={"Authorization": secret}).json() == 7
        assert client.get("/b", params={"api_key": "s3cr3t-t0ken"}).json() == "s"
        assert client.get("/c", headers={"Authorization": secret}).json() == "B"
        names = keys_of(cache)
    assert len(names) == 3
    assert not [k for k in names if "s3cr3t" in k]
    # Still useful names: the endpoint, its route, its integer path parameters.
    readable = "[/a/{account_id}](account_id=7)#"
    assert any(k.startswith(f"{__name__}.") and readable in k for k in names)


def test_endpoints_built_in_a_loop_need_names_and_stay_apart() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    def report(kind: str, name: str | None) -> Callable[[], Awaitable[dict[str, str]]]:
        @http_cached(cache, ttl=60, name=name)
        async def endpoint() -> dict[str, str]:
            return {"kind": kind}

        return endpoint

    app.get("/reports/sales")(report("sales", "reports.sales"))
    app.get("/reports/stock")(report("stock", "reports.stock"))
    report("x", None)
    with pytest.raises(ConfigurationError, match="give each its own name="):
        report("y", None)
    with pytest.raises(ConfigurationError, match=r"reports\.sales"):
        report("again", "reports.sales")
    with TestClient(app) as client:
        assert client.get("/reports/sales").json() == {"kind": "sales"}
        assert client.get("/reports/stock").json() == {"kind": "stock"}


def test_one_router_per_tenant_and_one_app_per_mount_do_not_share_entries() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    calls: list[str] = []

    router = APIRouter()

    @router.get("/orders")
    @http_cached(cache, ttl=60)
    async def orders(tenant: str = "?") -> list[str]:
        calls.append("router")
        return [f"order of call {len(calls)}"]

    app.include_router(router, prefix="/acme")
    app.include_router(router, prefix="/globex")

    sub = FastAPI()

    @sub.get("/stock")
    @http_cached(cache, ttl=60)
    async def stock() -> list[str]:
        calls.append("mount")
        return [f"stock of call {len(calls)}"]

    app.mount("/north", sub)
    app.mount("/south", sub)
    with TestClient(app) as client:
        acme, globex = client.get("/acme/orders").json(), client.get("/globex/orders").json()
        assert acme != globex
        assert client.get("/acme/orders").json() == acme
        north, south = client.get("/north/stock").json(), client.get("/south/stock").json()
        assert north != south
        assert client.get("/south/stock").json() == south
    assert calls == ["router", "router", "mount", "mount"]


def test_the_strategy_page_key_spec(tmp_path: Any) -> None:
    cache = fresh()

    @http_cached(cache, ttl=60)
    async def item(item_id: int, q: str = "") -> int:
        return item_id

    info = item.__twotier_http__  # type: ignore[attr-defined]
    name = f"{__name__}.test_the_strategy_page_key_spec.<locals>.item.http"
    assert info["key"] == f"{name}(item_id,q)"
