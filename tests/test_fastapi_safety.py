"""twotier.fastapi is safe by default (issue 19, item 1): a response is never shared
between callers that its key cannot tell apart. Each case of the issue's first
paragraph, through Starlette's TestClient on a memory-mode cache; every one of
them served one caller's answer to another before."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from fastapi import Cookie, Depends, FastAPI, Header, HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from fastapi.testclient import TestClient
from pydantic import BaseModel

from twotier import ConfigurationError, TemplateError, TwoTierCache
from twotier.fastapi import cached, http_cached, lifespan


def fresh() -> TwoTierCache:
    return TwoTierCache(namespace=f"s{uuid.uuid4().hex[:8]}")


class User(BaseModel):
    id: int
    name: str


USERS = {"alice-token": User(id=1, name="alice"), "bob-token": User(id=2, name="bob")}
ORDERS = {1: ["alice's order"], 2: ["bob's order"]}


def current_user(authorization: str = Header()) -> User:
    user = USERS.get(authorization.removeprefix("Bearer "))
    if user is None:
        raise HTTPException(401)
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Session:
    """A database session: no stable text."""


async def get_session() -> AsyncIterator[Session]:
    yield Session()


def keys_of(cache: TwoTierCache) -> list[str]:
    return list(cache.local._data.keys())  # type: ignore[attr-defined]


def test_depends_current_user_is_in_the_key() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    loads: list[int] = []

    @app.get("/my/orders")
    @http_cached(cache, ttl=60, tags=["orders"])
    async def my_orders(user: User = Depends(current_user)) -> list[str]:
        loads.append(user.id)
        return ORDERS[user.id]

    with TestClient(app) as client:
        assert client.get("/my/orders", headers=as_("alice-token")).json() == ["alice's order"]
        bob = client.get("/my/orders", headers=as_("bob-token"))
        assert bob.json() == ["bob's order"]
        assert bob.headers["x-cache"] == "MISS"
        again = client.get("/my/orders", headers=as_("bob-token"))
        assert (again.json(), again.headers["x-cache"]) == (["bob's order"], "L1")
        # Per caller: private, and Vary names the header the dependency reads.
        assert again.headers["cache-control"].startswith("private, ")
        assert "authorization" in again.headers["vary"].lower()
        names = keys_of(cache)
    assert loads == [1, 2]
    # The user is hashed into the key: no name, no token in Redis key names.
    assert len(names) == 2
    assert not [k for k in names if "alice" in k or "bob" in k or "token" in k]


def test_annotated_depends_and_plain_cached_data_functions() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    @cached(cache, ttl=60)
    async def orders_of(user: CurrentUser) -> list[str]:
        return ORDERS[user.id]

    @app.get("/orders")
    async def orders(user: CurrentUser) -> list[str]:
        return await orders_of(user)

    with TestClient(app) as client:
        assert client.get("/orders", headers=as_("alice-token")).json() == ["alice's order"]
        assert client.get("/orders", headers=as_("bob-token")).json() == ["bob's order"]
    assert orders_of.key(USERS["alice-token"]) != orders_of.key(USERS["bob-token"])
    assert "alice" not in orders_of.key(USERS["alice-token"])


def test_security_api_key_is_in_the_key() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))
    api_key = APIKeyHeader(name="X-API-Key")

    @app.get("/balance")
    @http_cached(cache, ttl=60)
    async def balance(key: str = Security(api_key)) -> dict[str, Any]:
        return {"owner": key[:1]}

    with TestClient(app) as client:
        a = client.get("/balance", headers={"X-API-Key": "a-secret"})
        b = client.get("/balance", headers={"X-API-Key": "b-secret"})
        assert (a.json(), b.json()) == ({"owner": "a"}, {"owner": "b"})
        assert b.headers["cache-control"].startswith("private")
        assert "x-api-key" in b.headers["vary"].lower()
        names = keys_of(cache)
    assert len(names) == 2
    assert not [k for k in names if "secret" in k]


def test_fastapis_first_dependency_example_keeps_pages_apart() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    async def common_parameters(q: str | None = None, skip: int = 0, limit: int = 100) -> dict:  # type: ignore[type-arg]
        return {"q": q, "skip": skip, "limit": limit}

    @app.get("/items/")
    @http_cached(cache, ttl=60)
    async def read_items(commons: dict = Depends(common_parameters)) -> dict:  # type: ignore[type-arg]
        return commons

    with TestClient(app) as client:
        assert client.get("/items/?skip=0").json()["skip"] == 0
        assert client.get("/items/?skip=20").json()["skip"] == 20
        assert client.get("/items/?q=bolts").json()["q"] == "bolts"
        # Query-only dependencies are not per caller: public, cacheable by proxies.
        assert not client.get("/items/").headers["cache-control"].startswith("private")


@dataclasses.dataclass(frozen=True)
class Post:
    id: int
    owner: int
    text: str


POSTS = {1: Post(1, 1, "alice's private post"), 2: Post(2, 2, "bob's post")}


def test_a_dependency_that_loads_and_checks_a_resource() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    def owned_post(post_id: int, user: User = Depends(current_user)) -> Post:
        post = POSTS[post_id]
        if post.owner != user.id:
            raise HTTPException(403)
        return post

    @app.get("/posts/{post_id}/text")
    @http_cached(cache, ttl=60)
    async def post_text(post: Post = Depends(owned_post)) -> str:
        return post.text

    with TestClient(app) as client:
        assert client.get("/posts/1/text", headers=as_("alice-token")).json() == POSTS[1].text
        assert client.get("/posts/2/text", headers=as_("bob-token")).json() == POSTS[2].text
        assert client.get("/posts/1/text", headers=as_("bob-token")).status_code == 403


def test_a_dependency_without_a_stable_text_is_refused_at_decoration() -> None:
    cache = fresh()
    with pytest.raises(ConfigurationError, match=r"'session'.*ignore=\['session'\]"):

        @http_cached(cache, ttl=60)
        async def annotated(session: Session = Depends(get_session)) -> int:
            return 1

    # Unannotated: the dependency's own return annotation (the generator's item) tells.
    with pytest.raises(ConfigurationError, match=r"'session'.*Session"):

        @http_cached(cache, ttl=60)
        async def bare(session=Depends(get_session)) -> int:  # type: ignore[no-untyped-def]
            return 1

    with pytest.raises(ConfigurationError, match=r"'session'"):

        @cached(cache, ttl=60)
        async def data(item: int, session: Session = Depends(get_session)) -> int:
            return item

    @http_cached(cache, ttl=60, ignore=["session"])
    async def explicit(session: Session = Depends(get_session)) -> int:
        return 1


def test_a_value_found_unstable_at_the_first_request_names_the_parameter() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    def opaque():  # type: ignore[no-untyped-def]  # nothing tells what it returns
        return Session()

    @app.get("/x")
    @http_cached(cache, ttl=60)
    async def x(thing=Depends(opaque)) -> int:  # type: ignore[no-untyped-def]
        return 1

    with (
        TestClient(app, raise_server_exceptions=True) as client,
        pytest.raises(ConfigurationError, match=r"'thing'.*ignore=\['thing'\]"),
    ):
        client.get("/x")


def test_an_endpoint_reading_the_request_must_declare_it() -> None:
    cache = fresh()
    with pytest.raises(ConfigurationError, match=r"'request'.*headers=.*ignore=\['request'\]"):

        @http_cached(cache, ttl=60)
        async def whoami(request: Request) -> str:
            return str(request.headers.get("authorization"))

    app = FastAPI(lifespan=lifespan(cache))
    loads: list[str] = []

    @app.get("/whoami")
    @http_cached(cache, ttl=60, ignore=["request"])
    async def whoami_declared(request: Request) -> str:
        who = request.headers.get("authorization") or request.cookies.get("sid") or "anonymous"
        loads.append(who)
        return who

    with TestClient(app) as client:
        # Requests with credentials are answered, never cached: each gets its own.
        alice = client.get("/whoami", headers=as_("alice-token"))
        assert (alice.json(), alice.headers["x-cache"]) == ("Bearer alice-token", "BYPASS")
        assert alice.headers["cache-control"] == "private, no-store"
        assert client.get("/whoami", headers=as_("bob-token")).json() == "Bearer bob-token"
        assert client.get("/whoami", headers={"Cookie": "sid=bob"}).json() == "bob"
        # Anonymous requests share one entry.
        assert client.get("/whoami").json() == "anonymous"
        assert client.get("/whoami").headers["x-cache"] == "L1"
    assert loads == ["Bearer alice-token", "Bearer bob-token", "bob", "anonymous"]


def test_declared_headers_and_cookies_key_the_answer() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    @app.get("/cart")
    @http_cached(cache, ttl=60, cookies=["cart"], headers=["Authorization"])
    async def cart(request: Request) -> dict[str, Any]:
        return {"cart": request.cookies.get("cart"), "auth": request.headers.get("authorization")}

    with TestClient(app) as client:
        a = client.get("/cart", headers={"Cookie": "cart=a1", **as_("alice-token")})
        b = client.get("/cart", headers={"Cookie": "cart=b2", **as_("alice-token")})
        assert (a.json()["cart"], b.json()["cart"]) == ("a1", "b2")
        assert a.headers["x-cache"] == b.headers["x-cache"] == "MISS"
        assert {"cookie", "authorization"} <= {
            v.strip().lower() for v in b.headers["vary"].split(",")
        }
        assert b.headers["cache-control"].startswith("private")
        names = keys_of(cache)
    assert len(names) == 2
    assert not [k for k in names if "a1" in k or "alice" in k]


def test_header_parameters_are_keyed_and_varied() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    @app.get("/greeting")
    @http_cached(cache, ttl=60)
    async def greeting(accept_language: str = Header("en")) -> str:
        return {"de": "Hallo", "fr": "Bonjour"}.get(accept_language, "Hello")

    with TestClient(app) as client:
        assert client.get("/greeting", headers={"Accept-Language": "de"}).json() == "Hallo"
        fr = client.get("/greeting", headers={"Accept-Language": "fr"})
        assert fr.json() == "Bonjour"
        assert "accept-language" in fr.headers["vary"].lower()
        assert not fr.headers["cache-control"].startswith("private")


def test_cookie_parameters_make_the_answer_private() -> None:
    cache = fresh()
    app = FastAPI(lifespan=lifespan(cache))

    @app.get("/theme")
    @http_cached(cache, ttl=60)
    async def theme(theme: str = Cookie("light")) -> str:
        return theme

    with TestClient(app) as client:
        client.cookies.set("theme", "dark")
        dark = client.get("/theme")
        assert dark.json() == "dark"
        assert dark.headers["cache-control"].startswith("private")
        assert "cookie" in dark.headers["vary"].lower()


def test_tags_naming_an_ignored_parameter_and_keep_are_refused() -> None:
    cache = fresh()
    with pytest.raises(TemplateError, match="leaves out of the key"):

        @cached(cache, tags=["user:{user}"], ignore=["user"])
        async def dashboard(user: User = Depends(current_user)) -> None: ...

    with pytest.raises(ConfigurationError, match="keep= is gone"):

        @http_cached(cache, keep=["user"])
        async def kept(user: User = Depends(current_user)) -> None: ...

    @cached(cache, tags=["user:{user.id}"])
    async def by_user(user: User = Depends(current_user)) -> int:
        return user.id

    assert by_user.key(USERS["alice-token"]) != by_user.key(USERS["bob-token"])
