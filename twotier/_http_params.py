"""What an endpoint's answer depends on, read from its signature (issue 19, item 1).

FastAPI fills an endpoint's parameters from the request: the path, the query,
headers, cookies, the body, and dependencies (`Depends`, `Security`,
`Annotated[T, Depends(...)]`), which themselves read any of these. A cached
answer may only be shared between requests that agree on every parameter that
can change it, so by default *every* parameter is part of the key, dependency
values included; only the framework's plumbing (`Response`, `BackgroundTasks`,
`SecurityScopes`) is left out by itself, and the developer leaves out the rest
explicitly (`ignore=["session"]`).

This module walks the endpoint's signature and, recursively, its dependencies'
(our own walk over `inspect.signature`, not FastAPI's private `Dependant`
model, whose fields change between releases), and decides:

* which parameters are keyed, and which of those are dependency values (their
  rendering is hashed: they may hold a user, a token);
* which dependency values can never be rendered stably (an `AsyncSession`):
  refused when the decorator is applied, with the parameter and the fix named;
* which request headers the answer varies on (`Vary`), and whether it is
  per-caller (`private`): cookies, credentials, security schemes, or a
  dependency that reads the whole `Request`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import enum
import inspect
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from fastapi import BackgroundTasks, Response
from fastapi import params as fastapi_params
from fastapi.security import SecurityScopes
from fastapi.security.base import SecurityBase
from starlette.requests import HTTPConnection

from ._exceptions import ConfigurationError

#: The framework's plumbing: never part of what an answer says.
PLUMBING_TYPES: tuple[type, ...] = (Response, BackgroundTasks, SecurityScopes)
#: Headers that carry credentials (RFC 9110 §11.6, §11.7; RFC 6265).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Header names that, by convention, carry a credential or an identity (an API key,
#: a session or access token, a user id). Keyed on, they make an answer private.
_CREDENTIAL_WORDS = ("auth", "token", "key", "session", "user", "secret", "password")


def is_credential_header(name: str) -> bool:
    name = name.lower()
    return name in CREDENTIAL_HEADERS or any(word in name for word in _CREDENTIAL_WORDS)


@dataclasses.dataclass
class _Reads:
    """What one callable (an endpoint or a dependency), with its sub-dependencies, reads."""

    headers: set[str] = dataclasses.field(default_factory=set)
    cookies: bool = False
    security: bool = False
    request: bool = False  # the whole Request / HTTPConnection: anything at all

    def add(self, other: _Reads) -> None:
        self.headers |= other.headers
        self.cookies |= other.cookies
        self.security |= other.security
        self.request |= other.request

    @property
    def per_caller(self) -> bool:
        return (
            self.cookies
            or self.security
            or self.request
            or any(is_credential_header(h) for h in self.headers)
        )


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # "path-or-query", "header", "cookie", "body", "depends", "request", "plumbing"
    annotation: Any
    reads: _Reads
    dependency: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The endpoint's parameters as they enter keys and headers."""

    parameters: tuple[Parameter, ...]
    keyed: tuple[str, ...]  # in signature order
    hashed: frozenset[str]  # keyed values that may identify a caller: always hashed
    deferred: frozenset[str]  # dependency values checked at the first request
    request_param: str | None  # the endpoint's own Request parameter
    response_param: str | None
    vary: tuple[str, ...]  # lower-case header names
    per_caller: bool
    reasons: tuple[str, ...]  # why it is per-caller, for the strategy page and errors


def resolved_signature(func: Callable[..., Any]) -> inspect.Signature:
    """The signature with string annotations (`from __future__ import annotations`)
    evaluated in the function's module, so the wrapper's signature means the same
    wherever FastAPI evaluates it."""
    try:
        return inspect.signature(func, eval_str=True)
    except (NameError, TypeError):  # a name only imported under TYPE_CHECKING
        return inspect.signature(func)


_MARKERS = (fastapi_params.Depends, fastapi_params.Param, fastapi_params.Body)


def _split(param: inspect.Parameter) -> tuple[Any, Any]:
    """(annotation, FastAPI marker or None) of one parameter, `Annotated` unwrapped."""
    hint, marker = param.annotation, None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        for extra in extras:
            if isinstance(extra, _MARKERS):
                marker = extra
    if isinstance(param.default, _MARKERS):
        marker = param.default
    return hint, marker


def _is_type(hint: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(hint, type) and issubclass(hint, kinds)


def _header_name(name: str, marker: Any) -> str:
    alias = getattr(marker, "alias", None)
    if alias:
        return str(alias).lower()
    if getattr(marker, "convert_underscores", True):
        return name.replace("_", "-").lower()
    return name.lower()


def _security_reads(scheme: SecurityBase) -> _Reads:
    reads = _Reads(security=True)
    model = getattr(scheme, "model", None)
    where = str(getattr(getattr(model, "in_", None), "value", getattr(model, "in_", "")))
    name = getattr(model, "name", None)
    if where == "cookie":
        reads.cookies = True
    elif where == "header" and name:
        reads.headers.add(str(name).lower())
    elif where == "query":
        pass  # a query parameter: in the URL, hence in the key
    else:  # HTTP Basic/Bearer/Digest, OAuth2, OpenID Connect: the Authorization header
        reads.headers.add("authorization")
    return reads


def _reads_of(call: Callable[..., Any], depth: int = 0) -> _Reads:
    """What *call* reads, with its sub-dependencies (FastAPI's own recursion)."""
    if isinstance(call, SecurityBase):
        return _security_reads(call)
    reads = _Reads()
    if depth > 32:  # a dependency graph this deep is a cycle FastAPI refuses anyway
        return reads
    try:
        signature = resolved_signature(call)
    except (TypeError, ValueError):
        reads.request = True  # cannot tell: assume the worst
        return reads
    for param in signature.parameters.values():
        reads.add(_classify(param, depth).reads)
    return reads


def _classify(param: inspect.Parameter, depth: int = 0) -> Parameter:
    hint, marker = _split(param)
    name = param.name
    if isinstance(marker, fastapi_params.Depends):
        dependency = marker.dependency or (hint if callable(hint) else None)
        reads = _Reads()
        if isinstance(marker, fastapi_params.Security):
            reads.security = True
        if dependency is not None:
            reads.add(_reads_of(dependency, depth + 1))
        return Parameter(name, "depends", hint, reads, dependency)
    if _is_type(hint, (HTTPConnection,)):
        return Parameter(name, "request", hint, _Reads(request=True))
    if _is_type(hint, PLUMBING_TYPES):
        return Parameter(name, "plumbing", hint, _Reads())
    if isinstance(marker, fastapi_params.Header):
        return Parameter(name, "header", hint, _Reads(headers={_header_name(name, marker)}))
    if isinstance(marker, fastapi_params.Cookie):
        return Parameter(name, "cookie", hint, _Reads(cookies=True))
    if isinstance(marker, (fastapi_params.Body, fastapi_params.Form, fastapi_params.File)):
        return Parameter(name, "body", hint, _Reads())
    return Parameter(name, "path-or-query", hint, _Reads())


# --- can a value of this annotation be rendered stably? -----------------------------------

_RENDERABLE = (int, float, bool, str, bytes, Decimal, uuid.UUID, datetime.date, datetime.time)
_RENDERABLE_MORE = (datetime.timedelta, type(None), enum.Enum)
_CONTAINERS = (list, tuple, dict, set, frozenset, collections.abc.Sequence, collections.abc.Mapping)
_ITERATORS = (
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.Generator,
    collections.abc.AsyncIterable,
    collections.abc.Iterable,
)


def renderable(hint: Any) -> bool | None:
    """True: values of *hint* have a canonical text (`_keys.encode_argument`);
    False: they never have one (a database session, a client); None: unknown
    (no annotation, `Any`, a protocol): checked on the value at the first request."""
    if hint is inspect.Parameter.empty or hint is Any or hint is None:
        return None if hint is not None else True
    if isinstance(hint, (typing.TypeVar, str)):
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return renderable(typing.get_args(hint)[0])
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        answers = [renderable(arg) for arg in typing.get_args(hint)]
        if False in answers:
            return False
        return None if None in answers else True
    if origin is not None:
        if _is_type(origin, _CONTAINERS):
            answers = [renderable(arg) for arg in typing.get_args(hint) if arg is not Ellipsis]
            if False in answers:
                return False
            return None if None in answers else True
        return None
    if not isinstance(hint, type):
        return None
    if issubclass(hint, _RENDERABLE + _RENDERABLE_MORE):
        return True
    if hint in (list, tuple, dict, set, frozenset):
        return None  # items unknown
    if dataclasses.is_dataclass(hint):
        return True  # its fields are checked on the value
    if getattr(hint, "model_fields", None) is not None and hasattr(hint, "model_validate"):
        return True  # a pydantic model: its fields are checked on the value
    if getattr(hint, "_is_protocol", False):
        return None
    if hint is object:
        return None
    return False


def dependency_result(dependency: Callable[..., Any] | None) -> Any:
    """The annotation of what a dependency provides: its return annotation, the
    item of a generator dependency (`-> AsyncIterator[Session]`), or the class
    itself for a class dependency (`Depends()` under `x: Commons`)."""
    if dependency is None:
        return inspect.Parameter.empty
    if isinstance(dependency, type):
        return dependency
    if isinstance(dependency, SecurityBase):
        return inspect.Parameter.empty  # what it returns depends on the scheme: checked later
    try:
        hint = resolved_signature(dependency).return_annotation
    except (TypeError, ValueError):
        return inspect.Parameter.empty
    if hint is inspect.Signature.empty:
        return inspect.Parameter.empty
    origin = typing.get_origin(hint)
    if origin is not None and _is_type(origin, _ITERATORS) and typing.get_args(hint):
        return typing.get_args(hint)[0]
    return hint


def _type_text(hint: Any) -> str:
    return getattr(hint, "__qualname__", None) or repr(hint)


def analyse(
    func: Callable[..., Any],
    ignore: Iterable[str],
    *,
    what: str,
    key_given: bool,
    extra_headers: Iterable[str] = (),
    extra_cookies: Iterable[str] = (),
) -> Analysis:
    """Classify *func*'s parameters; refuse dependency values that can never key."""
    if isinstance(ignore, str):
        raise ConfigurationError(f"ignore= of {what} must be a list of names, not {ignore!r}")
    ignored = set(ignore)
    signature = resolved_signature(func)
    unknown = ignored - set(signature.parameters)
    if unknown:
        raise ConfigurationError(
            f"ignore= of {what} names unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(signature.parameters) or '(none)'}"
        )
    parameters = tuple(_classify(p) for p in signature.parameters.values())
    keyed: list[str] = []
    hashed: set[str] = set()
    deferred: set[str] = set()
    reads = _Reads()
    reasons: list[str] = []
    request_param = response_param = None
    for param in parameters:
        if param.kind == "request":
            request_param = request_param or param.name
        if param.kind == "plumbing" and _is_type(param.annotation, (Response,)):
            response_param = response_param or param.name
        if param.kind in ("plumbing", "request") or param.name in ignored:
            continue
        reads.add(param.reads)
        if param.reads.per_caller:
            reasons.append(param.name)
        keyed.append(param.name)
        if param.kind in ("depends", "header", "cookie"):
            hashed.add(param.name)
        if param.kind != "depends" or key_given:
            continue
        hint = param.annotation
        if hint is inspect.Parameter.empty:
            hint = dependency_result(param.dependency)
        verdict = renderable(hint)
        if verdict is False:
            source = getattr(param.dependency, "__qualname__", None) or "a dependency"
            raise ConfigurationError(
                f"{what}: parameter {param.name!r} (from Depends({source})) is a "
                f"{_type_text(hint)}, which has no stable text for a cache key. If it does not "
                f"change the answer (a database session, a client), pass ignore=[{param.name!r}]; "
                "if it does, make the dependency return what identifies the answer (an id, a "
                "dataclass, a pydantic model), or pass key="
            )
        if verdict is None:
            deferred.add(param.name)
    for header in extra_headers:
        reads.headers.add(header.lower())
        if is_credential_header(header):
            reasons.append(f"header {header}")
    if list(extra_cookies):
        reads.cookies = True
        reasons.append("cookies")
    vary = sorted(reads.headers | ({"cookie"} if reads.cookies else set()))
    return Analysis(
        parameters=parameters,
        keyed=tuple(keyed),
        hashed=frozenset(hashed),
        deferred=frozenset(deferred),
        request_param=request_param,
        response_param=response_param,
        vary=tuple(vary),
        per_caller=reads.per_caller,
        reasons=tuple(reasons),
    )
