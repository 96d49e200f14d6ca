"""`twotier doctor`: is this server, and this user on it, fit for twotier?

Each check is a row: ok, warn or fail, and a detail a person can act on. A fail
means the cache will misbehave (wrong answers, refused commands, constant
timeouts); a warn means something worth knowing that does not break it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from twotier._redis import Execute, Layout

from ._ops import count_keys, heartbeats, namespace_known

Status = Literal["ok", "warn", "fail"]

#: Median PING round trip from which a warning / a failure is reported. The
#: cache's default `redis_timeout` is 100 ms per call: at 50 ms a hiccup trips it.
LATENCY_WARN_MS = 10.0
LATENCY_FAIL_MS = 50.0
PUBSUB_TIMEOUT = 2.0
PUBSUB_ROUNDS = 5


@dataclass
class Check:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _execute(client: aioredis.Redis) -> Execute:
    """redis-py's `execute_command`, which it leaves unannotated."""
    execute: Execute = client.execute_command
    return execute


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _server(info: dict[str, Any]) -> Check:
    redis_version = _text(info.get("redis_version", "?"))
    if "valkey_version" in info:
        name = f"Valkey {_text(info['valkey_version'])} (Redis {redis_version} compatible)"
    else:
        name = f"Redis {redis_version}"
    if _version(redis_version) < (7,):
        return Check(
            "server", "fail", f"{name}: twotier's Lua scripts need Redis 7 or later (script flags)"
        )
    return Check("server", "ok", name)


async def _topology(client: aioredis.Redis, info: dict[str, Any]) -> Check:
    mode = _text(info.get("redis_mode", "standalone"))
    if mode == "sentinel":
        return Check(
            "topology",
            "fail",
            "this is a Sentinel, not a data node: point --url at the master it names",
        )
    if mode == "cluster":
        state = await _execute(client)("CLUSTER", "INFO")
        fields = dict(
            line.split(":", 1) for line in _text(state).splitlines() if ":" in line
        )
        size, cluster_state = fields.get("cluster_size", "?"), fields.get("cluster_state", "?")
        detail = f"cluster, {size} shard(s), state {cluster_state}"
        return Check("topology", "ok" if cluster_state == "ok" else "fail", detail)
    replication = await client.info("replication")
    role = _text(replication.get("role", "master"))
    if role in ("slave", "replica"):
        master = f"{_text(replication.get('master_host'))}:{_text(replication.get('master_port'))}"
        return Check(
            "topology",
            "fail",
            f"a read-only replica of {master}: the cache's writes and scripts fail here; "
            "point --url at the master",
        )
    replicas = int(replication.get("connected_slaves", 0))
    detail = "standalone" + (f" primary with {replicas} replica(s)" if replicas else "")
    return Check("topology", "ok", detail)


def _eviction(memory: dict[str, Any]) -> Check:
    policy = _text(memory.get("maxmemory_policy", "?"))
    limit = int(memory.get("maxmemory", 0))
    if policy.startswith("allkeys-"):
        return Check(
            "maxmemory-policy",
            "fail",
            f"{policy} can evict the namespace's control keys (tag versions, change counter, "
            "change log), which have no TTL: invalidated entries could become valid again "
            "and every instance would resync. Use volatile-lru (only keys with a TTL, i.e. "
            "entries and leases, are evicted) or noeviction (writes are refused at "
            "maxmemory, which twotier handles: invalidations still run)",
        )
    if limit == 0:
        return Check(
            "maxmemory-policy",
            "warn",
            f"{policy}, but no maxmemory: Redis grows until the machine runs out; "
            "set maxmemory with volatile-lru",
        )
    return Check("maxmemory-policy", "ok", f"{policy}, maxmemory {limit} bytes")


async def _latency(client: aioredis.Redis, pings: int) -> Check:
    times = []
    for _ in range(pings):
        start = time.perf_counter()
        await client.ping()
        times.append((time.perf_counter() - start) * 1000)
    median, worst = statistics.median(times), max(times)
    detail = f"median {median:.2f} ms, max {worst:.2f} ms over {pings} PINGs"
    if median >= LATENCY_FAIL_MS:
        return Check(
            "latency", "fail", f"{detail}: above {LATENCY_FAIL_MS:.0f} ms, raise redis_timeout"
        )
    if median >= LATENCY_WARN_MS:
        return Check("latency", "warn", f"{detail}: slow for a cache (check redis_timeout)")
    return Check("latency", "ok", detail)


async def _pubsub(client: aioredis.Redis, layout: Layout) -> Check:
    """PUBLISH on a probe channel next to the namespace's, received on a subscribed
    connection. (The namespace's own channel would carry a message every instance
    would have to reject as garbage.)"""
    channel = f"{layout.channel}:doctor:{secrets.token_hex(4)}"
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        # The confirmation of the subscription comes first.
        async with asyncio.timeout(PUBSUB_TIMEOUT):
            while await pubsub.get_message(timeout=PUBSUB_TIMEOUT) is None:
                pass
        times = []
        for _ in range(PUBSUB_ROUNDS):
            start = time.perf_counter()
            await client.publish(channel, b"ping")
            async with asyncio.timeout(PUBSUB_TIMEOUT):
                while True:
                    message = await pubsub.get_message(timeout=PUBSUB_TIMEOUT)
                    if message is not None and message.get("type") == "message":
                        break
            times.append((time.perf_counter() - start) * 1000)
        took = f"median {statistics.median(times):.2f} ms, max {max(times):.2f} ms"
        return Check("pub/sub", "ok", f"publish → receive: {took} over {PUBSUB_ROUNDS} messages")
    except TimeoutError:
        return Check(
            "pub/sub", "fail", f"a published message did not arrive within {PUBSUB_TIMEOUT:.0f} s"
        )
    except RedisError as exc:
        return Check("pub/sub", "fail", f"{exc} (invalidations cannot reach the instances)")
    finally:
        close: Callable[[], Awaitable[None]] = pubsub.aclose  # unannotated in redis-py
        await close()


#: The commands twotier runs, directly or inside its Lua scripts, with arguments
#: shaped like the real ones (so key and channel patterns of an ACL apply).
def _needed(layout: Layout) -> list[tuple[str, ...]]:
    entry = layout.entry("doctor-probe")
    sha = hashlib.sha1(b"twotier doctor", usedforsecurity=False).hexdigest()
    return [
        ("EVALSHA", sha, "2", entry, layout.lease("doctor-probe")),
        ("EVALSHA", sha, "4", layout.tags, layout.seq, layout.log, layout.bumped),
        ("SCRIPT", "LOAD", "return 1"),
        ("PUBLISH", layout.channel, "x"),
        ("SUBSCRIBE", layout.channel),
        ("GET", layout.seq),
        ("SET", entry, "x"),
        ("XADD", layout.log, "*", "k", "v"),
        ("XRANGE", layout.log, "-", "+"),
        ("HSET", layout.tags, "doctor-probe", "0"),
        ("INFO", "server"),
    ]


async def _acl_dryrun(
    client: aioredis.Redis, user: str, needed: list[tuple[str, ...]]
) -> dict[str, str] | None:
    """Denied command → reason, by `ACL DRYRUN` (Redis 7); None where it is unavailable."""
    denied: dict[str, str] = {}
    for command in needed:
        try:
            reply = await _execute(client)("ACL", "DRYRUN", user, *command)
        except ResponseError:  # before Redis 7, or this user may not run ACL
            return None
        if _text(reply) != "OK":
            denied[command[0]] = _text(reply)
    return denied


async def _acl_probe(
    client: aioredis.Redis, needed: list[tuple[str, ...]], pubsub: Check
) -> dict[str, str] | None:
    """Denied command → reason, found by trying: reads run, writes are only queued
    in a MULTI that is discarded (a command is checked against the ACL when it is
    queued), SUBSCRIBE is judged by the pub/sub check. None if MULTI is refused."""
    denied: dict[str, str] = {}
    get: Callable[[], Awaitable[Any]] = client.connection_pool.get_connection  # unannotated
    connection = await get()
    try:
        await connection.send_command("MULTI")
        try:
            await connection.read_response()
        except ResponseError:
            return None
        for command in needed:
            if command[0] in ("SUBSCRIBE", "EVALSHA"):
                continue
            await connection.send_command(*command)
            try:
                await connection.read_response()
            except ResponseError as exc:
                denied[command[0]] = str(exc)
        await connection.send_command("DISCARD")
        await connection.read_response()
    finally:
        await client.connection_pool.release(connection)
    try:  # an unknown script: NOSCRIPT means the command itself is allowed
        await _execute(client)("EVALSHA", "0" * 40, "0")
    except NoScriptError:
        pass
    except ResponseError as exc:
        denied["EVALSHA"] = str(exc)
    if pubsub.status == "fail" and "SUBSCRIBE" in pubsub.detail.upper():
        denied["SUBSCRIBE"] = pubsub.detail
    return denied


async def _acl(client: aioredis.Redis, layout: Layout, pubsub: Check) -> Check:
    try:
        user = _text(await _execute(client)("ACL", "WHOAMI"))
    except ResponseError:
        user = client.connection_pool.connection_kwargs.get("username") or "default"
    needed = _needed(layout)
    names = ", ".join(command[0] for command in needed)
    denied = await _acl_dryrun(client, user, needed)
    how = "ACL DRYRUN"
    if denied is None:
        denied = await _acl_probe(client, needed, pubsub)
        how = "trying them (no ACL DRYRUN for this user or server)"
    if denied is None:
        return Check("acl", "warn", f"user {user!r}: rights not checked (no ACL DRYRUN, no MULTI)")
    if denied:
        reasons = "; ".join(f"{name}: {why}" for name, why in denied.items())
        return Check(
            "acl",
            "fail",
            f"user {user!r} may not run {', '.join(denied)} ({reasons}; checked by {how})",
        )
    return Check("acl", "ok", f"user {user!r} may run {names} (by {how})")


async def _namespace(
    client: aioredis.Redis, namespace: str, progress: Callable[[int], None]
) -> Check:
    layout = Layout(namespace)
    known = await namespace_known(client, namespace)
    live = len(await heartbeats(client, namespace))
    entries = await count_keys(client, layout.entry_pattern, progress)
    if not known:
        return Check(
            "namespace",
            "warn",
            f"{namespace!r} has never been used here (no change counter, epoch or live "
            f"instance; {entries} entries): misspelt?",
        )
    seq = await client.get(layout.seq)
    detail = f"{namespace!r}: {entries} entries, {live} live instance(s)"
    if seq is not None:
        detail += f", change counter at {_text(seq)}"
    return Check("namespace", "ok", detail)


async def run_doctor(
    client: aioredis.Redis,
    namespace: str,
    *,
    pings: int = 20,
    on_check: Callable[[Check], None] = lambda check: None,
    on_scan: Callable[[int], None] = lambda count: None,
) -> list[Check]:
    """Every check, in order; *on_check* sees each row as it is made."""
    checks: list[Check] = []

    def add(check: Check) -> Check:
        checks.append(check)
        on_check(check)
        return check

    layout = Layout(namespace)
    try:
        server_info = await client.info("server")
        memory = await client.info("memory")
    except ResponseError as exc:
        add(Check("server", "fail", f"INFO refused: {exc} (the cache needs INFO)"))
        return checks
    add(_server(server_info))
    topology = add(await _topology(client, server_info))
    if topology.status == "fail" and "Sentinel" in topology.detail:
        return checks  # a Sentinel has no data commands to check
    add(_eviction(memory))
    add(await _latency(client, pings))
    pubsub = add(await _pubsub(client, layout))
    add(await _acl(client, layout, pubsub))
    try:
        add(await _namespace(client, namespace, on_scan))
    except ResponseError as exc:
        add(Check("namespace", "fail", f"cannot read the namespace's keys: {exc}"))
    return checks
