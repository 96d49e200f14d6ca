"""twotier for FastAPI (and Starlette): the lifespan, keys without the framework's
parameters, and HTTP caching of GET endpoints. See `docs/fastapi.md`.

```python
from twotier import TwoTierCache
from twotier.fastapi import cached, http_cached, lifespan

cache = TwoTierCache(redis_url=..., namespace="erp")
app = FastAPI(lifespan=lifespan(cache))

@router.get("/charges/{charge_id}")
@http_cached(cache, ttl=180, tags=["charges", "charge:{charge_id}"])
async def get_charge(charge_id: int, session: AsyncSession = Depends(get_session)) -> Charge:
    ...
```

An extra (`pip install twotier[fastapi]`): the core never imports this module.
It talks to the core through its public face only — `cache.cached(ignore=...,
unless=...)`, `CachedFunction.key/lookup/invalidate` — so the core stays free
of any framework.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from . import _http_cached as _http
from . import _http_keys as _keys
from . import _http_params as _params
from ._cache import TwoTierCache
from ._decorator import CachedFunction, Unless
from ._exceptions import ConfigurationError, TemplateError
from ._keys import template_fields
from .strategy import invalidates

__all__ = [
    "cached",
    "http_cached",
    "injected_parameters",
    "invalidates",
    "lifespan",
]

P = ParamSpec("P")
R = TypeVar("R")
App = TypeVar("App")

# --- lifespan --------------------------------------------------------------------------


def lifespan(
    cache: TwoTierCache,
    inner: Callable[[App], contextlib.AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[App], contextlib.AbstractAsyncContextManager[Any]]:
    """A lifespan that starts *cache* before the app serves and closes it after.

    `FastAPI(lifespan=lifespan(cache))`; an app's own lifespan goes in *inner*
    and runs inside, so it can use the cache on startup (warmup, seeding) and
    on shutdown. Starting is not connecting at all costs: with Redis down the
    cache starts degraded and the app serves (docs/failure-modes.md).
    """

    @contextlib.asynccontextmanager
    async def run(app: App) -> AsyncIterator[Any]:
        await cache.start()
        try:
            if inner is None:
                yield None
            else:
                async with inner(app) as state:
                    yield state
        finally:
            await cache.close()

    return run


# --- keys ------------------------------------------------------------------------------


def injected_parameters(func: Callable[..., Any]) -> frozenset[str]:
    """The parameters of *func* that FastAPI fills in rather than the caller.

    `Request`, `WebSocket`, `Response`, `BackgroundTasks`, `SecurityScopes`
    (by annotation, subclasses included), and every parameter whose value
    comes from a dependency: a `Depends(...)`/`Security(...)` default, or
    `Annotated[T, Depends(...)]`. Of these only the plumbing (`Response`,
    `BackgroundTasks`, `SecurityScopes`) is left out of keys by itself:
    dependency values are keyed unless `ignore=` names them (docs/fastapi.md).
    """
    parameters = _params.analyse(func, (), what=func.__qualname__, key_given=True).parameters
    return frozenset(p.name for p in parameters if p.kind in ("depends", "request", "plumbing"))


def _checked(
    func: Callable[..., Any],
    ignore: Iterable[str],
    key: object,
    keep: object,
    tags: Iterable[str],
    *,
    what: str,
    headers: Iterable[str] = (),
    cookies: Iterable[str] = (),
) -> _params.Analysis:
    """The analysis of *func*, with the declarations checked (issue 19, item 1)."""
    if keep is not None:
        raise ConfigurationError(
            f"{what}: keep= is gone: dependency values are in the key by default now; "
            "name the ones that do not change the answer in ignore="
        )
    analysis = _params.analyse(
        func, ignore, what=what, key_given=key is not None, extra_headers=headers,
        extra_cookies=cookies,
    )  # fmt: skip
    if isinstance(tags, str):
        raise TemplateError(f"tags of {what} must be a list of strings, not {tags!r}")
    ignored = set(ignore)
    for tag in tags:
        shared = [name for name in template_fields(tag) if name in ignored]
        if shared:
            raise TemplateError(
                f"tag template {tag!r} of {what} names {', '.join(shared)}, which ignore= "
                "leaves out of the key: calls that differ only in it would share one entry; "
                "keep it in the key, or pass key="
            )
    request = analysis.request_param
    declared = key is not None or request in ignored or list(headers) or list(cookies)
    if request is not None and not declared:
        raise ConfigurationError(
            f"{what} takes the request ({request!r}), and the key cannot tell what it reads "
            "from it (a user, a cookie, a header): say it. headers=[...] / cookies=[...] put "
            f"what it reads in the key; ignore=[{request!r}] says the answer does not depend "
            "on the request (requests with credentials are then answered uncached); or pass key="
        )
    return analysis


def _check_background(analysis: _params.Analysis, options: dict[str, Any], what: str) -> None:
    """Early refresh and soft timeouts run the function after its caller has its
    answer; by then FastAPI has torn the request's dependencies down (a session's
    `finally` has closed it). Refused where the function takes any (issue 19, item 6)."""
    background = [name for name in ("early_refresh", "soft_timeout") if options.get(name)]
    scoped = [p.name for p in analysis.parameters if p.kind in ("depends", "request")]
    if background and scoped:
        raise ConfigurationError(
            f"{what}: {' and '.join(background)} would run it in the background after the "
            f"request ended, with its dependencies ({', '.join(scoped)}) already torn down; "
            "cache a data function that opens what it needs itself, or drop the option "
            "(stale_if_error alone runs in the request)"
        )


def cached(
    cache: TwoTierCache,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    key: str | Callable[..., str] | None = None,
    *,
    ignore: Iterable[str] = (),
    keep: Iterable[str] | None = None,
    unless: Unless | None = None,
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """`cache.cached(...)` for functions that take FastAPI's parameters.

    Safe by default (docs/fastapi.md): dependency values (`Depends`, `Security`,
    `Annotated[T, Depends(...)]`) are part of the key, hashed, so the current
    user of a per-user query keys it. A dependency that does not change the
    result (a database session) is named in *ignore*; one whose values have no
    stable text is refused here, with its name and that fix. The framework's
    plumbing (`Response`, `BackgroundTasks`, `SecurityScopes`) is left out by
    itself; a `Request` must be declared (`ignore=` or `key=`).
    """

    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        what = f"{func.__module__}.{func.__qualname__}"
        analysis = _checked(func, ignore, key, keep, tags, what=what)
        _check_background(analysis, options, what)
        plumbing = [p.name for p in analysis.parameters if p.kind == "plumbing"]
        if key is not None or not analysis.hashed:
            names = list(dict.fromkeys([*ignore, *plumbing])) if key is None else list(ignore)
            return cache.cached(ttl, tags, key, ignore=names, unless=unless, **options)(func)
        builder = _keys.KeyBuilder(what, analysis, None, list(analysis.keyed))
        signature = inspect.signature(func)

        def key_of(*args: Any, **kwargs: Any) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return builder.key(bound.arguments)

        key_of.__qualname__ = builder.prefix
        return cache.cached(ttl, tags, key_of, unless=unless, **options)(func)

    return decorate


# --- HTTP caching ----------------------------------------------------------------------


def http_cached(
    cache: TwoTierCache,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    key: str | Callable[..., str] | None = None,
    *,
    ignore: Iterable[str] = (),
    headers: Iterable[str] = (),
    cookies: Iterable[str] = (),
    keep: Iterable[str] | None = None,
    unless: Unless | None = None,
    private: bool = False,
    revalidate_on_no_cache: bool = False,
    name: str | None = None,
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Cache a GET endpoint's value, with ETag/304, Cache-Control, Vary and X-Cache.

    Put it under the route decorator. The endpoint runs only on a miss; the
    cache holds its value as the route's response model renders it, and
    FastAPI builds every response, hit or miss, as it would without the
    decorator (response model, `status_code=`, `response_class`, the headers
    set on `response: Response`). Every parameter is part of the key,
    dependency values included (hashed); name the ones that do not change the
    answer in *ignore* (a database session). An endpoint that takes the
    `Request` declares what it reads from it: *headers* and *cookies* (keyed,
    and listed in `Vary`), or `ignore=["request"]`. See docs/fastapi.md for
    the rule, the headers, and what is never cached.
    """
    header_names = _names(headers, "headers")
    cookie_names = _names(cookies, "cookies")

    def decorate(endpoint: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        what = f"{endpoint.__module__}.{endpoint.__qualname__}"
        if not inspect.iscoroutinefunction(endpoint):
            raise ConfigurationError(f"http_cached needs an async endpoint; {what} is not")
        analysis = _checked(
            endpoint, ignore, key, keep, tags, what=what, headers=header_names,
            cookies=cookie_names,
        )  # fmt: skip
        _check_background(analysis, options, what)
        state = _http.HttpCached(
            cache, endpoint, ttl, tags, key, analysis, unless=unless, private=private,
            revalidate_on_no_cache=revalidate_on_no_cache, headers=header_names,
            cookies=cookie_names, name=name, options=options,
        )  # fmt: skip
        serve = _http.decorate(cache, endpoint, state)
        serve.__twotier_cached__ = state.fn  # type: ignore[attr-defined]  # for twotier.strategy
        serve.__twotier_http__ = {  # type: ignore[attr-defined]
            "private": state.private,
            "revalidate_on_no_cache": revalidate_on_no_cache,
            "unless": unless is not None,
            "key": state.builder.spec,
            "ignored": sorted(set(ignore)),
            "vary": state.vary,
        }
        return serve  # called by FastAPI with keywords only

    return decorate


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ConfigurationError(f"{what}= takes a list of names, not {values!r}")
    return tuple(v.lower() if what == "headers" else v for v in values)
