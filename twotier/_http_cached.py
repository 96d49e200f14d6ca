"""`http_cached`: HTTP caching of FastAPI GET endpoints that leaves FastAPI's work
to FastAPI (STYLE.md 20; issue 19).

The cache holds the endpoint's *value* — as the route's response model renders
it, so a field the model filters out (`hashed_password`) never reaches Redis —
plus the headers and status the endpoint set on `response: Response`, never a
`Set-Cookie`. On a miss the endpoint's own return value goes back to FastAPI;
on a hit the stored value does; either way FastAPI applies the response model,
the return annotation, `response_class`, `status_code=` and the headers of the
request's `Response`, and the OpenAPI schema is the endpoint's own.

Per request, the wrapper adds what only it knows — `ETag`, `Cache-Control`,
`Vary`, `Age`, `X-Cache` — to that `Response`, which FastAPI merges into the
one it sends. Conditional requests are answered with a 304 before anything
runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder

from . import _http_keys as keys
from . import _http_params as params
from . import _http_rfc as rfc
from ._cache import TwoTierCache
from ._decorator import CachedFunction, Unless
from ._exceptions import ConfigurationError
from ._keys import validate_ttl
from ._types import MISS

#: Hidden keyword parameters the wrapper asks FastAPI for when the endpoint does not.
_REQUEST = "twotier_request"
_RESPONSE = "twotier_response"
#: The per-request context handed through the core to the loader and the key builder.
_CALL = "twotier_call"

#: The stored entry: [kind, stamp, created, expires, content, status, headers].
#: kind "c": cached; "u": refused by unless= (shared with the callers of this
#: load, stored nowhere); "p": the answer is this request's own (a `Response`
#: object, an error status): never shared, the other callers run the endpoint.
Envelope = list[Any]
_KIND, _STAMP, _CREATED, _EXPIRES, _CONTENT, _STATUS, _HEADERS = range(7)

#: Headers the endpoint's response never hands to another request.
_NOT_STORED = frozenset({"set-cookie", "content-length", "content-type", "x-cache", "age"})
#: Statuses an endpoint may set on `response` and still be cached (RFC 9110 §15.3).
_CACHEABLE_STATUS = frozenset({None, 200, 203, 204})


@dataclasses.dataclass(eq=False)
class Call:
    """One request, as the loader and the key builder see it."""

    request: Request
    response: Response
    started: float
    ran: bool = False  # this request's own load ran the endpoint
    failed: bool = False
    done: bool = False
    raw: Any = None  # the endpoint's own return value, when it ran
    key: str = ""
    answered: bool = False  # the wrapper has returned: a later load is a refresh


def _is_credential_bearing(request: Request, declared_headers: set[str], cookies: bool) -> bool:
    """Whether the request carries a credential its key does not hold (issue 19,
    item 1): an `Authorization`/`Proxy-Authorization` header, a cookie, or a
    user authenticated by middleware."""
    for name in ("authorization", "proxy-authorization"):
        if name in request.headers and name not in declared_headers:
            return True
    if "cookie" in request.headers and not cookies:
        return True
    user = request.scope.get("user")
    return bool(getattr(user, "is_authenticated", False))


async def _content(request: Request, value: Any) -> Any:
    """*value* as the route's response model renders it (FastAPI's own
    `serialize_response`, with the route's settings), or `jsonable_encoder`'s
    rendering where the route has no response model: what FastAPI sends."""
    route = request.scope.get("route")
    field = getattr(route, "response_field", None)
    if field is None:
        return jsonable_encoder(value)
    from fastapi.routing import serialize_response

    return await serialize_response(
        field=field,
        response_content=value,
        include=getattr(route, "response_model_include", None),
        exclude=getattr(route, "response_model_exclude", None),
        by_alias=getattr(route, "response_model_by_alias", True),
        exclude_unset=getattr(route, "response_model_exclude_unset", False),
        exclude_defaults=getattr(route, "response_model_exclude_defaults", False),
        exclude_none=getattr(route, "response_model_exclude_none", False),
    )


def _stamp(content: Any, status: int | None, headers: list[list[str]]) -> str:
    """A digest of what the entry answers: the same on every instance for the same
    answer, whether or not the entry reached Redis."""
    text = json.dumps([content, status, headers], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _added_headers(before: list[tuple[bytes, bytes]], after: list[tuple[bytes, bytes]]) -> list:  # type: ignore[type-arg]
    remaining = list(before)
    added = []
    for item in after:
        if item in remaining:
            remaining.remove(item)
        else:
            added.append(item)
    return [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in added
        if name.decode("latin-1").lower() not in _NOT_STORED
    ]


#: The names of the http_cached endpoints of each cache: a second endpoint of one
#: name is refused (issue 19, item 5).
_NAMES: weakref.WeakKeyDictionary[TwoTierCache, set[str]] = weakref.WeakKeyDictionary()


def _claim(cache: TwoTierCache, name: str) -> None:
    names = _NAMES.setdefault(cache, set())
    if name in names:
        raise ConfigurationError(
            f"two http_cached endpoints of one cache are named {name!r} (endpoints built in "
            "a loop, or two functions of one name in one module): give each its own name="
        )
    names.add(name)


class HttpCached:
    """The wrapper's state, built once when the decorator is applied."""

    def __init__(
        self,
        cache: TwoTierCache,
        endpoint: Callable[..., Awaitable[Any]],
        ttl: float | None,
        tags: Iterable[str],
        key: keys.KeySource,
        analysis: params.Analysis,
        *,
        unless: Unless | None,
        private: bool,
        revalidate_on_no_cache: bool,
        headers: tuple[str, ...],
        cookies: tuple[str, ...],
        name: str | None,
        options: dict[str, Any],
    ) -> None:
        self.endpoint = endpoint
        self.analysis = analysis
        self.unless = unless
        self.private = private or analysis.per_caller
        self.revalidate_on_no_cache = revalidate_on_no_cache
        self.headers = headers
        self.cookies = cookies
        self.seconds = cache.default_ttl if ttl is None else validate_ttl(ttl)
        self.early_refresh = bool(options.get("early_refresh"))
        self.name = name or f"{endpoint.__module__}.{endpoint.__qualname__}.http"
        _claim(cache, self.name)
        signature = params.resolved_signature(endpoint)
        self.own = list(signature.parameters)
        self.builder = keys.KeyBuilder(self.name, analysis, key, self.own)
        self.vary = [*analysis.vary, "accept-encoding"]

        async def load(**kwargs: Any) -> Envelope:
            return await self._load(kwargs)

        hidden = inspect.Parameter(_CALL, inspect.Parameter.KEYWORD_ONLY)
        load.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*(p.replace(kind=p.KEYWORD_ONLY) for p in signature.parameters.values()
                          if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)), hidden],
            return_annotation=inspect.Signature.empty,
        )  # fmt: skip
        load.__module__, load.__qualname__ = endpoint.__module__, f"{endpoint.__qualname__}.http"

        def key_of(**kwargs: Any) -> str:
            call: Call = kwargs[_CALL]
            return call.key or self.key(kwargs)  # built once per request, in serve

        key_of.__qualname__ = self.name

        def refused(envelope: Envelope) -> bool:
            return bool(envelope[_KIND] != "c")

        self.fn: CachedFunction[..., Envelope] = cache.cached(
            ttl, tags, key_of, unless=refused, **options
        )(load)

    # --- keys -----------------------------------------------------------------------

    def key(self, kwargs: dict[str, Any]) -> str:
        """Route-aware (issue 19, item 5): the route's template is written out, and
        the request's root path and path go into the digest, so endpoints built in
        a loop, one router included under several prefixes or an app mounted per
        tenant never share entries. Only integer path parameters are written out;
        every other value is hashed (item 4: a token in a query parameter, a
        header or a dependency never appears in a Redis key name)."""
        call: Call = kwargs[_CALL]
        scope = call.request.scope
        route = getattr(scope.get("route"), "path_format", None) or getattr(
            scope.get("route"), "path", ""
        )
        path_params = scope.get("path_params") or {}
        readable = frozenset(
            name for name in path_params if type(kwargs.get(name)) is int and name in self.own
        )
        extra: list[tuple[str, str]] = [
            ("url:root_path", str(scope.get("root_path", ""))),
            ("url:path", str(scope.get("path", ""))),
        ]
        for name in self.headers:
            extra.append((f"header:{name}", repr(call.request.headers.getlist(name))))
        for name in self.cookies:
            extra.append((f"cookie:{name}", repr(call.request.cookies.get(name))))
        arguments = {k: v for k, v in kwargs.items() if k != _CALL}
        return self.builder.key(arguments, tuple(extra), str(route), readable)

    # --- the miss path -------------------------------------------------------------

    async def _load(self, kwargs: dict[str, Any]) -> Envelope:
        call: Call = kwargs.pop(_CALL)
        if call.answered:
            # A background refresh (early_refresh), begun by a request that was
            # answered meanwhile: its response is gone, so the endpoint writes to
            # a scratch one. (Only endpoints without request-scoped dependencies
            # may refresh in the background: see `check_background_options`.)
            return await self._run(call, kwargs, Response(), own=False)
        call.ran = True
        return await self._run(call, kwargs, call.response, own=True)

    async def _run(
        self, call: Call, kwargs: dict[str, Any], response: Response, *, own: bool
    ) -> Envelope:
        own_response = self.analysis.response_param
        if own_response is not None:
            kwargs[own_response] = response
        if not own:
            response.status_code = None  # type: ignore[assignment]  # as FastAPI's own
        before = list(response.headers.raw)
        status_before = response.status_code
        try:
            result = await self.endpoint(**kwargs)
        except BaseException:
            call.failed = call.failed or own
            raise
        finally:
            call.done = call.done or own
        if own:
            call.raw = result
        now = time.time()
        status = response.status_code if response.status_code != status_before else None
        if isinstance(result, Response) or status not in _CACHEABLE_STATUS:
            # A Response object is the endpoint's own answer to this request (a
            # redirect with its cookie, a file): passed through, never stored or shared.
            return ["p", "", now, now, None, None, []]
        added = _added_headers(before, list(response.headers.raw))
        content = await _content(call.request, result)
        kind = "u" if self.unless is not None and self.unless(result) else "c"
        stamp = _stamp(content, status, added)
        return [kind, stamp, now, now + self.seconds, content, status, added]

    # --- every request ------------------------------------------------------------------

    async def serve(self, kwargs: dict[str, Any]) -> Any:
        own_request, own_response = self.analysis.request_param, self.analysis.response_param
        request: Request = kwargs[own_request] if own_request else kwargs.pop(_REQUEST)
        response: Response = kwargs[own_response] if own_response else kwargs.pop(_RESPONSE)
        if request.method not in ("GET", "HEAD"):
            return await self.endpoint(**kwargs)  # only GET and HEAD are cached
        declared = {h.lower() for h in self.headers}
        if self.analysis.request_param is not None and _is_credential_bearing(
            request, declared, bool(self.cookies)
        ):
            # The endpoint reads the request, and this one carries a credential that
            # the key does not hold: answered, never cached (issue 19, item 1).
            response.headers["X-Cache"] = "BYPASS"
            response.headers.setdefault("Cache-Control", "private, no-store")
            return await self.endpoint(**kwargs)
        call = Call(request, response, time.time())
        loading = {**kwargs, _CALL: call}
        call.key = self.key(loading)
        asked = rfc.directives(request.headers.getlist("cache-control"))
        envelope: Envelope | None = None
        tier = "MISS"
        if self.revalidate_on_no_cache and self._wants_fresh(request, asked):
            await self.fn.invalidate(**loading)
        else:
            found, where = await self.fn.lookup(**loading)
            if found is not MISS and where is not None:
                envelope, tier = found, where
                if where == "L1" and self.early_refresh:
                    envelope = await self.fn(**loading)  # XFetch may refresh it meanwhile
        if envelope is None and "no-store" in asked:
            # RFC 9111 §5.2.1.5: nothing of a response to this request is stored.
            envelope = await self._load({**kwargs, _CALL: call})
            if envelope[_KIND] == "c":
                envelope[_KIND] = "u"
        elif envelope is None:
            envelope = await self.fn(**loading)
            if not (call.ran and call.done and not call.failed) and (
                call.failed or envelope[_CREATED] < call.started
            ):
                tier = "STALE"  # an older answer, served by stale_if_error/soft_timeout
        call.answered = True
        if envelope[_KIND] == "p":
            return call.raw if call.ran else await self.endpoint(**kwargs)
        return self._answer(call, envelope, tier)

    def _wants_fresh(self, request: Request, asked: dict[str, str | None]) -> bool:
        """`no-cache`, `max-age=0` (RFC 9111 §5.2.1.1, §5.2.1.4), or `Pragma:
        no-cache` without `Cache-Control` (§5.4): the client wants a response
        the origin has just made."""
        if "no-cache" in asked or asked.get("max-age") in ("0", "00"):
            return True
        return not asked and "no-cache" in request.headers.get("pragma", "").lower()

    def _answer(self, call: Call, envelope: Envelope, tier: str) -> Any:
        response, request = call.response, call.request
        own = call.ran and call.done and not call.failed  # this request's endpoint answered
        if not own:  # the endpoint ran for another request, or not at all
            for name, value in envelope[_HEADERS]:
                response.headers.append(name, value)
            if envelope[_STATUS] is not None:
                response.status_code = envelope[_STATUS]
        value = call.raw if own else envelope[_CONTENT]
        headers = response.headers
        headers["X-Cache"] = tier
        headers["Vary"] = rfc.merge_vary(headers.get("vary"), self.vary)
        if envelope[_KIND] != "c":  # refused by unless= or by the client's no-store
            headers["Cache-Control"] = "no-store"
            return value
        coding = rfc.codings(request.headers.getlist("accept-encoding"))
        etag = rfc.etag_of(call.key, envelope[_STAMP], coding)
        headers["ETag"] = etag
        # RFC 9111 §4.2.3: max-age is the entry's whole lifetime and Age how much of
        # it is gone, so a downstream cache keeps it for what the entry has left.
        now = time.time()
        headers["Age"] = str(max(0, math.floor(now - envelope[_CREATED])))
        if "cache-control" not in {n.lower() for n, _ in envelope[_HEADERS]}:
            lifetime = max(0, round(envelope[_EXPIRES] - envelope[_CREATED]))
            headers["Cache-Control"] = f"{'private, ' if self.private else ''}max-age={lifetime}"
        if rfc.none_match(request.headers.getlist("if-none-match"), etag):
            kept = [(n, v) for n, v in headers.raw if n not in (b"content-length", b"content-type")]
            not_modified = Response(status_code=304)
            not_modified.headers.raw.extend(kept)
            return not_modified
        return value


def decorate(
    cache: TwoTierCache,
    endpoint: Callable[..., Awaitable[Any]],
    state: HttpCached,
) -> Callable[..., Awaitable[Any]]:
    """The function FastAPI sees: the endpoint's own signature and return
    annotation (so its OpenAPI schema is unchanged), plus the request and the
    response when the endpoint does not take them."""
    signature = params.resolved_signature(endpoint)

    @functools.wraps(endpoint)
    async def serve(**kwargs: Any) -> Any:
        return await state.serve(kwargs)

    parameters = [
        p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    if state.analysis.request_param is None:
        parameters.append(
            inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
        )
    if state.analysis.response_param is None:
        parameters.append(
            inspect.Parameter(_RESPONSE, inspect.Parameter.KEYWORD_ONLY, annotation=Response)
        )
    serve.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return serve
