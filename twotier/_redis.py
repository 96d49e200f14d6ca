"""The Redis tier: key layout, Lua scripts, and the change log.

Key layout for namespace ``ns`` (the format version ``v2`` is part of every
name, so an instance of another format ignores these keys instead of
misreading them):

    ns:v2:{d}:e:<key>     entry: one string (`_envelope.py`)
    ns:v2:{d}:l:<key>     its fill lease (a token, with a short expiry)
    {ns:v2}:tags          hash tag → version ('' = namespace generation,
                          '\x1fhorizon' = the longest an entry can live, ms)
    {ns:v2}:bumped        sorted set tag → time of its last bump (compaction)
    {ns:v2}:seq           the change counter
    {ns:v2}:log           stream of the last changes, id = <seq>-1
    {ns:v2}:epoch         run id of the server the generation was drawn on
    {ns:v2}:met           cluster shard masters found holding every logged change
                          (run id:replication id → ms; `_shards.py`)
    {ns:v2}:met:<run>     the instance repairing that master now (a claim, 30 s)
    {ns:v2:hb}:<id>       instance <id>'s stats (JSON), expiring unless renewed (own slot)
    {ns:v2}:inv           the pub/sub channel

``{d}`` is a digest of the key (CRC-32, hex): an entry and its lease share
its hash slot whatever braces the key holds. The control keys and the channel
share the namespace's own slot, ``{ns:v2}``, so namespaces spread over a
cluster's shards. No script touches two slots (guarantee 8): a `set` is an
entry-slot script, then an announcement on the control slot.

In a cluster the channel is a shard channel: scripts `SPUBLISH` on it and the
listener `SSUBSCRIBE`s at the master of the control slot.

Scripts carry Redis 7 flags (``#!lua flags=…``). Scripts that store values are
refused as a whole under ``maxmemory``. Scripts that only take a short lease,
release one, bump a version or announce run under OOM (``allow-oom``): an
invalidation must never be refused for memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from . import _batch
from ._batch import bulk, command_head
from ._exceptions import BackendError, BackendTimeout, BackendUnavailable
from ._guard import Guard
from ._pipe import NOT_READY, WRONG_TYPE, ReadPipe, get_command
from ._shards import ShardRun, latest_writes
from ._tier import SEP, Claim, Message

FORMAT = "v2"
T = TypeVar("T")


#: Scripts that may run while Redis is at `maxmemory` (see the module docstring).
_ALLOW_OOM = frozenset(
    {"claim", "release", "drop", "erase", "announce", "invalidate", "versions", "server", "compact"}
)
_SCRIPTS = (
    "claim",
    "fill",
    "release",
    "drop",
    "write",
    "erase",
    "announce",
    "invalidate",
    "versions",
    "server",
    "compact",
)
#: Tags or keys per script call: Lua's `unpack` fails past about 8,000 values,
#: and a version update unpacks two per tag (issue 7, item 6).
CHUNK = 1000


def _script_source(name: str, *, sharded: bool) -> str:
    """A script's source: prelude and body, for a cluster (*sharded*: shard
    channels, and every control script meets the server) or not (connections
    meet the server when they open, `RedisTier.prepare`)."""
    lua = resources.files("twotier") / "lua"
    shebang = "#!lua flags=allow-oom" if name in _ALLOW_OOM else "#!lua"
    body = (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
    publish, meet = ("SPUBLISH", "true") if sharded else ("PUBLISH", "false")
    return f"{shebang}\nlocal PUBLISH = '{publish}'\nlocal MEET = {meet}\n{body}"


#: redis-py's `execute_command`, which it leaves unannotated.
Execute = Callable[..., Awaitable[Any]]


#: How long one instance may take to repair what a shard master lost (`_meet_shard`)
#: before another may: the log's read, the deletes and their announcement.
_REPAIR_CLAIM_MS = 30_000

#: A script refused while a slot migrates is tried again for this many Redis
#: timeouts (0.5 s at the default 0.1 s), from a first pause of 5 ms doubling.
MIGRATION_TIMEOUTS = 5
_MIGRATION_BACKOFF = 0.005


class _Script:
    """A Lua script, run by EVALSHA and loaded on the first NOSCRIPT (a new,
    restarted or flushed server). Leaner than redis-py's `Script` object, whose
    per-call bookkeeping showed on the L2 hit path. "SCRIPT LOAD" goes as one
    command name: so a cluster client sends it to every master (it cannot
    route "SCRIPT" with "LOAD" as an argument)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def pack(self, keys: list[str], args: list[Any]) -> bytes:
        """The EVALSHA, packed (`_batch.command`)."""
        return _batch.command("EVALSHA", self.sha, len(keys), *keys, *args)

    async def __call__(self, execute: Execute, keys: list[str], args: list[Any]) -> Any:
        """Through redis-py's client: loads the script on NOSCRIPT, and in a
        cluster follows a moved slot."""
        try:
            return await execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await execute("SCRIPT LOAD", self.source)
            return await execute("EVALSHA", self.sha, len(keys), *keys, *args)


class Unconfirmed(redis_errors.RedisError):
    """Fewer replicas than `confirm_replicas` acknowledged a change (WAIT). A
    Redis error, so that the guard names it (`last_error`, the log) like any
    refusal, without counting it as an outage."""


class Layout:
    """The Redis names of one namespace."""

    def __init__(self, namespace: str) -> None:
        control = f"{{{namespace}:{FORMAT}}}"
        self.tags = f"{control}:tags"
        self.bumped = f"{control}:bumped"
        self.seq = f"{control}:seq"
        self.log = f"{control}:log"
        self.epoch = f"{control}:epoch"
        self.met = f"{control}:met"
        #: `<prefix><instance id>`: each live instance's stats, with a TTL
        #: (`twotier stats` reads them; the key vanishes with the instance).
        #: A slot of their own, not the control slot: one key per instance
        #: there made every move of the control slot longer with the size of
        #: the fleet (issue 21, case 7); one slot still lets one MGET read all.
        self.heartbeat_prefix = f"{{{namespace}:{FORMAT}:hb}}:"
        self.channel = f"{control}:inv"
        #: The keys every control script takes (see lua/prelude.lua).
        self.control = [self.tags, self.seq, self.log, self.bumped, self.epoch]
        self._data = f"{namespace}:{FORMAT}:"
        #: SCAN patterns of the namespace's entries and leases.
        self.entry_pattern = f"{self._data}{{*}}:e:*"
        self.lease_pattern = f"{self._data}{{*}}:l:*"

    def entry(self, key: str) -> str:
        return f"{self._data}{{{zlib.crc32(key.encode()):08x}}}:e:{key}"

    def lease(self, key: str) -> str:
        return f"{self._data}{{{zlib.crc32(key.encode()):08x}}}:l:{key}"

    def slot_names(self, key: str) -> tuple[str, str]:
        """(entry, lease) of *key*: one digest for both."""
        base = f"{self._data}{{{zlib.crc32(key.encode()):08x}}}:"
        return f"{base}e:{key}", f"{base}l:{key}"


class RedisTier:
    """`RemoteTier` on Redis. Every call goes through the guard."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        guard: Guard,
        layout: Layout,
        origin: str,
        *,
        lease_ttl: float,
        log_maxlen: int,
        timeout: float = 0.1,
        connect_timeout: float = 0.5,
        max_connections: int = 50,
        compaction_margin: float = 60.0,
        orphaned: Callable[[str, str], None] = lambda key, lease: None,
        make_connection: Callable[[], Any] | None = None,
        sharded: bool = False,
        confirm_replicas: int = 0,
    ) -> None:
        self._client = client
        # (isinstance with RedisCluster is slow: its bases include ABCs)
        self._cluster = isinstance(client, RedisCluster)
        self._execute: Execute = client.execute_command
        self._guard = guard
        self._slots = asyncio.Semaphore(max_connections)
        self.layout = layout
        self._origin = origin
        self._lease_ms = max(1, int(lease_ttl * 1000))
        self._log_maxlen = log_maxlen
        self._compaction_margin_ms = _ms(compaction_margin)
        # Called with (key, token) for a lease this client may hold without knowing:
        # its claim timed out or was cancelled after Redis may have run it.
        self._orphaned = orphaned
        self._sharded = sharded
        self._publish = "SPUBLISH" if sharded else "PUBLISH"
        self._scripts = {name: _Script(_script_source(name, sharded=sharded)) for name in _SCRIPTS}
        # Coalesced reads: one pipe on its own connection to the server, or in
        # a cluster one per master (made on first use, `_node_pipe`).
        self._timeout, self._connect_timeout = timeout, connect_timeout
        #: How long a script waits out a slot migration or a cluster down for a
        #: moment (`_lean`) before its change is queued instead.
        self.migration_budget = MIGRATION_TIMEOUTS * timeout
        self._node_pipes: dict[str, ReadPipe] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._reads = (
            ReadPipe(
                make_connection, self._queued_get, timeout=timeout, connect_timeout=connect_timeout
            )
            if make_connection is not None
            else None
        )
        # Script calls (changes, claims, fills) and the few plain commands of
        # an idle instance go on the read pipe's connection whenever it is
        # free (`ReadPipe.call`), else on one of the pool: an idle instance
        # holds that one connection and its subscription (issue 20, item 3),
        # and a change's first byte still leaves without the pool's get and
        # release (7 µs). Pool connections are closed again when idle (`trim`).
        # WAIT for this many replicas after each change (0: do not wait).
        self._confirm_replicas = confirm_replicas
        self._confirm_ms = max(1, int(timeout * 1000))
        #: Entries read (GETs, whether coalesced or through the pool): a stat.
        self.reads = 0
        # This instance's own invalidations and clears, as Redis confirms them:
        # the version mirror takes them at once (read-your-writes), whether the
        # change was sent by its caller or later from the outbox.
        self.on_bumped: Callable[[list[tuple[str, str]]], None] = lambda pairs: None
        self.on_cleared: Callable[[str], None] = lambda generation: None
        # Cluster shard masters (run id:replication id) this instance found
        # holding every logged entry change, or repaired (`_meet_shard`).
        self._met: set[str] = set()
        #: Told of each repair: the node, and how many keys it may have lost.
        self.on_shard_repair: Callable[[str, int], None] = lambda node, keys: None

    async def prepare(self, connection: Any) -> None:
        """Run on every new connection before its first command (redis-py's
        ``redis_connect_func``): authenticate, meet the server, and load the
        scripts if the server has none of them.

        The connection meets its server (server.lua, `meet_server`): a new,
        restored or promoted one starts a new generation before any change
        or version read goes over this connection, so control scripts need
        not check it each time (in a cluster, whose client has no such hook,
        they do: lua/prelude.lua). A single-server client also makes sure the
        server is not a cluster node, which it would use half-working (every
        entry in another slot refused).

        Scripts are a server's, not a connection's: they are loaded, all in
        one write, only when the meeting finds the server without server.lua
        (a new, restarted or flushed server). Loading every script on every
        connection cost 60 `SCRIPT LOAD`s per instance at start, and 10 per
        reconnect (issue 20, item 3). Loading at connect still keeps NOSCRIPT
        off the request path (issue 7, item 2); a script that goes missing
        later (`SCRIPT FLUSH`, another version's instances) is loaded on its
        first NOSCRIPT (`_lean`, `_batch`).
        """
        await connection.on_connect()
        commands: list[tuple[Any, ...]] = [("INFO", "cluster")]
        if self._sharded:  # (cluster clients have no connect hook; kept for completeness)
            commands += [("SCRIPT", "LOAD", script.source) for script in self._scripts.values()]
        else:
            commands.append(self._meeting())
        await connection.send_packed_command(connection.pack_commands(commands))
        cluster_info = _text(await connection.read_response())
        if self._sharded:
            for _ in self._scripts:
                await connection.read_response()
            return
        if "cluster_enabled:1" in cluster_info:  # (the meeting's reply is a MOVED, unread)
            raise redis_errors.ConnectionError(
                "the server is a Redis Cluster node, but the cache runs a single-server "
                "client (no node answered when it started): restart it, or name the "
                "cluster with a redis+cluster:// URL"
            )
        try:
            await connection.read_response()  # met: the server's run id
        except NoScriptError:
            loads = [("SCRIPT", "LOAD", script.source) for script in self._scripts.values()]
            await connection.send_packed_command(
                connection.pack_commands([*loads, self._meeting()])
            )
            for _ in loads:
                await connection.read_response()
            await connection.read_response()

    def _meeting(self) -> tuple[Any, ...]:
        """The EVALSHA of server.lua that meets the server."""
        server = self._scripts["server"]
        keys, args = self.layout.control, self._announce_args()
        return ("EVALSHA", server.sha, len(keys), *keys, *args)

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Every command of the tier but the reads: one of `max_connections`
        slots, then the guard.

        The slots queue callers in order (asyncio's semaphore is FIFO once
        anyone waits). redis-py's blocking pool alone lets a task that has just
        released a connection take it straight back, so under a saturating
        load some callers starved until the pool's timeout, which then counted
        as Redis being unreachable.
        """
        async with self._slots:
            return await self._guard.call(operation)

    async def _command(self, *parts: str | bytes | int) -> Any:
        """One plain command, on the read pipe's connection in its turn (an
        idle instance's heartbeats and counter reads open no other), or on one
        of the pool while that is not open; an error reply raises."""
        reads = self._reads

        async def send() -> Any:
            if reads is not None:
                reply = await reads.call_in_turn(_batch.command(*parts))
                if isinstance(reply, Exception):
                    raise reply
                if reply is not NOT_READY:
                    return reply
            return await self._execute(*parts)

        return await self._call(send)

    async def trim(self) -> None:
        """Close the pool's connections that nothing is using: they were opened
        under load (the read pipe busy), and an idle instance gives them back
        (issue 20, item 3). They stay in the pool, closed, and open again (and
        meet the server) when a burst needs them. A cluster's node pools are
        left as they are."""
        if not self._cluster:
            pool = cast(aioredis.Redis, self._client).connection_pool
            with contextlib.suppress(redis_errors.RedisError, OSError):  # closing: nothing to lose
                await pool.disconnect(inuse_connections=False)

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        run = self._scripts[script]
        return await self._call(lambda: self._lean(run, keys, args))

    async def _lean(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """*script* on the tier's own connection when it is free, else on one
        of the pool (in a cluster: of the node holding *keys[0]*), sent and
        read by `_batch`, not by redis-py's command path: this is what every
        change, claim and fill costs the client. What the lean path does not
        handle — a server without the script, a slot that moved — goes once
        more through redis-py's client, which does.

        While a slot migrates (issue 21, cases 3 and 5): an entry script that
        is asked elsewhere (ASK) follows on one connection to the importing
        node, `ASKING` and the call together (redis-py 8.2 sends the two on
        different connections, and the importing node answers MOVED until its
        redirections run out). A script whose keys are split between the two
        nodes (TRYAGAIN), a cluster that is down for a moment (CLUSTERDOWN),
        and a control script asked elsewhere are tried again, with backoff,
        for up to `migration_budget`: a control script must not run on the
        importing node, whose channel nobody listens to until the slot is
        assigned (its SPUBLISH would reach no one). Past the budget the error
        stands, and the caller queues the change."""
        packed = script.pack(keys, args)
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.migration_budget, _MIGRATION_BACKOFF
        while True:
            reply = await self._lean_once(keys, packed)
            control = keys[0] == self.layout.tags
            if _asked(reply) and not control:
                reply = await self._asking(reply, script, keys, args)
            if not (_migrating(reply) or (control and _asked(reply))):
                break
            if loop.time() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.migration_budget / 4)
        if not isinstance(reply, redis_errors.RedisError):
            return reply
        # (redis-py types some error replies as connection errors: LOADING,
        # NOAUTH, "max number of clients". Raised, the guard counts them so.)
        if isinstance(reply, (NoScriptError, redis_errors.AskError)):  # ASK and MOVED
            if control and _asked(reply):
                # Still asked elsewhere past the budget. redis-py would follow
                # the ASK to the importing node, where no listener hears the
                # change (and on two connections: it fails or runs by luck).
                # Refused: the caller queues the change and hints it.
                raise reply
            return await script(self._execute, keys, args)
        if isinstance(reply, redis_errors.ReadOnlyError):
            # A replica answered: the master moved (a failover, REPLICAOF).
            # Unavailable, not refused; redis-py's Sentinel connections say the same.
            raise redis_errors.ConnectionError(f"the server is a replica now: {reply}") from reply
        raise reply

    async def _asking(
        self, asked: redis_errors.AskError, script: _Script, keys: list[str], args: list[Any]
    ) -> Any:
        """*script* on the node an ASK names: `ASKING` and the call on one
        connection, the script by its source (the importing node may not have
        loaded it yet). Its reply, as `_lean_once` gives them."""
        cluster = cast(RedisCluster, self._client)
        node = cluster.get_node(host=asked.host, port=asked.port)
        if node is None:  # a node the slot map does not know yet
            await cluster.nodes_manager.initialize()
            node = cluster.get_node(host=asked.host, port=asked.port)
            if node is None:
                raise redis_errors.ConnectionError(f"ASK names an unknown node {asked}")
        packed = _batch.command("ASKING") + _batch.command(
            "EVAL", script.source, len(keys), *keys, *args
        )
        connection = node.acquire_connection()
        try:
            _, reply = await _batch.run_on(connection, packed, 2)
        finally:
            node.release(connection)
        return reply

    async def _lean_once(self, keys: list[str], packed: bytes) -> Any:
        """One lean script call: its reply, an error reply as an exception object."""
        reads = self._reads
        if reads is not None and (reads.free() or await reads.reopened()):
            reply = await reads.call(packed)
        else:
            connection, release = await self._connection_to(keys[0])
            try:
                reply = await _run_script(connection, packed)
            finally:
                await release()
        return reply

    def _announce_args(self, origin: str | None = None) -> list[Any]:
        return [origin or self._origin, self.layout.channel, self._log_maxlen, _now_ms()]

    async def _control(
        self, script: str, args: list[Any], change: bool = True, origin: str | None = None
    ) -> Any:
        """Run a control script (lua/prelude.lua's convention); a *change*, when
        replicas must confirm changes, is confirmed by `WAIT` on the same
        connection, or raises `BackendError` (the caller keeps it queued)."""
        keys, args = self.layout.control, [*self._announce_args(origin), *args]
        if not (change and self._confirm_replicas):
            return await self._run(script, keys, args)
        return await self._call(lambda: self._confirmed(self._scripts[script], keys, args))

    async def _confirmed(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """The script and `WAIT` on one connection of the pool. The WAIT may
        answer late by Redis's timer granularity (its blocked clients time out
        on the server's clock tick, 100 ms at the default hz), so its reply
        gets that much more time than the socket timeout."""
        connection, release = await self._connection_to(keys[0])
        try:
            for attempt in (1, 2):
                await connection.send_packed_command(
                    connection.pack_commands(
                        [
                            ("EVALSHA", script.sha, len(keys), *keys, *args),
                            ("WAIT", self._confirm_replicas, self._confirm_ms),
                        ]
                    )
                )
                try:
                    reply = await connection.read_response()
                except redis_errors.MovedError:
                    await connection.read_response()
                    # Sent around the cluster client, so it did not see the
                    # move: refresh its slot map before the change is retried.
                    if isinstance(self._client, RedisCluster):
                        await self._client.nodes_manager.initialize()
                    raise
                except NoScriptError:
                    await connection.read_response()  # the WAIT's answer
                    if attempt == 2:
                        raise
                    await self._execute("SCRIPT LOAD", script.source)
                    continue
                acked = await connection.read_response(timeout=self._confirm_ms / 1000 + 0.2)
                if acked is None:  # redis-py's answer when a read's own timeout passes
                    raise redis_errors.TimeoutError("WAIT did not answer in time")
                break
        except BaseException:
            await connection.disconnect(nowait=True)  # replies may still be on the way
            raise
        finally:
            await release()
        if int(acked) < self._confirm_replicas:
            raise Unconfirmed(
                f"a change reached {acked} of {self._confirm_replicas} replica(s) within "
                f"{self._confirm_ms} ms and may be lost in a failover: it stays queued"
            )
        return reply

    async def _connection_to(self, key: str) -> tuple[Any, Callable[[], Awaitable[None]]]:
        """A connection of the pool, or in a cluster of the node holding *key*,
        and how to give it back."""
        if not self._cluster:
            pool = cast(aioredis.Redis, self._client).connection_pool
            connection = await pool.get_connection()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
            return connection, lambda: pool.release(connection)
        node = cast(RedisCluster, self._client).get_node_from_key(key)
        if node is None:
            raise redis_errors.ConnectionError(f"no node serves the slot of {key!r}")
        connection = node.acquire_connection()

        async def release() -> None:
            node.release(connection)

        return connection, release

    # -- reads -------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        name = self.layout.entry(key)
        self.reads += 1
        reads = self._reads
        if reads is None:
            return await self._guard.call(lambda: self._node_get(name))
        return await self._guard.call(lambda: reads.get(name))

    async def _node_get(self, name: str) -> bytes | None:
        """In a cluster: a read through the pipe of the master holding *name*.
        A master that cannot be reached (killed, failed over) makes the client
        ask the cluster for its slot map again, so that the next read goes to
        the slot's new owner (and its pipe meets it) instead of waiting for
        redis-py's own refresh, which was seen to miss a promotion for
        seconds."""
        try:
            return await self._node_pipe(name).get(name)
        except (redis_errors.ConnectionError, OSError):
            await self._refresh_slots()
            raise

    async def _refresh_slots(self) -> None:
        """One refresh of the cluster's slot map at a time, shared by its callers."""
        refreshing = self._refreshing
        if refreshing is None or refreshing.done():
            cluster = cast(RedisCluster, self._client)
            refreshing = self._refreshing = asyncio.ensure_future(
                cluster.nodes_manager.initialize()
            )
            # (retrieved even when every caller was cancelled meanwhile)
            refreshing.add_done_callback(lambda done: done.cancelled() or done.exception())
        with contextlib.suppress(redis_errors.RedisError, OSError):  # the read's error stands
            await asyncio.shield(refreshing)

    def _node_pipe(self, name: str) -> ReadPipe:
        """In a cluster: the read pipe of the master holding *name*'s slot."""
        cluster = self._client
        assert isinstance(cluster, RedisCluster)
        node = cluster.get_node_from_key(name)
        if node is None:  # no slot map yet, or the slot is uncovered
            raise redis_errors.ConnectionError(f"no node serves the slot of {name!r}")
        pipe = self._node_pipes.get(node.name)
        if pipe is None:
            options = {
                **node.connection_kwargs,
                "retry": Retry(NoBackoff(), 0),
                "redis_connect_func": self._meet_shard,
            }
            pipe = self._node_pipes[node.name] = ReadPipe(
                lambda: node.connection_class(**options),
                self._queued_get,
                timeout=self._timeout,
                connect_timeout=self._connect_timeout,
            )
        return pipe

    async def _meet_shard(self, connection: Any) -> None:
        """Run on every new connection of a cluster read pipe, before its first
        read: meet the shard master it reaches, and repair what a promotion or
        a restore may have lost of its logged entry changes (`_shards.py`),
        once per master run and namespace. Until then this instance reads
        nothing through it; what others read meanwhile, the repair's
        announcement evicts."""
        await connection.on_connect()
        run = await _shard_run(connection)
        if run is None or run.identity in self._met:
            return
        if not await self._execute("HEXISTS", self.layout.met, run.identity):
            # One instance of the fleet repairs (all of them meet the new
            # master at once after a failover, and each would read the log);
            # the others read on, and the repair's announcement evicts what
            # they read meanwhile. They check again at their next connection:
            # a repairer that dies leaves it to the first after its claim.
            claim = f"{self.layout.met}:{run.identity}"
            if not await self._execute("SET", claim, self._origin, "NX", "PX", _REPAIR_CLAIM_MS):
                return
            try:
                rows = await self._client.xrange(self.layout.log, min="-", max="+")
                # The master's position read again after the log: every change
                # logged was made on its shard before it was announced, so one
                # the master holds is below this offset, not past it.
                run = await _shard_run(connection)
                if run is None:
                    return
                try:
                    await self._repair_shard(f"{connection.host}:{connection.port}", run, rows)
                except BackendError as exc:
                    # (say, the slot of a key to repair migrating past the budget)
                    # Not met: the pipe's next connection tries again. Raised as a
                    # connection error, what the pipe's callers expect of it.
                    raise redis_errors.ConnectionError(f"shard repair failed: {exc}") from exc
                await self._execute("HSET", self.layout.met, run.identity, _now_ms())
            finally:
                await self._execute("DEL", claim)
        self._met.add(run.identity)

    async def _repair_shard(self, node_name: str, run: ShardRun, rows: Any) -> None:
        """Delete again, and announce, the changes logged in *rows* of keys that
        *node_name* serves and that its *run* may not hold."""
        lost = tuple(
            key
            for key, written in latest_writes(rows).items()
            if not run.holds(written) and self._node_name(key) == node_name
        )
        if lost:
            self.on_shard_repair(node_name, len(lost))
            await self.delete(lost, origin="shard")

    async def _queued_get(self, name: str) -> bytes | None:
        """A GET through the pool (in a cluster, or while the read pipe
        reconnects), queued for one of the tier's slots like every other call:
        a burst of readers must not race for the pool's few connections and
        time out waiting (issue 7's fairness, `_call`)."""
        async with self._slots:
            return await self._pool_get(name)

    async def _pool_get(self, name: str) -> bytes | None:
        """A GET through the pool (while the read pipe reconnects)."""
        try:
            reply: bytes | None = await self._execute("GET", name)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                return WRONG_TYPE
            raise
        return reply

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Plain GETs, as one lean batch (warmup); WRONGTYPE replies read as garbage."""
        self.reads += len(keys)
        replies = await self._batch(keys, [get_command(self.layout.entry(key)) for key in keys])
        return [_wrong_type(reply) for reply in replies]

    async def open_reads(self) -> None:
        """Open the read pipe's connection now, not on the first read; on a
        cluster (whose connections `prepare` does not meet), load the scripts
        on every master before the first pipeline needs them."""
        if self._reads is not None:
            await self._guard.call(self._reads.connect)
        else:
            await self._call(self._load_scripts)

    async def versions(
        self, tags: tuple[str, ...], horizon: float = 0.0
    ) -> tuple[str, tuple[str, ...]]:
        reply = await self._control("versions", [_ms(horizon) if horizon else 0, *tags], False)
        generation, *versions = (_text(v) for v in reply)
        return generation, tuple(versions)

    # -- fill leases ---------------------------------------------------------------

    async def claim(self, key: str, token: str, rejected: bytes) -> Claim:
        try:
            reply = await self._run(
                "claim", list(self.layout.slot_names(key)), [token, self._lease_ms, rejected]
            )
        except BaseException:
            self._orphaned(key, token)  # Redis may have granted it before the reply was lost
            raise
        return _claim(reply)

    async def lease_many(self, keys: list[str], token: str) -> list[bool]:
        """Take the fill lease of each key nobody holds one for (warmup): a
        plain `SET NX PX` per key, as one lean batch. Not `claim.lua`: warmup
        has read the entries already, waits for nobody (a held lease means the
        key is being loaded elsewhere, so warmup leaves it), and so needs
        neither the script's entry check nor its contention mark — a third of
        the server time per key. A lease left by an older generation (before
        a clear, or restored with a snapshot) is not taken over here either:
        that key is left to its first read, whose claim does."""
        lease, head = self.layout.lease, command_head(6, b"SET")
        options = (token.encode(), b"NX", b"PX", b"%d" % self._lease_ms)
        tail = b"".join(bulk(part) for part in options)
        commands = [b"".join((head, bulk(lease(key).encode()), tail)) for key in keys]
        try:
            replies = await self._batch(keys, commands)
        except BaseException:
            for key in keys:
                self._orphaned(key, token)
            raise
        return [reply is not None for reply in replies]  # OK, or nil: held

    async def fill(self, key: str, entry: bytes, ttl: float, token: str) -> bool:
        code = int(
            await self._run("fill", list(self.layout.slot_names(key)), [token, entry, _ms(ttl)])
        )
        if code == 2:
            await self._wake(key)
        return code > 0

    async def fill_many(self, fills: list[tuple[str, bytes]], ttl: float, token: str) -> list[bool]:
        """`fill` for each key (warmup): one script call per key, on the key's
        own slot, all sent as one lean batch (`_batch.py`)."""
        head = self._script_head("fill")
        token_bulk, ttl_bulk = bulk(token.encode()), bulk(b"%d" % _ms(ttl))
        commands = [
            b"".join((head, *self._slot_bulks(key), token_bulk, bulk(entry), ttl_bulk))
            for key, entry in fills
        ]
        keys = [key for key, _ in fills]
        codes = [int(code) for code in await self._batch(keys, commands, script="fill")]
        for (key, _), code in zip(fills, codes, strict=True):
            if code == 2:
                await self._wake(key)
        return [code > 0 for code in codes]

    def _script_head(self, script: str) -> bytes:
        """The packed start of an EVALSHA of *script* with two keys and three arguments."""
        return command_head(8, b"EVALSHA", self._scripts[script].sha.encode(), b"2")

    def _slot_bulks(self, key: str) -> tuple[bytes, bytes]:
        """*key*'s entry and lease names, packed."""
        entry, lease = self.layout.slot_names(key)
        return bulk(entry.encode()), bulk(lease.encode())

    async def _batch(
        self, keys: list[str], commands: list[bytes], script: str | None = None
    ) -> list[Any]:
        """Run packed commands (one per key of *keys*, on its slot; EVALSHAs of
        *script*, if named) as one batch, or in a cluster as one batch per
        master, all at once; raise the first error reply but WRONGTYPE (after
        reading them all: the connections stay usable)."""
        groups: dict[str, list[int]] = {}
        if self._cluster:
            for i, key in enumerate(keys):
                groups.setdefault(self._node_name(key), []).append(i)
        else:
            groups[""] = list(range(len(keys)))
        replies: list[Any] = [None] * len(commands)

        async def send(indexes: list[int]) -> None:
            got = await self._packed(keys[indexes[0]], [commands[i] for i in indexes])
            missing = [j for j, reply in enumerate(got) if _noscript(reply)]
            if missing and script is not None:  # a flushed server, or a promoted replica
                await self._execute("SCRIPT LOAD", self._scripts[script].source)
                again = await self._packed(
                    keys[indexes[0]], [commands[indexes[j]] for j in missing]
                )
                for j, reply in zip(missing, again, strict=True):
                    got[j] = reply
            for i, reply in zip(indexes, got, strict=True):
                replies[i] = reply

        async def send_all() -> list[Any]:
            await asyncio.gather(*(send(indexes) for indexes in groups.values()))
            if self._cluster and any(_moved(reply) for reply in replies):
                # Sent around the client: refresh its slot map.
                await cast(RedisCluster, self._client).nodes_manager.initialize()
            return _raised(replies)

        return await self._call(send_all)

    async def _packed(self, key: str, commands: list[bytes]) -> list[Any]:
        """Packed commands on a connection to *key*'s server (its node, in a cluster)."""
        connection, release = await self._connection_to(self.layout.entry(key))
        try:
            return await _batch.run_on(connection, b"".join(commands), len(commands))
        finally:
            await release()

    def _node_name(self, key: str) -> str:
        """The cluster node of *key*'s slot."""
        node = cast(RedisCluster, self._client).get_node_from_key(self.layout.entry(key))
        return node.name if node is not None else ""

    async def release(self, key: str, token: str, *, uncertain: bool = False) -> None:
        if int(await self._run("release", [self.layout.lease(key)], [token])) or uncertain:
            await self._wake(key)

    async def hint(self, subject: str, names: tuple[str, ...]) -> None:
        message = Message("h", names, self._origin, 0, (subject,), time.time())
        await self._command(self._publish, self.layout.channel, message.encode())

    async def _wake(self, key: str) -> None:
        """Tell the callers waiting on *key*'s lease that it ended (an unnumbered 'f')."""
        message = Message("f", (key,), self._origin, 0, sent_at=time.time())
        publish, channel = self._publish, self.layout.channel
        await self._command(publish, channel, message.encode())

    async def _pipeline(
        self, commands: list[tuple[Any, ...]], raise_on_error: bool = True
    ) -> list[Any]:
        async def send(raise_errors: bool) -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = await pipe.execute(raise_on_error=raise_errors)
                return replies

        async def send_with_scripts() -> list[Any]:
            replies = await send(False)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # A node without the scripts (a cluster master that was a
                # replica, a flushed server): load them everywhere, once more.
                await self._load_scripts()
                return await send(raise_on_error)
            return _raised(replies) if raise_on_error else replies

        return await self._call(send_with_scripts)

    async def _load_scripts(self) -> None:
        """Every script, by a one-name SCRIPT LOAD: on a cluster, to every master."""
        for script in self._scripts.values():
            await self._execute("SCRIPT LOAD", script.source)

    # -- changes ---------------------------------------------------------------------

    async def write(self, key: str, entry: bytes, ttl: float, horizon: float) -> None:
        written = await self._run("write", list(self.layout.slot_names(key)), [entry, _ms(ttl)])
        await self._announce((key,), horizon, [_text(written)])

    async def delete(self, keys: tuple[str, ...], *, origin: str | None = None) -> None:
        """Delete *keys*' entries and announce it (from *origin*, default this
        instance: a repair announces as "shard", so this instance applies it too)."""
        for chunk in _chunks(keys):
            names = [name for key in chunk for name in self.layout.slot_names(key)]
            pairs = [(names[i], names[i + 1]) for i in range(0, len(names), 2)]
            # One call per key: each touches one slot (entry and lease share it).
            if self._cluster:  # and says where it stands in its shard (`_shards.py`)
                sha = self._scripts["erase"].sha
                written = await self._pipeline([("EVALSHA", sha, 2, *pair) for pair in pairs])
                await self._announce(chunk, 0.0, [_text(w) for w in written], origin)
            else:
                await self._pipeline([("DEL", *pair) for pair in pairs])
                await self._announce(chunk, 0.0)

    async def _announce(
        self,
        keys: tuple[str, ...],
        horizon: float,
        written: list[str] | None = None,
        origin: str | None = None,
    ) -> None:
        """Announce changed *keys*; *written*, one per key, where each change
        stands in its shard (`_shards.py`), kept in the log."""
        positions = SEP.join(written) if written and all(written) else ""
        horizon_ms = _ms(horizon) if horizon else 0
        await self._control("announce", [horizon_ms, positions, *keys], origin=origin)

    async def invalidate(self, tags: tuple[str, ...]) -> list[tuple[str, str]]:
        # Each chunk is a change of its own; if a later one fails, the caller
        # queues them all again, and a repeated bump is harmless.
        bumped: list[tuple[str, str]] = []
        for chunk in _chunks(tags):
            _, *versions = await self._bump("t", chunk)
            pairs = list(zip(chunk, versions, strict=True))
            self.on_bumped(pairs)
            bumped.extend(pairs)
        return bumped

    async def clear(self) -> str:
        generation = (await self._bump("c", ()))[0]
        self.on_cleared(generation)
        return generation

    async def _bump(self, kind: str, tags: tuple[str, ...]) -> list[str]:
        reply = await self._control("invalidate", [kind, *tags])
        return [_text(v) for v in reply]

    async def heartbeat(self, report: bytes, ttl: float) -> None:
        """Publish this instance's stats for `ttl` seconds (no change, no number)."""
        name = self.layout.heartbeat_prefix + self._origin
        await self._command("SET", name, report, "PX", _ms(ttl))

    async def forget_heartbeat(self) -> None:
        await self._command("DEL", self.layout.heartbeat_prefix + self._origin)

    async def compact(self) -> int:
        """Drop tag versions no live entry can carry any more; how many went."""
        dropped = 0
        while True:
            count = int(await self._control("compact", [CHUNK, self._compaction_margin_ms]))
            dropped += count
            if count < CHUNK:
                return dropped

    async def drop(self, key: str, header: bytes) -> None:
        await self._run("drop", [self.layout.entry(key)], [header])

    async def discard(self, key: str) -> None:
        await self._command("DEL", self.layout.entry(key))

    async def close(self) -> None:
        for pipe in (self._reads, *self._node_pipes.values()):
            if pipe is not None:
                await pipe.close()

    async def reconnect(self) -> None:
        """Drop the tier's own connections (the master moved): they reconnect."""
        if self._reads is not None:
            await self._reads.close()

    # -- what the subscriber needs to resynchronise ------------------------------

    async def server_id(self) -> str:
        """Meet the server holding the control slot (a new one starts a new
        generation: lua/prelude.lua, `meet_server`); its run id."""
        return _text(await self._control("server", [], change=False))

    async def current_seq(self) -> int:
        """The change counter; 0 for foreign data there (listeners then clear L1)."""
        try:
            raw = await self._command("GET", self.layout.seq)
            return int(raw or 0)
        except (BackendUnavailable, BackendTimeout):
            raise
        except (BackendError, ValueError):
            return 0

    async def log_after(self, seq: int) -> list[Message] | None:
        """The changes after *seq*, or None when the log no longer reaches back.

        An entry that does not parse is returned as None in the list's place, so
        the caller knows something happened that it cannot interpret.
        """
        try:
            rows = await self._call(
                lambda: self._client.xrange(self.layout.log, min=f"{seq + 1}-0", max="+")
            )
        except (BackendUnavailable, BackendTimeout):
            raise
        except BackendError:
            return None  # foreign data under the log's name: nothing to replay from
        if not rows:
            return []
        first_id = _text(rows[0][0])
        if not first_id.startswith(f"{seq + 1}-"):
            return None
        messages: list[Message] = []
        for _id, fields in rows:
            raw = fields.get(b"m") if isinstance(fields, dict) else None
            try:
                messages.append(Message.decode(raw or b""))
            except ValueError:
                return None
        return messages


async def _shard_run(connection: Any) -> ShardRun | None:
    """The run and replication history of the master *connection* reaches."""
    await connection.send_packed_command(
        connection.pack_commands([("INFO", "server"), ("INFO", "replication")])
    )
    return ShardRun.parse(
        _text(await connection.read_response()) + _text(await connection.read_response())
    )


async def _run_script(connection: Any, packed: bytes) -> Any:
    """One packed script call on *connection*: its reply (an error reply as an
    exception object, not raised). A replica's READONLY drops the connection:
    the next call connects again (and, on Sentinel, asks where the master is)."""
    (reply,) = await _batch.run_on(connection, packed, 1)
    if isinstance(reply, redis_errors.ReadOnlyError):
        await connection.disconnect(nowait=True)
    return reply


def _raised(replies: list[Any]) -> list[Any]:
    """*replies*, unless one is an error: then that error, raised. But WRONGTYPE:
    the answer to a GET of foreign data, which the caller reads as garbage."""
    for reply in replies:
        if isinstance(reply, Exception) and _wrong_type(reply) is not WRONG_TYPE:
            raise reply
    return replies


def _wrong_type(reply: Any) -> Any:
    """A GET's reply, with WRONGTYPE (foreign data, a miss to clean up) as `WRONG_TYPE`."""
    if isinstance(reply, ResponseError) and str(reply).startswith("WRONGTYPE"):
        return WRONG_TYPE
    return reply


def _noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError)


def _asked(reply: Any) -> bool:
    """An ASK: the slot is migrating, and this key is on the importing node now."""
    return isinstance(reply, redis_errors.AskError) and not isinstance(
        reply, redis_errors.MovedError
    )


def _migrating(reply: Any) -> bool:
    """A refusal that passes once a slot migration or a failover settles."""
    return isinstance(reply, (redis_errors.TryAgainError, redis_errors.ClusterDownError))


def _moved(reply: Any) -> bool:
    return isinstance(reply, redis_errors.AskError)  # MovedError is one too


def _claim(reply: Any) -> Claim:
    status = int(reply[0])
    return Claim(status, bytes(reply[1]) if status == 2 else None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chunks(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
