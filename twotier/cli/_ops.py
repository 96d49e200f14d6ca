"""What the ops commands do against Redis, with no rendering: connecting (and
saying exactly why not), the namespace check, the instances' heartbeats, and
changes made through a real `TwoTierCache`.

Every Redis name comes from `twotier._redis.Layout`, never from a literal: the
layout changes with the wire format, and its attribute names are what stays.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from twotier import ConfigurationError, TwoTierCache, TwoTierError
from twotier._redis import Layout

#: Exit codes, the same for every command (docs/operations.md).
EXIT_OK = 0
EXIT_PROBLEM = 1  # doctor found a failure; a change Redis did not take; a loader failed
EXIT_USAGE = 2  # bad arguments (click's own code for usage errors)
EXIT_UNREACHABLE = 3  # wrong URL, host down, wrong password or user
EXIT_UNKNOWN_NAMESPACE = 4  # the namespace was never used on this server (no --force)

#: Fields of a heartbeat that are not counters, so `totals` does not add them up.
_NOT_SUMMED = frozenset({"hit_rate", "pid", "reported_at", "age"})


class CliError(Exception):
    """A failure reported as one line and an exit code, never as a traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def redact(url: str) -> str:
    """*url* with its password replaced by `***`, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_namespace(namespace: str) -> None:
    """The library's own rule for a namespace, as a usage error."""
    try:
        TwoTierCache(namespace=namespace)  # memory mode: nothing starts, nothing connects
    except ConfigurationError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _where(client: aioredis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


async def connect(url: str | None, seconds: float) -> aioredis.Redis:
    """A client on *url* that has answered a PING, or a `CliError` saying why not."""
    if not url:
        raise CliError("no Redis URL: give --url or set TWOTIER_REDIS_URL", EXIT_USAGE)
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise CliError(
            f"not a Redis URL the command line can use: {redact(url)} "
            "(expected redis://, rediss:// or unix://)",
            EXIT_USAGE,
        )
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=seconds,
            socket_connect_timeout=seconds,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise CliError(f"not a valid Redis URL: {redact(url)} ({exc})", EXIT_USAGE) from None
    where = _where(client)
    try:
        await client.ping()
    except AuthenticationError as exc:
        await client.aclose()
        text = str(exc)
        if urlsplit(url).password is None:
            reason = "the server needs a password and the URL gives none"
        elif "without any password configured" in text:
            reason = "the URL gives a password but the server has none configured"
        else:
            reason = "wrong user name or password"
        raise CliError(
            f"authentication failed at {where}: {reason} (server: {text})", EXIT_UNREACHABLE
        ) from None
    except ResponseError as exc:  # e.g. an old server without ACL users
        await client.aclose()
        raise CliError(f"{where} refused the connection: {exc}", EXIT_UNREACHABLE) from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await client.aclose()
        raise CliError(
            f"cannot connect to {where} ({redact(url)}): {exc or type(exc).__name__}",
            EXIT_UNREACHABLE,
        ) from None
    return client


def glob_escape(text: str) -> str:
    """*text* as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def count_keys(
    client: aioredis.Redis,
    pattern: str,
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """How many keys match the SCAN *pattern* (in batches; *progress* gets the running count)."""
    count = 0
    cursor: int = 0
    while True:
        cursor, names = await client.scan(cursor, match=pattern, count=1000)
        count += len(names)
        progress(count)
        if cursor == 0:
            return count


async def heartbeats(client: aioredis.Redis, namespace: str) -> list[dict[str, Any]]:
    """Every live instance's last report (a JSON of its `get_stats()` plus host, pid
    and reported_at), sorted by host, pid and instance id.

    The heartbeat keys are control keys: they share the namespace's control slot,
    so they all live on one node, and one SCAN finds them.
    """
    prefix = Layout(namespace).heartbeat_prefix
    names = [name async for name in client.scan_iter(match=glob_escape(prefix) + "*", count=1000)]
    values = await client.mget(names) if names else []
    now = time.time()
    reports: list[dict[str, Any]] = []
    for name, raw in zip(names, values, strict=True):
        if raw is None:  # expired between SCAN and MGET
            continue
        instance = name.decode(errors="replace")[len(prefix) :]
        try:
            report = json.loads(raw)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            report = {"error": "unreadable heartbeat"}
        report.setdefault("instance", instance)
        reported_at = report.get("reported_at")
        if isinstance(reported_at, int | float):
            report["age"] = round(max(0.0, now - reported_at), 3)
        reports.append(report)
    reports.sort(key=lambda r: (str(r.get("host", "")), str(r.get("pid", "")), r["instance"]))
    return reports


def totals(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The instances' counters added up, with the hit rate of the sums."""
    out: dict[str, Any] = {}
    count = connected = 0
    for report in reports:
        count += 1
        connected += report.get("redis_available") is True
        for name, value in report.items():
            if name in _NOT_SUMMED or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                out[name] = out.get(name, 0) + value
    hits, misses = out.get("hits", 0), out.get("misses", 0)
    out["hit_rate"] = round(100.0 * hits / (hits + misses), 2) if hits + misses else 0.0
    out["instances"] = count
    out["instances_connected"] = connected
    return out


async def namespace_known(client: aioredis.Redis, namespace: str) -> bool:
    """Has any instance ever used *namespace* on this server? (Its change counter,
    its generation's epoch or its tag versions exist, or an instance reports.)"""
    layout = Layout(namespace)
    if await client.exists(layout.seq, layout.epoch, layout.tags):
        return True
    return bool(await heartbeats(client, namespace))


async def namespaces_in_use(client: aioredis.Redis, budget: float = 2.0) -> list[str]:
    """The namespaces this server has change counters for (SCAN, at most *budget* s).

    The pattern is derived from `Layout`, with a marker standing for the namespace.
    """
    marker = "NAMESPACEMARKER"
    before, after = Layout(marker).seq.split(marker)
    pattern = glob_escape(before) + "*" + glob_escape(after)
    found: set[str] = set()
    deadline = time.monotonic() + budget
    cursor: int = 0
    while True:
        cursor, names = await client.scan(cursor, match=pattern, count=1000)
        for name in names:
            text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            if text.startswith(before) and text.endswith(after):
                found.add(text[len(before) : len(text) - len(after)])
        if cursor == 0 or time.monotonic() > deadline:
            return sorted(found)


async def require_namespace(client: aioredis.Redis, namespace: str, force: bool) -> None:
    """Refuse a namespace nothing ever used (a misspelling must not be a silent no-op)."""
    if force or await namespace_known(client, namespace):
        return
    others = await namespaces_in_use(client)
    seen = f"namespaces in use there: {', '.join(others)}" if others else "none is in use there"
    raise CliError(
        f"namespace {namespace!r} has never been used on {_where(client)} "
        f"(no change counter, epoch or live instance; {seen}); "
        "check --namespace / TWOTIER_NAMESPACE, or pass --force",
        EXIT_UNKNOWN_NAMESPACE,
    )


@dataclass
class Target:
    """Where a command acts: the URL, the namespace, and the timeout of each Redis call."""

    url: str | None
    namespace: str
    timeout: float


async def checked_client(target: Target, force: bool | None) -> aioredis.Redis:
    """`connect`, then the namespace check (skipped when *force* is None: read-only use)."""
    check_namespace(target.namespace)
    client = await connect(target.url, target.timeout)
    if force is not None:
        try:
            await require_namespace(client, target.namespace, force)
        except BaseException:
            await client.aclose()
            raise
    return client


async def with_cache(
    target: Target, action: Callable[[TwoTierCache], Awaitable[Any]]
) -> tuple[Any, dict[str, Any]]:
    """Run *action* on a started `TwoTierCache` of the target, so that its changes
    reach every instance as any instance's would; (result, stats after it).

    A change Redis did not take is queued by the cache, not raised (guarantee 6);
    here that is a failure to report, since the process ends right after.
    """
    assert target.url is not None  # checked by `connect` before
    cache = TwoTierCache(
        redis_url=target.url,
        namespace=target.namespace,
        redis_timeout=target.timeout,
        connect_timeout=target.timeout,
    )
    try:
        await cache.start()
        if not cache.redis_available:
            why = cache.get_stats().get("last_error") or "no answer"
            raise CliError(f"the cache could not use Redis: {why}", EXIT_UNREACHABLE)
        result = await action(cache)
        stats = cache.get_stats()
        if stats["queued_ops_pending"]:
            why = stats.get("last_error") or "no reason given"
            raise CliError(f"Redis did not take the change: {why}", EXIT_PROBLEM)
        return result, stats
    except TwoTierError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        await cache.close()


def import_loader(spec: str) -> Callable[[str], Any]:
    """`module:function` (the function may be dotted: `module:Class.method`), imported
    with the working directory on the path, as uvicorn and gunicorn do."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"--loader must be module:function, got {spec!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(
            f"cannot import the loader's module {module_name!r}: {exc}", EXIT_USAGE
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"{module_name!r} has no {attribute!r}", EXIT_USAGE) from None
    if not callable(target):
        raise CliError(f"{spec} is not callable", EXIT_USAGE)
    loader: Callable[[str], Any] = target
    return loader


def read_keys(path: str) -> list[str]:
    """One key a line; blank lines skipped; `-` reads standard input."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except OSError as exc:
        raise CliError(f"cannot read the keys file: {exc}", EXIT_USAGE) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


async def warmup(
    cache: TwoTierCache,
    keys: list[str],
    loader: Callable[[str], Any],
    *,
    concurrency: int,
    ttl: float | None,
    tags: tuple[str, ...],
    progress: Callable[[int, int], None],
    batch: int = 500,
) -> int:
    """`cache.warmup` over *keys* in batches; *progress* gets (keys done, filled) after each."""
    filled = done = 0
    for start in range(0, len(keys), batch):
        chunk = keys[start : start + batch]
        filled += await cache.warmup(chunk, loader, concurrency=concurrency, ttl=ttl, tags=tags)
        done += len(chunk)
        progress(done, filled)
    return filled


def run(coro: Awaitable[Any]) -> Any:
    """Run one command's coroutine on a fresh event loop."""

    async def main() -> Any:
        return await coro

    return asyncio.run(main())
