"""The caching strategy of an application, generated from its code.

Two things make it possible without a hand-written list that drifts:

* every `@cache.cached` function (and every `twotier.fastapi.http_cached`
  endpoint) knows its key, TTL and tag templates (`describe()`);
* a write declares what it invalidates with `@invalidates(cache, "charges",
  "charge:{charge_id}")`, which also *does* the invalidation after the write
  returns — the seed's update pattern, "write the database, then invalidate
  the tags" — so the declaration cannot drift from the behaviour.

`python -m twotier.strategy erp.app [--app-dir compose] [--json]` imports the
module, finds both kinds in its package, matches the tag templates (a write
invalidates a cached function when one of its templates can render to one of
the function's tags) and prints a Markdown page. (It becomes `twotier strategy`
once the command line has moved to `twotier/cli/`.)

This module is framework-free: FastAPI routes are shown when the module has a
Starlette-style `app` with `.routes`, and are simply absent otherwise.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import re
import string
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ParamSpec, TypeVar

from ._cache import TwoTierCache
from ._decorator import _Cached
from ._exceptions import ConfigurationError
from ._keys import Template

__all__ = ["CachedInfo", "Strategy", "WriteInfo", "collect", "invalidates", "render_markdown"]

P = ParamSpec("P")
R = TypeVar("R")


def invalidates(
    cache: TwoTierCache, *tags: str, also: Iterable[str] = ()
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Declare, and perform, the tag invalidations of a write.

    *tags* are templates over the function's parameters (`"charge:{charge_id}"`),
    checked when the decorator is applied. When the function returns, they are
    rendered with its arguments and invalidated on every instance, awaited (so
    the caller's next read sees the change: read-your-writes). When it raises,
    nothing is invalidated: the write did not happen. The function must have
    committed its write before it returns — a commit in a dependency's
    teardown would run after the invalidation, and a reader in between could
    cache the old row again.

    *also* lists tags the function invalidates itself because they depend on
    data rather than arguments (the old category of a moved article); they are
    only documented here, for the strategy page.
    """

    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(f"@invalidates needs an async function, not {func!r}")
        name = f"{func.__module__}.{func.__qualname__}"
        signature = inspect.signature(func)
        templates = [
            Template.compile(t, signature.parameters, "invalidated tag", name) for t in tags
        ]
        extra = list(also)
        if isinstance(also, str):
            raise ConfigurationError(f"also= of {name} must be a list of tags, not {also!r}")

        @functools.wraps(func)
        async def write(*args: P.args, **kwargs: P.kwargs) -> R:
            result = await func(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            await cache.invalidate_tags([t.render(bound.arguments) for t in templates])
            return result

        write.__twotier_invalidates__ = {  # type: ignore[attr-defined]
            "tags": [t.text for t in templates],
            "also": extra,
        }
        return write

    return decorate


# --- collecting ------------------------------------------------------------------------


@dataclass
class CachedInfo:
    function: str
    key: str
    ttl: float
    tags: list[str]
    ignored: list[str]
    unless: bool
    http: bool = False
    routes: list[str] = field(default_factory=list)
    invalidated_by: list[str] = field(default_factory=list)


@dataclass
class WriteInfo:
    function: str
    tags: list[str]
    also: list[str]
    routes: list[str] = field(default_factory=list)
    invalidates: list[str] = field(default_factory=list)


@dataclass
class Strategy:
    module: str
    cached: list[CachedInfo]
    writes: list[WriteInfo]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pattern(template: str) -> re.Pattern[str]:
    parts = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            parts.append(".+")
    return re.compile("".join(parts))


def _sample(template: str) -> str:
    return "".join(
        literal + ("\x00" if name is not None else "")
        for literal, name, _spec, _conv in string.Formatter().parse(template)
    )


def may_match(a: str, b: str) -> bool:
    """Whether two tag templates can render to the same tag (fields match anything)."""
    return bool(_pattern(a).fullmatch(_sample(b)) or _pattern(b).fullmatch(_sample(a)))


def _all_routes(routes: Iterable[Any], depth: int = 0) -> Iterable[Any]:
    """Routes, through included routers and mounts (FastAPI may keep an included
    router as one lazy entry that points at the original router)."""
    for route in routes:
        if getattr(route, "endpoint", None) is not None:
            yield route
        elif depth < 8:
            inner = getattr(route, "original_router", None) or route
            yield from _all_routes(getattr(inner, "routes", None) or (), depth + 1)


def _routes(module: Any) -> dict[int, list[str]]:
    """id(endpoint, and every function it wraps) → ["GET /path", ...]."""
    found: dict[int, list[str]] = {}
    app = getattr(module, "app", None)
    for route in _all_routes(getattr(app, "routes", None) or ()):
        endpoint, path = route.endpoint, getattr(route, "path", None)
        if path is None:
            continue
        methods = sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}) or ["*"]
        label = ", ".join(f"{m} {path}" for m in methods)
        seen: Any = endpoint
        while seen is not None:
            found.setdefault(id(seen), []).append(label)
            seen = getattr(seen, "__wrapped__", None)
    return found


def collect(module_name: str) -> Strategy:
    """Import *module_name* and describe every cached function and declared write
    in its top-level package."""
    module = importlib.import_module(module_name)
    root = module_name.split(".")[0]
    routes = _routes(module)
    cached: dict[int, CachedInfo] = {}
    writes: dict[int, WriteInfo] = {}
    for name in sorted(sys.modules):
        if name != root and not name.startswith(root + "."):
            continue
        for value in list(vars(sys.modules[name]).values()):
            inner = getattr(value, "__twotier_cached__", None)
            target = inner if isinstance(inner, _Cached) else value
            if isinstance(target, _Cached) and id(target) not in cached:
                info = CachedInfo(**target.describe())
                http = getattr(value, "__twotier_http__", None)
                if isinstance(http, dict):  # twotier.fastapi.http_cached: the endpoint's view
                    info.http, info.unless = True, bool(http.get("unless"))
                    info.key = str(http.get("key", info.key))
                    info.ignored = list(http.get("ignored", info.ignored))
                    info.function = f"{value.__module__}.{value.__qualname__}"
                info.routes = routes.get(id(value), [])
                cached[id(target)] = info
            declared = getattr(value, "__twotier_invalidates__", None)
            if isinstance(declared, dict) and id(value) not in writes:
                function = f"{value.__module__}.{value.__qualname__}"
                writes[id(value)] = WriteInfo(
                    function, list(declared["tags"]), list(declared["also"]),
                    routes=routes.get(id(value), []),
                )  # fmt: skip
    for write in writes.values():
        for info in cached.values():
            if any(may_match(w, c) for w in write.tags + write.also for c in info.tags):
                info.invalidated_by.append(write.function)
                write.invalidates.append(info.function)
    by_name = sorted(cached.values(), key=lambda i: i.function)
    return Strategy(module_name, by_name, sorted(writes.values(), key=lambda w: w.function))


# --- rendering -------------------------------------------------------------------------


def _code(items: Iterable[str]) -> str:
    return ", ".join(f"`{i}`" for i in items) or "—"


def _short(function: str, module: str) -> str:
    package = module.split(".")[0] + "."
    return function.removeprefix(package)


def render_markdown(strategy: Strategy) -> str:
    m = strategy.module
    lines = [
        f"# Caching strategy of `{m}`",
        "",
        f"Generated from the code by `python -m twotier.strategy {m}`: do not edit by hand.",
        "Key, TTL and tags come from each `@cached` function; the writes are the functions",
        "declared with `@invalidates`, matched to the cached functions by their tag templates.",
        "",
        "## Cached reads",
        "",
        "| function | route | key | TTL | tags | not cached when | invalidated by |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in strategy.cached:
        route = "<br>".join(c.routes) or "—"
        if c.http:
            route += " (HTTP: ETag, max-age)"
        extra = f" (ignores {_code(c.ignored)})" if c.ignored else ""
        lines.append(
            f"| `{_short(c.function, m)}` | {route} | `{c.key}`{extra} | {c.ttl:g} s "
            f"| {_code(c.tags)} | {'`unless=`' if c.unless else '—'} "
            f"| {'<br>'.join(f'`{_short(w, m)}`' for w in c.invalidated_by) or '— (TTL only)'} |"
        )
    lines += [
        "",
        "## Writes",
        "",
        "| function | route | invalidates tags | cached functions affected |",
        "|---|---|---|---|",
    ]
    for w in strategy.writes:
        tags = _code(w.tags) + (f"; itself: {_code(w.also)}" if w.also else "")
        affected = "<br>".join(f"`{_short(f, m)}`" for f in w.invalidates) or "—"
        lines.append(
            f"| `{_short(w.function, m)}` | {'<br>'.join(w.routes) or '—'} | {tags} | {affected} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twotier.strategy",
        description="Print the caching strategy of an application, generated from its code.",
    )
    parser.add_argument("module", help="the application module, e.g. erp.app")
    parser.add_argument("--app-dir", default=".", help="directory to import it from")
    parser.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.app_dir)
    strategy = collect(args.module)
    if args.json:
        print(json.dumps(strategy.as_dict(), indent=2))
    else:
        print(render_markdown(strategy), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
