"""The service's cache: twotier's default instance, configured from TWOTIER_* variables
(TWOTIER_REDIS_URL, TWOTIER_NAMESPACE, ...; memory-only without a Redis URL) —
the drop-in for the seed's `from enhanced_cache_manager import cache`.

The endpoints take their decorators from here rather than from twotier.fastapi,
so that two switches, read once at import, can take the cache out for a
measurement (integration/bench_http.py, docs/performance.md):

* `ERP_CACHE=off` — no caching at all: `http_cached` and `cached` return the
  endpoint itself, `invalidates` and `invalidate_tags` do nothing. The
  baseline of the seed's "−78 % response time".
* `ERP_INVALIDATION=clear` — every write clears the whole cache (`cache.clear()`,
  every instance) instead of invalidating its tags. The baseline of the seed's
  "−35 % cache misses".

Unset (or `ERP_CACHE=on`, `ERP_INVALIDATION=tags`), they are twotier.fastapi's
decorators, unchanged. Any other value is refused at import.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from twotier import TwoTierCache, cache
from twotier import fastapi as _fastapi

__all__ = [
    "CACHE_ON",
    "CLEAR_ON_WRITE",
    "cache",
    "cached",
    "http_cached",
    "invalidate_tags",
    "invalidates",
]

P = ParamSpec("P")
R = TypeVar("R")


def _switch(name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in allowed:
        raise RuntimeError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


CACHE_ON: bool = _switch("ERP_CACHE", "on", ("on", "off")) == "on"
CLEAR_ON_WRITE: bool = _switch("ERP_INVALIDATION", "tags", ("tags", "clear")) == "clear"


def _through(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    return func


def http_cached(
    cache: TwoTierCache,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """twotier.fastapi.http_cached, or the endpoint itself under ERP_CACHE=off."""
    if not CACHE_ON:
        return _through
    return _fastapi.http_cached(cache, ttl, tags, **options)


def cached(
    cache: TwoTierCache,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """twotier.fastapi.cached, or the function itself under ERP_CACHE=off."""
    if not CACHE_ON:
        return _through
    return _fastapi.cached(cache, ttl, tags, **options)


def invalidates(
    cache: TwoTierCache, *tags: str, also: Iterable[str] = ()
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """twotier.fastapi.invalidates; under ERP_INVALIDATION=clear the write clears the
    whole cache when it returns instead; under ERP_CACHE=off it does nothing."""
    declared = _fastapi.invalidates(cache, *tags, also=also)
    if not CACHE_ON:
        return _through
    if not CLEAR_ON_WRITE:
        return declared

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        write = declared(func)  # the templates are checked as usual, their tags unused

        @functools.wraps(write)
        async def clearing(*args: P.args, **kwargs: P.kwargs) -> R:
            result = await func(*args, **kwargs)
            await cache.clear()  # awaited, as the tags would be: read-your-writes
            return result

        return clearing

    return decorate


async def invalidate_tags(tags: Iterable[str]) -> None:
    """The tags a write drops itself (those that depend on data, `also=`). Nothing under
    ERP_CACHE=off, and under ERP_INVALIDATION=clear, where the write's
    `@invalidates` clears everything once it returns."""
    if CACHE_ON and not CLEAR_ON_WRITE:
        await cache.invalidate_tags(list(tags))
