"""twotier.fastapi without a server: the lifespan, keys without the framework's
parameters, and HTTP caching (ETag, 304, max-age, X-Cache, no-cache), through
Starlette's TestClient on a memory-mode cache. The same over Redis and several
processes: integration/test_erp.py."""

import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import (
    BackgroundTasks,
    Depends,
    FastAPI,
    HTTPException,
    Request,
    Response,
    Security,
    WebSocket,
)
from fastapi.testclient import TestClient

import twotier._http_cached as http_module
from twotier import TwoTierCache
from twotier.fastapi import cached, http_cached, injected_parameters, invalidates, lifespan


class Session:
    """Stands for a database session: no stable repr."""


def get_session() -> Iterator[Session]:
    yield Session()


def current_user(request: Request) -> int:
    return int(request.headers.get("x-user", "0"))


def fresh() -> TwoTierCache:
    return TwoTierCache(namespace=f"f{uuid.uuid4().hex[:8]}")


def test_injected_parameters_are_found_by_type_and_by_dependency() -> None:
    async def endpoint(
        item_id: int,
        request: Request,
        response: Response,
        tasks: BackgroundTasks,
        ws: WebSocket,
        session: Session = Depends(get_session),
        user: Annotated[int, Depends(current_user)] = 0,
        scoped: int = Security(current_user),
        q: str | None = None,
    ) -> None: ...

    assert injected_parameters(endpoint) == {
        "request", "response", "tasks", "ws", "session", "user", "scoped",
    }  # fmt: skip


def test_keys_hold_dependency_values_unless_ignored() -> None:
    cache = fresh()

    @cached(cache, tags=["user:{user}"])
    async def dashboard(user: int = Depends(current_user)) -> None: ...

    assert dashboard.key(7) != dashboard.key(8)
    assert "7" not in dashboard.key(7).partition("#")[0]  # a dependency value is hashed

    @cached(cache, ignore=["session"])
    async def f(item_id: int, session: Session = Depends(get_session)) -> None: ...

    assert f.key(1, Session()) == f.key(1, Session())
    assert f.key(1, Session()).endswith("f(1)")


def make_app(cache: TwoTierCache, **options: Any) -> tuple[FastAPI, dict[str, Any]]:
    db: dict[str, Any] = {"rows": {1: {"id": 1, "amount": 10}}, "loads": 0}
    app = FastAPI(lifespan=lifespan(cache))

    @app.get("/charges/{charge_id}")
    @http_cached(
        cache, ttl=60, tags=["charges", "charge:{charge_id}"], ignore=["request", "session"],
        **options,
    )  # fmt: skip
    async def get_charge(
        charge_id: int, request: Request, session: Session = Depends(get_session)
    ) -> dict[str, Any]:
        db["loads"] += 1
        row = db["rows"].get(charge_id)
        if row is None:
            raise HTTPException(404, "no such charge")
        return dict(row)

    @app.get("/charges")
    @http_cached(
        cache, ttl=60, tags=["charges", "list"], unless=lambda rows: not rows, ignore=["session"]
    )
    async def list_charges(session: Session = Depends(get_session)) -> list[dict[str, Any]]:
        db["loads"] += 1
        return list(db["rows"].values())

    @app.put("/charges/{charge_id}")
    @invalidates(cache, "charge:{charge_id}", "list")
    async def put_charge(charge_id: int, body: dict[str, Any]) -> dict[str, Any]:
        db["rows"][charge_id] = {"id": charge_id, **body}
        return {"ok": True}

    return app, db


def test_lifespan_starts_and_closes_the_cache() -> None:
    cache = fresh()
    app, _ = make_app(cache)
    with TestClient(app) as client:
        assert client.get("/charges/1").status_code == 200
        assert not cache.closed
    assert cache.closed


def test_etag_304_and_x_cache() -> None:
    cache = fresh()
    app, db = make_app(cache)
    with TestClient(app) as client:
        first = client.get("/charges/1")
        assert first.status_code == 200
        assert first.json() == {"id": 1, "amount": 10}
        assert first.headers["x-cache"] == "MISS"
        etag = first.headers["etag"]
        assert etag.startswith('"')
        assert etag.endswith('"')
        assert len(etag) == 34
        assert first.headers["cache-control"] in ("max-age=60", "max-age=59")  # floor
        second = client.get("/charges/1")
        assert (second.headers["x-cache"], second.headers["etag"]) == ("L1", etag)
        assert db["loads"] == 1
        not_modified = client.get("/charges/1", headers={"If-None-Match": etag})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == etag
        assert db["loads"] == 1  # answered without the loader
        listed = client.get("/charges/1", headers={"If-None-Match": f'"x", W/{etag}'})
        assert listed.status_code == 304  # a list, weak comparison
        assert client.get("/charges/1", headers={"If-None-Match": '"x"'}).status_code == 200


def test_etag_stops_matching_once_the_entry_is_invalidated() -> None:
    cache = fresh()
    app, db = make_app(cache)
    with TestClient(app) as client:
        etag = client.get("/charges/1").headers["etag"]
        assert client.put("/charges/1", json={"amount": 20}).status_code == 200
        after = client.get("/charges/1", headers={"If-None-Match": etag})
        assert after.status_code == 200
        assert after.json()["amount"] == 20
        assert after.headers["x-cache"] == "MISS"
        assert after.headers["etag"] != etag
        # A byte-identical reload is the same representation: the same ETag, a 304.
        same = client.get("/charges/1").headers["etag"]
        client.portal.call(cache.invalidate_tag, "charge:1")  # type: ignore[union-attr]
        reloaded = client.get("/charges/1", headers={"If-None-Match": same})
        assert (reloaded.status_code, reloaded.headers["x-cache"]) == (304, "MISS")
        assert reloaded.headers["etag"] == same
        assert db["loads"] == 3


def test_max_age_is_the_lifetime_and_age_what_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = fresh()
    app, _ = make_app(cache)
    now = [1_000_000.0]
    monkeypatch.setattr(http_module.time, "time", lambda: now[0])
    with TestClient(app) as client:
        first = client.get("/charges/1")
        assert (first.headers["cache-control"], first.headers["age"]) == ("max-age=60", "0")
        now[0] += 25.5
        later = client.get("/charges/1")
        assert (later.headers["cache-control"], later.headers["age"]) == ("max-age=60", "25")


def test_private_responses() -> None:
    cache = fresh()
    app, _ = make_app(cache, private=True)
    with TestClient(app) as client:
        assert client.get("/charges/1").headers["cache-control"].startswith("private, max-age=")


def test_client_no_cache_revalidates_only_when_enabled() -> None:
    cache = fresh()
    app, db = make_app(cache)
    with TestClient(app) as client:
        etag = client.get("/charges/1").headers["etag"]
        plain = client.get("/charges/1", headers={"Cache-Control": "no-cache"})
        assert (plain.headers["x-cache"], db["loads"]) == ("L1", 1)  # not opted in
    cache = fresh()
    app, db = make_app(cache, revalidate_on_no_cache=True)
    with TestClient(app) as client:
        etag = client.get("/charges/1").headers["etag"]
        db["rows"][1]["amount"] = 11  # written behind the cache's back
        fresh_read = client.get(
            "/charges/1", headers={"Cache-Control": "no-cache", "If-None-Match": etag}
        )
        assert fresh_read.status_code == 200
        assert fresh_read.headers["x-cache"] == "MISS"
        assert fresh_read.json()["amount"] == 11
        assert db["loads"] == 2
        assert client.get("/charges/1").headers["etag"] == fresh_read.headers["etag"]


def test_errors_and_refused_results_are_not_cached() -> None:
    cache = fresh()
    app, db = make_app(cache)
    with TestClient(app) as client:
        assert client.get("/charges/9").status_code == 404
        assert client.get("/charges/9").status_code == 404
        assert db["loads"] == 2  # the 404 was not cached
        db["rows"].clear()
        empty = client.get("/charges")
        assert empty.json() == []
        assert empty.headers["cache-control"] == "no-store"
        assert "etag" not in empty.headers
        db["rows"][1] = {"id": 1, "amount": 5}
        assert client.get("/charges").json() == [{"id": 1, "amount": 5}]  # not the empty list
        assert client.get("/charges").headers["x-cache"] == "L1"


def test_the_openapi_schema_does_not_show_the_injected_request() -> None:
    cache = fresh()
    app, _ = make_app(cache)
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()
    params = schema["paths"]["/charges/{charge_id}"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["charge_id"]
