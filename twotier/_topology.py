"""Which Redis deployment a URL names, and the redis-py clients that reach it.

    redis://[user:pw@]host:port[/db][?protocol=2|3&…]   one server, or a node of a
    rediss://…                                          cluster (detected at start)
    redis+cluster://…, rediss+cluster://…               a cluster, said outright
    redis+sentinel://[user:pw@]h:p,h:p,…/service[/db][?sentinel_password=…&sentinel_username=…]
    rediss+sentinel://…                                 the same over TLS (sentinels and master)

The user and password of a Sentinel URL are the master's; the sentinels' own
credentials, if any, are the `sentinel_username` / `sentinel_password` query
arguments. Any other query argument is redis-py's (`ssl_ca_certs`, …).

A cluster is told from a single server by asking the node (`INFO cluster`)
when the cache starts. When nothing answers then, the cache starts degraded as
a single-server client; if the server turns out to be a cluster node when it
comes back, every connection to it fails with a message saying so (see
`RedisTier.prepare`) instead of the cache running on it half-working. Say
`redis+cluster://` to start a cluster client without asking.

The protocol is RESP3 unless the URL says `protocol=2` (redis-py 8 defaults to
3 too; saying it keeps a future default change from changing replies here).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from ._channel import Subscription
from ._exceptions import ConfigurationError

Kind = Literal["standalone", "cluster", "sentinel"]
Prepare = Callable[[Any], Awaitable[None]]
Address = tuple[str, int]

_SCHEMES: dict[str, tuple[Kind | None, bool]] = {  # scheme → (kind, TLS); None: detect
    "redis": (None, False),
    "rediss": (None, True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_SENTINEL_ONLY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class Target:
    """A parsed cache URL."""

    kind: Kind | None  # None: a redis:// URL not yet asked whether it is a cluster node
    url: str  # redis(s)://…: the server or node (for Sentinel: the master's credentials)
    tls: bool
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    def described(self) -> str:
        """The URL without its password, for logs and errors."""
        return _without_password(self.url if self.kind != "sentinel" else self._sentinel_url())

    def _sentinel_url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}"


def parse(url: str) -> Target:
    """The target a URL names; a `ConfigurationError` that says why for anything else."""
    if not isinstance(url, str):
        raise ConfigurationError(f"redis_url must be a str, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        known = ", ".join(f"{scheme}://" for scheme in _SCHEMES)
        raise ConfigurationError(
            f"unsupported redis_url scheme {parts.scheme!r} in {_without_password(url)!r}: "
            f"use one of {known}"
        )
    kind, tls = _SCHEMES[parts.scheme]
    base = "rediss" if tls else "redis"
    if kind != "sentinel":
        if not parts.hostname:
            raise ConfigurationError(f"redis_url {_without_password(url)!r} names no host")
        plain = urlunsplit((base, parts.netloc, parts.path, parts.query, ""))
        if kind == "cluster" and parts.path.strip("/") not in ("", "0"):
            raise ConfigurationError("a Redis Cluster has database 0 only: drop the /db part")
        return Target(kind, plain, tls)
    return _parse_sentinel(url, parts, base, tls)


def _parse_sentinel(url: str, parts: Any, base: str, tls: bool) -> Target:
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for host in filter(None, hosts.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigurationError(
                f"sentinel address {host!r} in {_without_password(url)!r} must be host:port"
            )
        sentinels.append((name.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise ConfigurationError(
            f"a Sentinel URL is redis+sentinel://host:port,host:port/service[/db], "
            f"got {_without_password(url)!r}"
        )
    query = parse_qsl(parts.query)
    sentinel_options = {k.removeprefix("sentinel_"): v for k, v in query if k in _SENTINEL_ONLY}
    rest = urlencode([(k, v) for k, v in query if k not in _SENTINEL_ONLY])
    db = f"/{path[1]}" if len(path) == 2 else ""
    netloc = f"{userinfo}@master" if userinfo else "master"
    master = urlunsplit((base, netloc, db, rest, ""))
    return Target("sentinel", master, tls, tuple(sentinels), path[0], sentinel_options)


async def detect(target: Target, connect_timeout: float) -> Target:
    """Ask a `redis://` server whether it is a cluster node; unreachable: a single server."""
    if target.kind is not None:
        return target
    probe = aioredis.Redis.from_url(
        target.url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info = await probe.info("cluster")
    except (redis_errors.RedisError, OSError):
        return Target("standalone", target.url, target.tls)
    finally:
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await probe.aclose()
    kind: Kind = "cluster" if int(info.get("cluster_enabled", 0)) else "standalone"
    return Target(kind, target.url, target.tls)


class Clients:
    """The clients of one link: data commands, the read pipe's connections, and
    where the invalidation channel is subscribed."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        prepare: Prepare,
        listen_on_replicas: bool = False,
    ) -> None:
        self.target = target
        self.kind: Kind = target.kind or "standalone"
        no_retry = Retry(NoBackoff(), 0)  # the guard decides about retries, not redis-py
        # Timeouts are redis-py's own, per step: `timeout` bounds every reply,
        # `connect_timeout` every connect (its own budget: a cold burst or a far
        # server must not spend the reply budget on TCP and AUTH).
        timeouts = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
        protocol = _connection_options(target.url)["protocol"]
        self.sentinel: Sentinel | None = None
        self.data: Any
        self.make_connection: Callable[[], Any] | None = None
        if self.kind == "cluster":
            # One retry: after a failover or a slot move redis-py refreshes the
            # slot map and tries the new owner once.
            self.data = RedisCluster.from_url(
                target.url,
                max_connections=max_connections + 2,
                retry=Retry(NoBackoff(), 1),
                protocol=protocol,
                **timeouts,
            )
            pool: aioredis.ConnectionPool | None = None
        elif self.kind == "sentinel":
            self.sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
                list(target.sentinels),
                sentinel_kwargs={
                    **timeouts,
                    **target.sentinel_options,
                    "retry": no_retry,
                    **({"ssl": True} if target.tls else {}),
                },
            )
            # Not blocking (redis-py has no blocking Sentinel pool): the tier's
            # own slots bound its callers to `max_connections`.
            pool = SentinelConnectionPool(  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
                target.service,
                self.sentinel,
                **_without_address(target.url),
                **timeouts,
                max_connections=max_connections + 4,
                retry=no_retry,
                redis_connect_func=prepare,
            )
        else:
            # Bounded and blocking: past `max_connections`, callers wait (up to
            # the connect budget) for a free connection instead of opening
            # more; two more serve the health probe and the warm-up.
            pool = aioredis.BlockingConnectionPool.from_url(
                target.url,
                max_connections=max_connections + 2,
                timeout=connect_timeout,
                retry=no_retry,
                redis_connect_func=prepare,
                protocol=protocol,
                **timeouts,
            )
        if pool is not None:
            self.data = aioredis.Redis.from_pool(pool)
            self.make_connection = pool.make_connection
        self.bus = Bus(self, connect_timeout, replicas=listen_on_replicas)

    async def aclose(self) -> None:
        await self.bus.aclose()
        await self.data.aclose()
        if self.sentinel is not None:
            for sentinel in self.sentinel.sentinels:
                await sentinel.aclose()


class Bus:
    """Where the namespace's channel is subscribed: the server itself, the
    Sentinel master, or, in a cluster, the master of the channel's slot (a
    shard channel: SSUBSCRIBE, messages sent by SPUBLISH).

    With *replicas* (`listen_on_replicas`, issue 20, item 5), on Sentinel and
    on a cluster, a replica of that master instead, picked at random so a
    fleet spreads over them: every change still goes to the master, which
    sends it to its few replicas, and each replica to its part of the fleet
    (a replica's subscribers get what its master publishes, in its
    replication stream). A new subscription avoids the node the last one was
    on when another is there, the master last: a replica that failed its
    listener is not taken straight back. RESP3 only, where the listener's
    idle check runs on the subscription itself (over RESP2 the channel stays
    at the master).
    """

    def __init__(self, clients: Clients, connect_timeout: float, *, replicas: bool) -> None:
        self.sharded = clients.kind == "cluster"
        self._clients = clients
        self._connect_timeout = connect_timeout
        protocol = _connection_options(clients.target.url)["protocol"]
        self._replicas = replicas and clients.kind != "standalone" and str(protocol) == "3"
        self._client: aioredis.Redis | None = None
        self._node: Address | None = None  # the client's node; None: redis-py finds it
        self._last: Address | None = None  # the replica of the last subscription
        #: Whether the channel is subscribed on a replica (the listener then
        #: also checks, when idle, that the replica still follows a master).
        self.on_replica = False
        #: Whether the channel is at the master though a replica is wanted:
        #: none was ready, or the one there failed the last subscription (the
        #: listener looks for one again every few intervals).
        self.displaced = False

    async def subscription(self, channel: str, write_timeout: float) -> Subscription:
        """A new subscription to *channel* on the node that carries it now (not
        yet open: `Subscription.open`)."""
        client = await self._client_for(channel)
        connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call,unused-ignore]
        return Subscription(connection, channel, sharded=self.sharded, timeout=write_timeout)

    async def _client_for(self, channel: str) -> aioredis.Redis:
        master, replicas = await self._nodes(channel)
        replica = self._pick(replicas) if self._replicas else None
        self.on_replica, self._last = replica is not None, replica
        self.displaced = self._replicas and replica is None
        if replica is not None or master is not None:
            return await self._node_client(replica or master, readonly=replica is not None)
        if self._client is None or self._node is not None:
            await self.aclose()
            # Its own client: a pub/sub connection must not share the socket
            # timeout of data calls (it waits for messages by design).
            self._client = _follower(self._clients, self._connect_timeout)
        return self._client

    async def replica_ready(self, channel: str) -> bool:
        """Whether a replica could carry the channel now (for a displaced listener)."""
        _, replicas = await self._nodes(channel)
        return bool(replicas)

    async def _nodes(self, channel: str) -> tuple[Address | None, list[Address]]:
        """The master that carries *channel* (None: the Sentinel master, or
        the one server, found by redis-py), and its replicas if wanted."""
        clients = self._clients
        if clients.kind == "cluster":
            # A fresh slot map each time: the last subscription ended because
            # the node died, failed over or gave the slot away. A replica is
            # listed once it has replicated something (a new or resyncing
            # one is left out).
            cluster: RedisCluster = clients.data
            await cluster.nodes_manager.initialize()
            nodes = cluster.nodes_manager.slots_cache.get(cluster.keyslot(channel))
            if not nodes:
                raise redis_errors.ConnectionError(f"no node serves the slot of {channel!r}")
            master, *replicas = [(node.host, int(node.port)) for node in nodes]
            return master, replicas
        if self._replicas and clients.sentinel is not None:
            found = await clients.sentinel.discover_slaves(clients.target.service)
            return None, [(str(host), int(port)) for host, port in found]
        return None, []

    def _pick(self, replicas: list[Address]) -> Address | None:
        """A replica at random, not the last one; None (the master) if only
        the last one is there."""
        fresh = [replica for replica in replicas if replica != self._last]
        return random.choice(fresh) if fresh else None  # noqa: S311  # spread, not secrecy

    async def _node_client(self, node: Address | None, *, readonly: bool) -> aioredis.Redis:
        """A client of one node, kept while the channel stays there."""
        assert node is not None
        if self._client is None or node != self._node:
            await self.aclose()
            clients = self._clients
            options = (
                _without_address(clients.target.url)
                if clients.sentinel is not None
                else _connection_options(clients.target.url)
            )
            options.update(host=node[0], port=node[1])
            if readonly and self.sharded:  # a cluster replica reads only after READONLY
                options["redis_connect_func"] = _read_only
            self._client = aioredis.Redis(
                **options,
                socket_connect_timeout=self._connect_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._node = node
        return self._client

    async def aclose(self) -> None:
        self._node = None
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


async def _read_only(connection: Any) -> None:
    """Connect, then `READONLY`: the cluster replica may then answer the
    listener's counter reads of the slot it replicates."""
    await connection.on_connect()
    await connection.send_command("READONLY")
    reply = await connection.read_response()
    if reply not in (b"OK", "OK"):
        raise redis_errors.ConnectionError(f"READONLY refused: {reply!r}")


def _follower(clients: Clients, connect_timeout: float) -> aioredis.Redis:
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if clients.sentinel is not None:
        master: aioredis.Redis = clients.sentinel.master_for(
            clients.target.service, **_without_address(clients.target.url), **options
        )
        return master
    return aioredis.Redis.from_url(clients.target.url, **options)


def _connection_options(url: str) -> dict[str, Any]:
    options: dict[str, Any] = dict(parse_url(url))
    options.setdefault("protocol", 3)
    return options


def _without_address(url: str) -> dict[str, Any]:
    options = _connection_options(url)
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True
    return options


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class MasterWatch:
    """Follows the sentinels' `+switch-master` announcements for the service,
    and calls *on_moved* at each. One sentinel is watched at a time; when it
    goes away the next one is."""

    def __init__(
        self,
        clients: Clients,
        on_moved: Callable[[], Awaitable[None]],
        interval: float,
        log: Any,
    ) -> None:
        self._target = clients.target
        self._on_moved = on_moved
        self._interval = interval
        self._log = log
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            for host, port in self._target.sentinels:
                with contextlib.suppress(redis_errors.RedisError, OSError, TimeoutError):
                    await self._watch(host, port)
            await asyncio.sleep(self._interval)

    async def _watch(self, host: str, port: int) -> None:
        options: dict[str, Any] = {**self._target.sentinel_options, "ssl": self._target.tls}
        client = aioredis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=self._interval,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe("+switch-master")
            while True:
                message = await pubsub.get_message(timeout=self._interval)
                if message is None or message["type"] != "message":
                    continue
                name, *_ = _text(message["data"]).split()
                if name == self._target.service:
                    self._log.warning("sentinel %s:%s: %s", host, port, _text(message["data"]))
                    await self._on_moved()
        finally:
            await client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
