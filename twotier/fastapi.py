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
import functools
import hashlib
import inspect
import json
import math
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from fastapi import BackgroundTasks, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.params import Depends
from fastapi.security import SecurityScopes
from starlette.requests import HTTPConnection

from ._cache import TwoTierCache
from ._decorator import CachedFunction, Unless
from ._exceptions import ConfigurationError
from ._keys import validate_ttl
from ._types import MISS
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

#: Parameters of these types are the framework's plumbing, never part of an answer's identity.
_INJECTED_TYPES: tuple[type, ...] = (
    HTTPConnection,  # Request and WebSocket
    Response,
    BackgroundTasks,
    SecurityScopes,
)


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
    `Annotated[T, Depends(...)]`. None of them says *what* is asked for, and
    none has a stable text, so they are left out of keys.
    """
    names = set()
    for name, param in _resolved_signature(func).parameters.items():
        if isinstance(param.default, Depends):
            names.add(name)
            continue
        hint = param.annotation
        extras: tuple[Any, ...] = ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *rest = typing.get_args(hint)
            extras = tuple(rest)
        by_depends = any(isinstance(extra, Depends) for extra in extras)
        if by_depends or (isinstance(hint, type) and issubclass(hint, _INJECTED_TYPES)):
            names.add(name)
    return frozenset(names)


def _resolved_signature(func: Callable[..., Any]) -> inspect.Signature:
    """The signature with string annotations (`from __future__ import annotations`)
    evaluated in the function's module, so the wrapper's signature means the same
    wherever FastAPI evaluates it."""
    try:
        return inspect.signature(func, eval_str=True)
    except NameError:  # a name only imported under TYPE_CHECKING
        return inspect.signature(func)


def _key_ignore(
    func: Callable[..., Any],
    key: object,
    ignore: Iterable[str],
    keep: Iterable[str],
) -> list[str]:
    if isinstance(keep, str) or isinstance(ignore, str):
        raise ConfigurationError("ignore= and keep= take lists of parameter names")
    keep = set(keep)
    injected = injected_parameters(func)
    stray = keep - injected
    if stray:
        raise ConfigurationError(
            f"keep= names {', '.join(sorted(stray))}, which the framework does not inject; "
            f"injected: {', '.join(sorted(injected)) or '(none)'}"
        )
    if key is not None:
        return list(ignore)  # a key template or callable chooses its own arguments
    return list(dict.fromkeys([*ignore, *sorted(injected - keep)]))


def cached(
    cache: TwoTierCache,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    key: str | Callable[..., str] | None = None,
    *,
    ignore: Iterable[str] = (),
    keep: Iterable[str] = (),
    unless: Unless | None = None,
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """`cache.cached(...)` with the framework's parameters left out of the key.

    For endpoints and for functions that take dependencies (a session from
    `Depends(get_session)`). A dependency that *is* part of the answer's
    identity — the current user of a per-user dashboard — must stay in the
    key: name it in *keep* (its value must then have a stable text, e.g. an
    id), or pass `key=`. A tag template that names an injected parameter not
    kept is refused at decoration time (`TemplateError`): without it in the
    key, two users would share one entry.
    """

    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        names = _key_ignore(func, key, ignore, keep)
        return cache.cached(ttl, tags, key, ignore=names, unless=unless, **options)(func)

    return decorate


# --- HTTP caching ----------------------------------------------------------------------

#: What an HTTP-cached endpoint stores: [stamp, expires (Unix time), body (JSON bytes)].
#: The stamp is new for every load, so it names one version of the entry; "" marks a
#: result that `unless=` refused (never stored).
Envelope = list[Any]


def etag_of(key: str, envelope: Envelope) -> str:
    """The strong ETag of one version of an entry: a digest of its key, its stamp
    (random, new on every load) and its body. Every instance computes the same
    ETag for the same version (all three come from the shared entry); a reload
    after an invalidation gets a new stamp, so the old ETag never matches again,
    even when the new body happens to be byte-identical."""
    digest = hashlib.sha256()
    for part in (key.encode(), str(envelope[0]).encode(), bytes(envelope[2])):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return '"' + digest.hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison, a list of tags, or `*`."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _no_cache(request: Request) -> bool:
    directives = request.headers.get("cache-control", "").lower()
    pragma = request.headers.get("pragma", "").lower()
    return "no-cache" in directives or (not directives and "no-cache" in pragma)


def _render(result: Any) -> bytes:
    return json.dumps(
        jsonable_encoder(result), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode()


_REQUEST = "twotier_request"


def http_cached(
    cache: TwoTierCache,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    key: str | Callable[..., str] | None = None,
    *,
    ignore: Iterable[str] = (),
    keep: Iterable[str] = (),
    unless: Unless | None = None,
    private: bool = False,
    revalidate_on_no_cache: bool = False,
    **options: Any,
) -> Callable[[Callable[P, Awaitable[Any]]], Callable[P, Awaitable[Response]]]:
    """Cache a GET endpoint's JSON body, with ETag, max-age and X-Cache.

    Put it under the route decorator. The endpoint runs only on a miss; its
    result is rendered to JSON once (`jsonable_encoder`) and the bytes are
    cached, so a hit serializes nothing. Every response carries:

    - `ETag`: strong, a digest of the entry's key, body and a stamp made when
      it was loaded (`etag_of`); a request whose `If-None-Match` names the
      current version gets a 304, answered from L1 or Redis without running
      the endpoint;
    - `Cache-Control: max-age=<seconds the entry has left>` (`private` too
      when *private*: per-user answers must not sit in shared proxies);
    - `X-Cache: L1 | L2 | MISS`: where this instance found it.

    With *revalidate_on_no_cache*, a request with `Cache-Control: no-cache`
    deletes the entry on every instance and reloads it (opt-in: it lets any
    client make the database work). Exceptions (an `HTTPException(404)`) are
    never cached; results for which *unless* is true are returned with
    `Cache-Control: no-store` and cached nowhere.
    """

    def decorate(endpoint: Callable[P, Awaitable[Any]]) -> Callable[P, Awaitable[Response]]:
        if not inspect.iscoroutinefunction(endpoint):
            raise ConfigurationError(
                f"http_cached needs an async endpoint; {endpoint.__qualname__} is not"
            )
        names = _key_ignore(endpoint, key, ignore, keep)
        seconds = cache.default_ttl if ttl is None else validate_ttl(ttl)
        signature = _resolved_signature(endpoint)
        own_request = next(
            (
                name
                for name, p in signature.parameters.items()
                if isinstance(p.annotation, type) and issubclass(p.annotation, Request)
            ),
            None,
        )

        @functools.wraps(endpoint)
        async def load(*args: Any, **kwargs: Any) -> Envelope:
            result = await endpoint(*args, **kwargs)
            refused = unless is not None and unless(result)
            stamp = "" if refused else uuid.uuid4().hex
            return [stamp, time.time() + seconds, _render(result)]

        # The entry holds the rendered body, not the endpoint's result: its keys
        # get their own name, so no plain @cached of the same function shares them.
        load.__qualname__ = f"{endpoint.__qualname__}.http"
        fn = cache.cached(ttl, tags, key, ignore=names, unless=lambda e: not e[0], **options)(load)

        async def serve(**kwargs: Any) -> Response:
            request: Request = kwargs[own_request] if own_request else kwargs.pop(_REQUEST)
            if request.method not in ("GET", "HEAD"):
                raise ConfigurationError(
                    f"http_cached endpoint {endpoint.__qualname__} served a {request.method}: "
                    "it caches GET endpoints only"
                )
            envelope: Envelope | None = None
            tier = "MISS"
            if revalidate_on_no_cache and _no_cache(request):
                await fn.invalidate(**kwargs)
            else:
                found, where = await fn.lookup(**kwargs)
                if found is not MISS and where is not None:
                    envelope, tier = found, where
            if envelope is None:
                envelope = await fn(**kwargs)
            headers = {"X-Cache": tier}
            if not envelope[0]:  # refused by unless=: cached nowhere
                headers["Cache-Control"] = "no-store"
                return Response(envelope[2], media_type="application/json", headers=headers)
            etag = etag_of(fn.key(**kwargs), envelope)
            max_age = max(0, math.floor(envelope[1] - time.time()))
            headers["ETag"] = etag
            headers["Cache-Control"] = f"{'private, ' if private else ''}max-age={max_age}"
            if _matches(request.headers.get("if-none-match"), etag):
                return Response(status_code=304, headers=headers)
            return Response(envelope[2], media_type="application/json", headers=headers)

        functools.update_wrapper(serve, endpoint)
        params = list(signature.parameters.values())
        if own_request is None:
            extra = inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
            tail = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
            params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
            params = [*params, extra, *tail]
        # FastAPI reads the endpoint's parameters from here: the request is injected too.
        serve.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=params, return_annotation=Response
        )
        serve.__twotier_cached__ = fn  # type: ignore[attr-defined]  # for twotier.strategy
        serve.__twotier_http__ = {  # type: ignore[attr-defined]
            "private": private,
            "revalidate_on_no_cache": revalidate_on_no_cache,
            "unless": unless is not None,
        }
        return serve  # type: ignore[return-value]  # called by FastAPI with keywords only

    return decorate
