"""http_cached keeps FastAPI's semantics (issue 19, item 2): FastAPI renders every
response, on a miss and on a hit, as it would without the decorator; returned
`Response` objects pass through uncached; `Set-Cookie` is never stored; the
OpenAPI schema is the endpoint's own (the example ERP service's 9 cached routes too)."""

from __future__ import annotations

import inspect
import sys
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    StreamingResponse,
)
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from twotier import TwoTierCache
from twotier.fastapi import http_cached, lifespan
from twotier.strategy import _all_routes

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def fresh() -> TwoTierCache:
    return TwoTierCache(namespace=f"m{uuid.uuid4().hex[:8]}")


class UserOut(BaseModel):
    name: str


class UserInDB(UserOut):
    hashed_password: str


def stored_values(cache: TwoTierCache, client: TestClient) -> list[Any]:
    keys = list(cache.local._data.keys())  # type: ignore[attr-defined]
    return [client.portal.call(cache.get, k) for k in keys]  # type: ignore[union-attr]


def test_response_model_and_return_annotation_filter_on_miss_and_hit() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    @app.get("/users/{name}", response_model=UserOut)
    @http_cached(cache, ttl=60)
    async def by_model(name: str) -> Any:
        return UserInDB(name=name, hashed_password="$2b$secret")

    @app.get("/me/{name}")
    @http_cached(cache, ttl=60)
    async def by_annotation(name: str) -> UserOut:
        return UserInDB(name=name, hashed_password="$2b$secret")

    with TestClient(app) as client:
        for path in ("/users/ann", "/me/ann"):
            miss, hit = client.get(path), client.get(path)
            assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "L1")
            assert miss.json() == hit.json() == {"name": "ann"}
        stored = repr(stored_values(cache, client))
        assert "ann" in stored
        assert "secret" not in stored  # never reaches the cache


def test_status_code_response_class_and_headers_set_on_response() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    runs: list[str] = []

    @app.get("/accepted", status_code=202)
    @http_cached(cache, ttl=60)
    async def accepted() -> dict[str, str]:
        return {"queued": "yes"}

    @app.get("/page", response_class=HTMLResponse)
    @http_cached(cache, ttl=60)
    async def page() -> str:
        return "<h1>hi</h1>"

    @app.get("/text", response_class=PlainTextResponse)
    @http_cached(cache, ttl=60)
    async def text() -> str:
        return "plain"

    @app.get("/rows")
    @http_cached(cache, ttl=60)
    async def rows(response: Response) -> list[int]:
        runs.append("rows")
        response.headers["X-Total-Count"] = "3"
        response.set_cookie("session", "refreshed-for-the-first-caller")
        return [1, 2, 3]

    with TestClient(app) as client:
        for _ in range(2):
            a = client.get("/accepted")
            assert (a.status_code, a.json()) == (202, {"queued": "yes"})
            p = client.get("/page")
            assert (p.headers["content-type"], p.text) == (
                "text/html; charset=utf-8",
                "<h1>hi</h1>",
            )
            t = client.get("/text")
            assert (t.headers["content-type"], t.text) == ("text/plain; charset=utf-8", "plain")
        miss = client.get("/rows")
        assert miss.headers["x-total-count"] == "3"
        assert "refreshed-for-the-first-caller" in miss.headers["set-cookie"]
        client.cookies.clear()
        hit = client.get("/rows")
        assert (hit.headers["x-cache"], hit.headers["x-total-count"]) == ("L1", "3")
        assert "set-cookie" not in hit.headers  # never stored, never replayed
        assert hit.json() == [1, 2, 3]
        stored = repr(stored_values(cache, client))
    assert runs == ["rows"]
    assert "x-total-count" in stored
    assert "refreshed" not in stored


def test_an_error_status_set_on_response_is_not_cached() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    runs: list[int] = []

    @app.get("/thing/{n}")
    @http_cached(cache, ttl=60)
    async def thing(n: int, response: Response) -> dict[str, Any]:
        runs.append(n)
        if n == 0:
            response.status_code = 404
            return {"error": "none"}
        return {"n": n}

    with TestClient(app) as client:
        assert client.get("/thing/0").status_code == 404
        assert client.get("/thing/0").status_code == 404
    assert runs == [0, 0]


def test_returned_response_objects_pass_through_uncached() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    runs: list[str] = []

    @app.get("/login")
    @http_cached(cache, ttl=60)
    async def login() -> Response:
        runs.append("login")
        redirect = RedirectResponse("/home", status_code=303)
        redirect.set_cookie("sid", f"cookie-{len(runs)}")
        return redirect

    @app.get("/missing")
    @http_cached(cache, ttl=60)
    async def missing() -> Response:
        runs.append("missing")
        return JSONResponse({"detail": "gone"}, status_code=404)

    @app.get("/stream")
    @http_cached(cache, ttl=60)
    async def stream() -> Response:
        async def chunks():  # type: ignore[no-untyped-def]
            yield b"a"
            yield b"b"

        return StreamingResponse(chunks(), media_type="text/plain")

    with TestClient(app, follow_redirects=False) as client:
        first, second = client.get("/login"), client.get("/login")
        assert (first.status_code, second.status_code) == (303, 303)
        assert "cookie-1" in first.headers["set-cookie"]
        assert "cookie-2" in second.headers["set-cookie"]  # its own, not the first caller's
        assert client.get("/missing").status_code == 404
        assert client.get("/missing").status_code == 404
        assert client.get("/stream").text == "ab"
        assert stored_values(cache, client) == []
    assert runs == ["login", "login", "missing", "missing"]


def test_exceptions_are_not_cached_and_other_methods_pass_through() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    runs: list[str] = []

    @app.api_route("/both", methods=["GET", "POST"])
    @http_cached(cache, ttl=60)
    async def both() -> dict[str, int]:
        runs.append("x")
        return {"n": len(runs)}

    @app.get("/fails")
    @http_cached(cache, ttl=60)
    async def fails() -> None:
        raise HTTPException(404)

    with TestClient(app) as client:
        assert client.post("/both").json() == {"n": 1}  # was a 500
        assert client.post("/both").json() == {"n": 2}  # a POST is never cached
        assert client.get("/both").json() == {"n": 3}
        assert client.get("/both").json() == {"n": 3}
        assert client.get("/fails").status_code == 404
        assert "x-cache" not in client.get("/fails").headers


def schema_without_decorators(app: FastAPI) -> dict[str, Any]:
    """The same routes, on the undecorated endpoints (`__wrapped__`)."""
    plain = FastAPI(title=app.title)
    for route in _all_routes(app.routes):
        if not isinstance(route, APIRoute):
            continue
        endpoint = inspect.unwrap(route.endpoint)
        plain.add_api_route(
            route.path, endpoint, methods=sorted(route.methods), name=route.name,
            tags=list(route.tags), status_code=route.status_code,
            response_class=route.response_class, include_in_schema=route.include_in_schema,
        )  # fmt: skip
    return plain.openapi()


def test_the_openapi_schema_is_the_one_without_the_decorator() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    @app.get("/users/{name}", status_code=201)
    @http_cached(cache, ttl=60)
    async def user(name: str, q: int = 0) -> UserOut:
        return UserOut(name=name)

    assert app.openapi() == schema_without_decorators(app)
    response = app.openapi()["paths"]["/users/{name}"]["get"]["responses"]["201"]
    assert response["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserOut"
    }


def test_the_erp_services_cached_routes_have_their_full_schema() -> None:
    sys.path.insert(0, str(COMPOSE))
    try:
        from erp.app import app
    finally:
        sys.path.remove(str(COMPOSE))
    cached = [
        r for r in _all_routes(app.routes)
        if isinstance(r, APIRoute) and hasattr(r.endpoint, "__twotier_http__")
    ]  # fmt: skip
    assert len(cached) == 9
    schema, plain = app.openapi(), schema_without_decorators(app)
    assert schema == plain
    for route in cached:
        ok = schema["paths"][route.path]["get"]["responses"]["200"]
        assert ok["content"]["application/json"]["schema"] != {}, route.path
