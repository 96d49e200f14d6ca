"""`twotier bench`: the subjects — twotier's decorated function, the floors, and the peers.

Every subject caches the same function, `user(user_id: int) -> int`, and is
driven through the same `await call(i)` loop. Peers (cashews, aiocache) are
imported here, lazily, so the core never depends on them; `None` means the
peer is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from cachetools import TTLCache
from cachetools.keys import hashkey

from twotier import CachedFunction, TwoTierCache

from .core import AsyncCall

TWO_TAGS: tuple[str, ...] = ("user:{user_id}", "users")


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass
class Subject:
    """A callable under test and how to release what it holds."""

    call: AsyncCall
    close: Callable[[], Awaitable[None]]
    handle: Any = None  # the underlying object (cache, function), for the scenario's own use


async def _nothing() -> None:
    return None


# --- twotier --------------------------------------------------------------------


def user_function(
    cache: TwoTierCache,
    tags: Sequence[str] = TWO_TAGS,
    counter: list[int] | None = None,
    delay: float = 0.0,
) -> CachedFunction[[int], int]:
    """The benchmark function, decorated. Same qualname on every instance, so same keys."""
    import asyncio

    @cache.cached(ttl=300, tags=list(tags))
    async def user(user_id: int) -> int:
        if counter is not None:
            counter[0] += 1
        if delay:
            await asyncio.sleep(delay)
        return user_id * 2

    return user


# --- floors ---------------------------------------------------------------------


async def _user(user_id: int) -> int:
    return user_id * 2


def dict_wrapper() -> AsyncCall:
    """The floor of an in-process hit: an async wrapper around a dict."""
    store: dict[int, int] = {}

    async def cached(user_id: int) -> int:
        try:
            return store[user_id]
        except KeyError:
            value = store[user_id] = await _user(user_id)
            return value

    return cached


def cachetools_wrapper(maxsize: int = 100_000) -> AsyncCall:
    """An async wrapper around cachetools' TTLCache, keyed like `cachetools.cached`."""
    store: TTLCache[Any, int] = TTLCache(maxsize=maxsize, ttl=300)

    async def cached(user_id: int) -> int:
        key = hashkey(user_id)
        try:
            return store[key]
        except KeyError:
            value = store[key] = await _user(user_id)
            return value

    return cached


# --- cashews ----------------------------------------------------------------------


def cashews_subject(
    setup_url: str,
    prefix: str,
    *,
    tags: bool = True,
    client_side: bool = False,
    lock: bool = False,
    counter: list[int] | None = None,
    delay: float = 0.0,
    value: Callable[[int], Any] | None = None,
) -> Subject | None:
    """cashews' default decorator (`@cache(ttl=...)`), optionally with the same two
    tags; the function returns `value(user_id)` when given (a realistic row)."""
    if not available("cashews"):
        return None
    import asyncio

    from cashews import Cache

    cache = Cache()
    options: dict[str, Any] = {"client_side": True} if client_side else {}
    cache.setup(setup_url, **options)
    key = f"{prefix}:user:{{user_id}}"
    tag_list = [f"{prefix}:user:{{user_id}}", f"{prefix}:users"] if tags else []
    decorate: Any = cache(ttl=300, key=key, tags=tag_list, lock=lock)

    async def user(user_id: int) -> Any:
        if counter is not None:
            counter[0] += 1
        if delay:
            await asyncio.sleep(delay)
        return user_id * 2 if value is None else value(user_id)

    fn: AsyncCall = decorate(user)

    async def close() -> None:
        with contextlib.suppress(Exception):
            await cache.close()

    return Subject(fn, close, cache)


# --- aiocache -----------------------------------------------------------------------


def aiocache_subject(redis_url: str | None, namespace: str) -> Subject | None:
    """aiocache's default `@cached(ttl=...)`: memory backend, or Redis when a URL is given."""
    if not available("aiocache"):
        return None
    from aiocache import Cache, cached

    options: dict[str, Any] = {"ttl": 300, "namespace": namespace}
    if redis_url is not None:
        url = urlparse(redis_url)
        options.update(
            cache=Cache.REDIS,
            endpoint=url.hostname or "127.0.0.1",
            port=url.port or 6379,
            db=int((url.path or "/0").lstrip("/") or 0),
        )
    decorate = cached(**options)
    fn: AsyncCall = decorate(_user)

    async def close() -> None:
        with contextlib.suppress(Exception):
            await fn.cache.close()  # type: ignore[attr-defined]  # set by aiocache

    return Subject(fn, close, fn)
