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

from ._ops import Server, count_keys, heartbeats, namespace_known

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


async def _topology(server: Server, info: dict[str, Any]) -> Check:
    if server.kind == "cluster":
        return await _cluster_topology(server)
    # Valkey says server_mode, Redis redis_mode
    mode = _text(info.get("redis_mode", info.get("server_mode", "standalone")))
    client = server.client
    if mode == "sentinel":
        try:
            masters = sorted(_text(name) for name in await client.sentinel_masters())
        except RedisError:
            masters = []
        named = f" (monitoring {', '.join(map(repr, masters))})" if masters else ""
        service = masters[0] if masters else "<service>"
        return Check(
            "topology",
            "fail",
            f"this is a Sentinel{named}, not a data node: use "
            f"redis+sentinel://{server.where}/{service} (or the master's redis:// URL)",
        )
    replication = await client.info("replication")
    role = _text(replication.get("role", "master"))
    if role in ("slave", "replica"):
        master = f"{_text(replication.get('master_host'))}:{_text(replication.get('master_port'))}"
        said = f"a read-only replica of {master}"
        if server.kind == "sentinel":
            service = server.target.service
            said = f"the master the sentinels name for {service!r}, {server.where}, is {said}"
        return Check(
            "topology",
            "fail",
            f"{said}: the cache's writes and scripts fail here; point --url at the master",
        )
    replicas = int(replication.get("connected_slaves", 0))
    if server.kind == "sentinel":
        return await _sentinel_topology(server, replicas)
    detail = "standalone" + (f" primary with {replicas} replica(s)" if replicas else "")
    return Check("topology", "ok", detail)


async def _cluster_topology(server: Server) -> Check:
    """Masters and replicas as the cluster itself lists them (CLUSTER NODES: the
    slot map redis-py reads leaves out replicas not yet synced), and every
    master's own view of the cluster's state."""
    cluster = server.client
    masters = server.primaries()
    nodes = _text(await cluster.execute_command("CLUSTER", "NODES", target_nodes=masters[0]))
    replicas, failing = 0, []
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        flags = fields[2].split(",")
        replicas += "slave" in flags or "replica" in flags
        if "fail" in flags or "fail?" in flags:
            failing.append(fields[1].split("@")[0])
    states: dict[str, str] = {}
    for node in masters:
        reply = await cluster.execute_command("CLUSTER", "INFO", target_nodes=node)
        info = dict(line.split(":", 1) for line in _text(reply).splitlines() if ":" in line)
        states[node.name] = info.get("cluster_state", "?").strip()
    detail = f"cluster, {len(masters)} master(s) and {replicas} replica(s)"
    bad = {name: state for name, state in states.items() if state != "ok"}
    if bad:
        said = ", ".join(f"{name} says {state}" for name, state in sorted(bad.items()))
        return Check("topology", "fail", f"{detail}, state not ok: {said}")
    if failing:
        return Check(
            "topology", "warn", f"{detail}, state ok; flagged failing: {', '.join(failing)}"
        )
    return Check("topology", "ok", f"{detail}, state ok")


async def _sentinel_topology(server: Server, replicas: int) -> Check:
    """The master the sentinels name, its replicas, and how many sentinels answer."""
    target = server.target
    assert server.clients.sentinel is not None
    answering, flags = 0, ""
    for sentinel in server.clients.sentinel.sentinels:
        try:
            state = await sentinel.sentinel_master(target.service)
        except RedisError:  # OSError is a RedisError here: redis-py wraps it
            continue
        answering += 1
        if isinstance(state, dict):
            flags = flags or _text(state.get("flags", ""))
    detail = (
        f"sentinel, service {target.service!r}: master {server.where.split(' ')[0]} with "
        f"{replicas} replica(s); {answering}/{len(target.sentinels)} sentinel(s) answer"
    )
    if "down" in flags:
        return Check("topology", "fail", f"{detail}; the sentinels flag the master {flags}")
    if answering < len(target.sentinels):
        return Check("topology", "warn", f"{detail}: a failover needs a quorum of them")
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


async def _latency(nodes: list[tuple[str, aioredis.Redis]], pings: int) -> Check:
    """PING round trips; on a cluster to every master, judged by the slowest."""
    times: dict[str, list[float]] = {}
    for where, client in nodes:
        times[where] = []
        for _ in range(pings):
            start = time.perf_counter()
            await client.ping()
            times[where].append((time.perf_counter() - start) * 1000)
    slowest = max(times, key=lambda where: statistics.median(times[where]))
    median, worst = statistics.median(times[slowest]), max(times[slowest])
    detail = f"median {median:.2f} ms, max {worst:.2f} ms over {pings} PINGs"
    if len(nodes) > 1:
        detail = f"slowest of {len(nodes)} masters, {slowest}: {detail}"
    if median >= LATENCY_FAIL_MS:
        return Check(
            "latency", "fail", f"{detail}: above {LATENCY_FAIL_MS:.0f} ms, raise redis_timeout"
        )
    if median >= LATENCY_WARN_MS:
        return Check("latency", "warn", f"{detail}: slow for a cache (check redis_timeout)")
    return Check("latency", "ok", detail)


async def _pubsub(server: Server, layout: Layout, seconds: float) -> Check:
    """PUBLISH on a probe channel next to the namespace's, received on a subscribed
    connection. (The namespace's own channel would carry a message every instance
    would have to reject as garbage.) On a cluster the cache publishes with
    SPUBLISH at the master of the channel's slot; the probe channel has the same
    hash tag, so the same slot: SSUBSCRIBE and SPUBLISH there."""
    channel = f"{layout.channel}:doctor:{secrets.token_hex(4)}"
    sharded = server.kind == "cluster"
    if sharded:
        node = server.client.get_node_from_key(layout.channel)
        client = server.node_client(node, seconds)
        where = f" at {node.name}, the master of the channel's slot"
    else:
        client, where = server.client, ""
    publish = "SPUBLISH" if sharded else "PUBLISH"
    pubsub = client.pubsub()
    try:
        if sharded:
            await pubsub.ssubscribe(channel)
        else:
            await pubsub.subscribe(channel)
        # The confirmation of the subscription comes first.
        async with asyncio.timeout(PUBSUB_TIMEOUT):
            while await pubsub.get_message(timeout=PUBSUB_TIMEOUT) is None:
                pass
        times = []
        for _ in range(PUBSUB_ROUNDS):
            start = time.perf_counter()
            await _execute(client)(publish, channel, b"ping")
            async with asyncio.timeout(PUBSUB_TIMEOUT):
                while True:
                    message = await pubsub.get_message(timeout=PUBSUB_TIMEOUT)
                    if message is not None and message.get("type") in ("message", "smessage"):
                        break
            times.append((time.perf_counter() - start) * 1000)
        took = f"median {statistics.median(times):.2f} ms, max {max(times):.2f} ms"
        return Check(
            "pub/sub",
            "ok",
            f"{publish.lower()} → receive{where}: {took} over {PUBSUB_ROUNDS} messages",
        )
    except TimeoutError:
        return Check(
            "pub/sub",
            "fail",
            f"a message sent by {publish}{where} did not arrive within {PUBSUB_TIMEOUT:.0f} s",
        )
    except RedisError as exc:
        return Check("pub/sub", "fail", f"{exc}{where} (invalidations cannot reach the instances)")
    finally:
        close: Callable[[], Awaitable[None]] = pubsub.aclose  # unannotated in redis-py
        await close()
        if sharded:
            await client.aclose()


#: The commands twotier runs, directly or inside its Lua scripts, with arguments
#: shaped like the real ones (so key and channel patterns of an ACL apply).
#: On a cluster the channel is a shard channel: SPUBLISH and SSUBSCRIBE.
def _needed(layout: Layout, sharded: bool = False) -> list[tuple[str, ...]]:
    entry = layout.entry("doctor-probe")
    publish, subscribe = ("SPUBLISH", "SSUBSCRIBE") if sharded else ("PUBLISH", "SUBSCRIBE")
    sha = hashlib.sha1(b"twotier doctor", usedforsecurity=False).hexdigest()
    return [
        ("EVALSHA", sha, "2", entry, layout.lease("doctor-probe")),
        ("EVALSHA", sha, "4", layout.tags, layout.seq, layout.log, layout.bumped),
        ("SCRIPT", "LOAD", "return 1"),
        (publish, layout.channel, "x"),
        (subscribe, layout.channel),
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
    queued), SUBSCRIBE is judged by the pub/sub check. None if MULTI is refused.

    On a cluster node a key of another node's slot is answered MOVED: Redis
    checks the ACL before it redirects, so that means allowed."""
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
            if command[0] in ("SUBSCRIBE", "SSUBSCRIBE", "EVALSHA"):
                continue
            await connection.send_command(*command)
            try:
                await connection.read_response()
            except ResponseError as exc:
                if not str(exc).startswith(("MOVED", "ASK", "CROSSSLOT")):
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


async def _acl(client: aioredis.Redis, layout: Layout, pubsub: Check, sharded: bool) -> Check:
    try:
        user = _text(await _execute(client)("ACL", "WHOAMI"))
    except ResponseError:
        user = client.connection_pool.connection_kwargs.get("username") or "default"
    needed = _needed(layout, sharded)
    names = ", ".join(dict.fromkeys(command[0] for command in needed))
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


async def _namespace(server: Server, namespace: str, progress: Callable[[int], None]) -> Check:
    layout = Layout(namespace)
    known = await namespace_known(server, namespace)
    live = len(await heartbeats(server, namespace))
    entries = await count_keys(server, layout.entry_pattern, progress)
    where = f" on {len(server.primaries())} masters" if server.kind == "cluster" else ""
    if not known:
        return Check(
            "namespace",
            "warn",
            f"{namespace!r} has never been used here (no change counter, epoch or live "
            f"instance; {entries} entries{where}): misspelt?",
        )
    seq = await server.client.get(layout.seq)
    detail = f"{namespace!r}: {entries} entries{where}, {live} live instance(s)"
    if seq is not None:
        detail += f", change counter at {_text(seq)}"
    return Check("namespace", "ok", detail)


_RANK: dict[Status, int] = {"ok": 0, "warn": 1, "fail": 2}


def _each_master(name: str, rows: list[tuple[str, Check]]) -> Check:
    """One row for a check made on every master of a cluster: the worst status;
    the same detail said once, with the masters it is about (all of them, or
    those that are not ok)."""
    if len(rows) == 1:
        return rows[0][1]
    worst = max((check.status for _, check in rows), key=_RANK.__getitem__)
    if len({check.detail for _, check in rows}) == 1:
        return Check(name, worst, f"{rows[0][1].detail} (each of {len(rows)} masters)")
    shown = [(where, check) for where, check in rows if check.status != "ok"] or rows
    by_detail: dict[str, list[str]] = {}
    for where, check in shown:
        by_detail.setdefault(check.detail, []).append(where)
    detail = "; ".join(f"{', '.join(wheres)}: {said}" for said, wheres in by_detail.items())
    if len(shown) < len(rows):
        detail += f" ({len(rows) - len(shown)} other master(s) ok)"
    return Check(name, worst, detail)


async def run_doctor(
    server: Server,
    namespace: str,
    *,
    pings: int = 20,
    seconds: float = 2.0,
    on_check: Callable[[Check], None] = lambda check: None,
    on_scan: Callable[[int], None] = lambda count: None,
) -> list[Check]:
    """Every check, in order; *on_check* sees each row as it is made.

    The checks of a server (version, eviction policy, latency, ACL rights) run on
    the one server, the Sentinel's master, or every master of a cluster: each
    holds control keys or entries, and each has its own configuration and users.
    """
    checks: list[Check] = []

    def add(check: Check) -> Check:
        checks.append(check)
        on_check(check)
        return check

    layout = Layout(namespace)
    sharded = server.kind == "cluster"
    if sharded:
        nodes = [(node.name, server.node_client(node, seconds)) for node in server.primaries()]
    else:
        nodes = [(server.where, server.client)]
    try:
        try:
            infos = [
                (where, await client.info("server"), await client.info("memory"))
                for where, client in nodes
            ]
        except ResponseError as exc:
            add(Check("server", "fail", f"INFO refused: {exc} (the cache needs INFO)"))
            return checks
        add(_each_master("server", [(where, _server(info)) for where, info, _ in infos]))
        topology = add(await _topology(server, infos[0][1]))
        if topology.status == "fail" and "Sentinel" in topology.detail:
            return checks  # a Sentinel has no data commands to check
        add(_each_master("maxmemory-policy", [(where, _eviction(m)) for where, _, m in infos]))
        add(await _latency(nodes, pings))
        pubsub = add(await _pubsub(server, layout, seconds))
        add(_each_master("acl", [(w, await _acl(c, layout, pubsub, sharded)) for w, c in nodes]))
        try:
            add(await _namespace(server, namespace, on_scan))
        except ResponseError as exc:
            add(Check("namespace", "fail", f"cannot read the namespace's keys: {exc}"))
        return checks
    finally:
        if sharded:
            for _, client in nodes:
                await client.aclose()
