"""`@cached(ignore=..., unless=...)` (issue 10): arguments left out of the key, and
results returned but not cached. Memory mode; the options act in the decorator,
before the tiers, so the same holds with Redis."""

import asyncio
import uuid
from typing import Any

import pytest

from twotier import MISS, ConfigurationError, TemplateError, TwoTierCache


class Session:
    """A database session: its default repr names a memory address (no stable key)."""


def fresh() -> TwoTierCache:
    return TwoTierCache(namespace=f"o{uuid.uuid4().hex[:8]}")


# --- ignore= ------------------------------------------------------------------------


async def test_ignored_arguments_are_left_out_of_the_key() -> None:
    cache = fresh()
    loads: list[int] = []

    @cache.cached(ttl=60, tags=["charge:{charge_id}"], ignore=["session"])
    async def get_charge(charge_id: int, session: Session) -> dict[str, int]:
        loads.append(charge_id)
        return {"id": charge_id}

    async with cache:
        assert get_charge.key(7, Session()).endswith(".<locals>.get_charge(7)")
        # Without ignore= the session would make every call's key different (or refuse it).
        assert await get_charge(7, Session()) == {"id": 7}
        assert await get_charge(7, session=Session()) == {"id": 7}
        assert await get_charge(charge_id=7, session=Session()) == {"id": 7}
        assert loads == [7]
        assert get_charge.key(7, Session()) == get_charge.key(charge_id=7, session=None)  # type: ignore[arg-type]
        await get_charge.invalidate(7, Session())
        await get_charge(7, Session())
        assert loads == [7, 7]


async def test_ignore_keeps_the_order_and_defaults_of_the_rest() -> None:
    cache = fresh()

    @cache.cached(ignore=["conn"])
    async def page(category: str, conn: object, page: int = 1, *, lang: str = "de") -> int:
        return page

    name = page.key("news", None).split("(")[0]
    assert page.key("news", None) == f"{name}('news',1,'de')"
    assert page.key("news", Session(), 1, lang="de") == f"{name}('news',1,'de')"
    assert page.key(conn=Session(), category="news") == f"{name}('news',1,'de')"


async def test_ignoring_every_argument_gives_one_key() -> None:
    cache = fresh()

    @cache.cached(ignore=["request"])
    async def settings(request: object) -> str:
        return "x"

    assert settings.key(Session()) == settings.key(Session())
    assert settings.key(Session()).endswith(".settings()")


def test_unknown_name_in_ignore_fails_at_decoration() -> None:
    known = r"unknown parameter\(s\) sesion; known: id, session"
    with pytest.raises(ConfigurationError, match=known):

        @fresh().cached(ignore=["sesion"])
        async def f(id: int, session: Session) -> None: ...


def test_ignore_must_be_a_list_of_names() -> None:
    with pytest.raises(ConfigurationError, match="list of names"):

        @fresh().cached(ignore="session")
        async def f(id: int, session: Session) -> None: ...

    with pytest.raises(ConfigurationError, match="must name parameters"):

        @fresh().cached(ignore=[1])  # type: ignore[list-item]
        async def g(id: int) -> None: ...


def test_ignore_with_a_custom_key_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="default key"):

        @fresh().cached(key="charge:{id}", ignore=["session"])
        async def f(id: int, session: Session) -> None: ...


def test_a_tag_naming_an_ignored_argument_is_an_error() -> None:
    # Calls for two users would share one key: one user's dashboard for everyone.
    with pytest.raises(TemplateError, match="ignore= leaves out of the key"):

        @fresh().cached(tags=["user:{user}"], ignore=["user"])
        async def dashboard(user: int) -> None: ...


# --- unless= ------------------------------------------------------------------------


async def test_unless_returns_but_does_not_cache() -> None:
    cache = fresh()
    rows: dict[int, dict[str, int]] = {}
    loads: list[int] = []

    @cache.cached(ttl=60, unless=lambda r: r is None)
    async def get_article(article_id: int) -> dict[str, int] | None:
        loads.append(article_id)
        return rows.get(article_id)

    async with cache:
        assert await get_article(1) is None  # a 404: not cached
        assert await get_article(1) is None
        assert loads == [1, 1]
        assert await cache.get(get_article.key(1), MISS) is MISS
        rows[1] = {"id": 1}
        assert await get_article(1) == {"id": 1}  # found at once, no stale None
        assert await get_article(1) == {"id": 1}
        assert loads == [1, 1, 1]
        stats = cache.get_stats()
        assert stats["load_errors"] == 0  # a refused result is no error
        assert stats["sets"] == 1


async def test_unless_on_empty_results() -> None:
    cache = fresh()

    @cache.cached(unless=lambda r: not r)
    async def open_orders(customer: int) -> list[int]:
        return [] if customer == 1 else [customer]

    async with cache:
        assert await open_orders(1) == []
        assert await open_orders(2) == [2]
        assert await cache.get(open_orders.key(1), MISS) is MISS
        assert await cache.get(open_orders.key(2), MISS) == [2]


async def test_unless_is_not_an_error_for_stale_if_error() -> None:
    """A refused result is the current answer: stale_if_error must not replace it."""
    cache = fresh()
    value: dict[str, Any] = {"v": [1]}

    @cache.cached(ttl=60, unless=lambda r: r is None, stale_if_error=600)
    async def row() -> list[int] | None:
        return value["v"]  # type: ignore[no-any-return]

    async with cache:
        assert await row() == [1]
        await row.invalidate()
        value["v"] = None
        assert await row() is None


async def test_joined_callers_get_the_refused_result() -> None:
    cache = fresh()
    gate = asyncio.Event()
    loads = 0

    @cache.cached(unless=lambda r: r is None)
    async def slow() -> None:
        nonlocal loads
        loads += 1
        await gate.wait()

    async with cache:
        first, second = asyncio.create_task(slow()), asyncio.create_task(slow())
        await asyncio.sleep(0)
        gate.set()
        assert await first is None
        assert await second is None
        assert loads == 1  # one load, shared, cached nowhere
        assert cache.get_stats()["joined_loads"] == 1
        await slow()
        assert loads == 2


def test_unless_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="predicate"):
        fresh().cached(unless=3)  # type: ignore[arg-type]


async def test_unless_raising_is_a_loader_error() -> None:
    cache = fresh()

    def broken(result: object) -> bool:
        raise ValueError("bad predicate")

    @cache.cached(unless=broken)
    async def f() -> int:
        return 1

    async with cache:
        with pytest.raises(ValueError, match="bad predicate"):
            await f()


# --- lookup() -----------------------------------------------------------------------


async def test_lookup_never_runs_the_function_and_names_the_tier(
    trio: list[TwoTierCache],
) -> None:
    a, b, _ = trio
    loads = 0

    def decorate(cache: TwoTierCache) -> Any:
        @cache.cached(ttl=60, key="item:{id}")
        async def item(id: int) -> int:
            nonlocal loads
            loads += 1
            return id * 10

        return item

    on_a, on_b = decorate(a), decorate(b)
    assert await on_a.lookup(1) == (MISS, None)
    assert await on_a(1) == 10
    assert await on_a.lookup(1) == (10, "L1")
    assert await on_b.lookup(1) == (MISS, None)  # memory mode has no shared tier
    assert await on_b(1) == 10
    assert loads == 2
    await on_a.invalidate(1)  # reaches b's L1 too
    assert await on_b.lookup(1) == (MISS, None)
    assert await on_a.lookup(1) == (MISS, None)
    assert loads == 2
    # L2 hits of lookup(): integration/test_fastapi_redis.py (X-Cache: L2).
