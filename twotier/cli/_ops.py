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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from twotier import ConfigurationError, TwoTierCache, TwoTierError
from twotier._redis import Layout
from twotier._topology import Clients, Kind, detect
from twotier._topology import Target as Topology
from twotier._topology import parse as parse_target

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


@dataclass
class Server:
    """A connected deployment, whatever its URL's form: `client` sends commands
    (a `RedisCluster` for a cluster: it routes keyed commands to the slot's
    master; for Sentinel, the master's client), `where` is the server asked
    (the node of the URL, the master the sentinels name) for messages."""

    kind: Kind
    clients: Clients
    where: str
    target: Topology

    @property
    def client(self) -> Any:
        return self.clients.data

    async def aclose(self) -> None:
        await self.clients.aclose()

    def primaries(self) -> list[Any]:
        """The cluster's masters as redis-py sees them (`target_nodes=`); [None]
        (the one server) for any other topology."""
        if self.kind != "cluster":
            return [None]
        primaries: list[Any] = self.client.get_primaries()
        return sorted(primaries, key=lambda node: (node.host, node.port))

    def node_client(self, node: Any, seconds: float) -> aioredis.Redis:
        """A plain client on one cluster node, with the URL's credentials and TLS
        (the caller closes it)."""
        options: dict[str, Any] = dict(parse_url(self.target.url))
        options.update(host=node.host, port=node.port)
        return aioredis.Redis(
            **options,
            socket_timeout=seconds,
            socket_connect_timeout=seconds,
            retry=Retry(NoBackoff(), 0),
        )


async def _on_connect(connection: Any) -> None:
    await connection.on_connect()


def _target(url: str | None) -> Topology:
    if not url:
        raise CliError("no Redis URL: give --url or set TWOTIER_REDIS_URL", EXIT_USAGE)
    try:
        target = parse_target(url)
        parse_url(target.url)  # the port, the database, the query arguments
    except (ConfigurationError, ValueError) as exc:
        raise CliError(
            f"not a Redis URL the command line can use: {redact(url)} ({exc})", EXIT_USAGE
        ) from None
    return target


async def connect(url: str | None, seconds: float) -> Server:
    """The deployment *url* names, connected (a PING answered; for a cluster the
    slot map read; for Sentinel the master found), or a `CliError` saying why not.

    The URL forms are the library's (`twotier._topology`): `redis://` (a cluster
    node behind it is detected), `rediss://`, `redis+cluster://`,
    `redis+sentinel://h:p,h:p/service`; the clients are the ones the cache
    builds.
    """
    target = await detect(_target(url), seconds)
    assert url is not None
    kind: Kind = target.kind or "standalone"
    try:
        clients = Clients(
            target,
            timeout=seconds,
            connect_timeout=seconds,
            max_connections=8,
            prepare=_on_connect,
        )
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise CliError(f"not a valid Redis URL: {redact(url)} ({exc})", EXIT_USAGE) from None
    where = target.described()
    try:
        if kind == "cluster":
            where = f"the cluster of {_address(target.url)}"
            await clients.data.initialize()
        elif kind == "sentinel":
            assert clients.sentinel is not None
            sentinels = ",".join(f"{h}:{p}" for h, p in target.sentinels)
            where = f"service {target.service!r} at the sentinels {sentinels}"
            host, port = await clients.sentinel.discover_master(target.service)
            where = f"{host}:{port} (master of {target.service!r})"
        else:
            where = _where(clients.data)
        await clients.data.ping()
    except BaseException as exc:
        await clients.aclose()
        raise _refusal(exc, url, where) from None
    return Server(kind, clients, where, target)


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}"


#: What a cluster client's "cannot be connected" says when the node refused the credentials.
_AUTH_REFUSALS = ("invalid username-password", "NOAUTH", "authenticated", "WRONGPASS")


def _refusal(exc: BaseException, url: str, where: str) -> BaseException:
    """*exc*, raised while connecting, as the `CliError` to report (anything
    else is returned as it is)."""
    text = str(exc) or type(exc).__name__
    cluster_auth = isinstance(exc, RedisClusterException) and any(
        refusal in text for refusal in _AUTH_REFUSALS
    )
    if isinstance(exc, AuthenticationError) or cluster_auth:
        if urlsplit(url).password is None:
            reason = "the server needs a password and the URL gives none"
        elif "without any password configured" in text:
            reason = "the URL gives a password but the server has none configured"
        else:
            reason = "wrong user name or password"
        said = text.rpartition("reachable node: ")[2]
        return CliError(
            f"authentication failed at {where}: {reason} (server: {said})", EXIT_UNREACHABLE
        )
    if isinstance(exc, MasterNotFoundError):
        # redis-py appends the repr of each sentinel client it could not reach
        if "Error" in text.partition(" : ")[2]:
            why = "no sentinel answered, or none of those that did knows the service"
        else:
            why = "the sentinels know no master of that name"
        return CliError(f"no master for {where}: {why}", EXIT_UNREACHABLE)
    if isinstance(exc, ResponseError):  # e.g. an old server without ACL users
        return CliError(f"{where} refused the connection: {text}", EXIT_UNREACHABLE)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | RedisClusterException):
        return CliError(f"cannot connect to {where} ({redact(url)}): {text}", EXIT_UNREACHABLE)
    return exc


def glob_escape(text: str) -> str:
    """*text* as a literal in a SCAN MATCH pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def scan(server: Server, pattern: str, count: int = 1000) -> AsyncIterator[list[Any]]:
    """The names matching the SCAN *pattern*, a batch at a time, on every master
    of a cluster (entries spread over every slot), else on the one server."""
    client = server.client
    for node in server.primaries():
        cursor: int = 0
        while True:
            if node is None:
                cursor, names = await client.scan(cursor, match=pattern, count=count)
            else:
                cursors, names = await client.scan(
                    cursor, match=pattern, count=count, target_nodes=node
                )
                cursor = cursors[node.name]
            yield names
            if cursor == 0:
                break


async def count_keys(
    server: Server,
    pattern: str,
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """How many keys match the SCAN *pattern* on every master (in batches;
    *progress* gets the running count)."""
    count = 0
    async for names in scan(server, pattern):
        count += len(names)
        progress(count)
    return count


async def heartbeats(server: Server, namespace: str) -> list[dict[str, Any]]:
    """Every live instance's last report (a JSON of its `get_stats()` plus host, pid
    and reported_at), sorted by host, pid and instance id.

    The heartbeat keys share one slot of their own (not the control slot, which
    they would make slower to move), so one MGET reads them, on a cluster too
    (through the slot's master). They are looked for on every master all the
    same: during a slot migration some may still be on the old owner.
    """
    prefix = Layout(namespace).heartbeat_prefix
    names = [name async for batch in scan(server, glob_escape(prefix) + "*") for name in batch]
    names = sorted(set(names))
    values = await server.client.mget(names) if names else []
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


async def namespace_known(server: Server, namespace: str) -> bool:
    """Has any instance ever used *namespace* on this server? (Its change counter,
    its generation's epoch or its tag versions exist, or an instance reports.)
    The three share the control slot: one EXISTS, on a cluster too."""
    layout = Layout(namespace)
    if await server.client.exists(layout.seq, layout.epoch, layout.tags):
        return True
    return bool(await heartbeats(server, namespace))


async def namespaces_in_use(server: Server, budget: float = 2.0) -> list[str]:
    """The namespaces this deployment has change counters for (SCAN of every
    master, at most *budget* s).

    The pattern is derived from `Layout`, with a marker standing for the namespace.
    """
    marker = "NAMESPACEMARKER"
    before, after = Layout(marker).seq.split(marker)
    pattern = glob_escape(before) + "*" + glob_escape(after)
    found: set[str] = set()
    deadline = time.monotonic() + budget
    async for names in scan(server, pattern):
        for name in names:
            text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            if text.startswith(before) and text.endswith(after):
                found.add(text[len(before) : len(text) - len(after)])
        if time.monotonic() > deadline:
            break
    return sorted(found)


async def require_namespace(server: Server, namespace: str, force: bool) -> None:
    """Refuse a namespace nothing ever used (a misspelling must not be a silent no-op)."""
    if force or await namespace_known(server, namespace):
        return
    others = await namespaces_in_use(server)
    seen = f"namespaces in use there: {', '.join(others)}" if others else "none is in use there"
    raise CliError(
        f"namespace {namespace!r} has never been used on {server.where} "
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


async def checked_client(target: Target, force: bool | None) -> Server:
    """`connect`, then the namespace check (skipped when *force* is None: read-only use)."""
    check_namespace(target.namespace)
    server = await connect(target.url, target.timeout)
    if force is not None:
        try:
            await require_namespace(server, target.namespace, force)
        except BaseException:
            await server.aclose()
            raise
    return server


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
