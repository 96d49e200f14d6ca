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
    {ns:v2}:hb:<id>       instance <id>'s stats (JSON), expiring unless renewed
    {ns:v2}:inv           the pub/sub channel

``{d}`` is a digest of the key (CRC-32, hex): an entry and its lease share
its hash slot whatever braces the key holds. The control keys and the channel
share the namespace's own slot, ``{ns:v2}``, so namespaces spread over a
cluster's shards. No script touches two slots (guarantee 8): a `set` is an
entry-slot script, then an announcement on the control slot.

Scripts carry Redis 7 flags (``#!lua flags=…``). Scripts that store values are
refused as a whole under ``maxmemory``. Scripts that only take a short lease,
release one, bump a version or announce run under OOM (``allow-oom``): an
invalidation must never be refused for memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import zlib
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from . import _batch
from ._batch import bulk, command_head
from ._exceptions import BackendError, BackendTimeout, BackendUnavailable
from ._guard import Guard
from ._pipe import WRONG_TYPE, ReadPipe
from ._tier import Claim, Message

FORMAT = "v2"
T = TypeVar("T")


#: Scripts that may run while Redis is at `maxmemory` (see the module docstring).
_ALLOW_OOM = frozenset(
    {"claim", "release", "drop", "announce", "invalidate", "versions", "epoch", "compact"}
)
_SCRIPTS = (
    "claim",
    "fill",
    "release",
    "drop",
    "write",
    "announce",
    "invalidate",
    "versions",
    "epoch",
    "compact",
)
#: Tags or keys per script call: Lua's `unpack` fails past about 8,000 values,
#: and a version update unpacks two per tag (issue 7, item 6).
CHUNK = 1000


def _script_source(name: str) -> str:
    lua = resources.files("twotier") / "lua"
    shebang = "#!lua flags=allow-oom" if name in _ALLOW_OOM else "#!lua"
    body = (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
    return f"{shebang}\n{body}"


#: redis-py's `execute_command`, which it leaves unannotated.
Execute = Callable[..., Awaitable[Any]]


class _Script:
    """A Lua script, run by EVALSHA and loaded on the first NOSCRIPT (a new,
    restarted or flushed server). Leaner than redis-py's `Script` object, whose
    per-call bookkeeping showed on the L2 hit path."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, execute: Execute, keys: list[str], args: list[Any]) -> Any:
        try:
            return await execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await execute("SCRIPT", "LOAD", self.source)
            return await execute("EVALSHA", self.sha, len(keys), *keys, *args)


class Layout:
    """The Redis names of one namespace."""

    def __init__(self, namespace: str) -> None:
        control = f"{{{namespace}:{FORMAT}}}"
        self.tags = f"{control}:tags"
        self.bumped = f"{control}:bumped"
        self.seq = f"{control}:seq"
        self.log = f"{control}:log"
        self.epoch = f"{control}:epoch"
        #: `<prefix><instance id>`: each live instance's stats, with a TTL
        #: (`twotier stats` reads them; the key vanishes with the instance).
        self.heartbeat_prefix = f"{control}:hb:"
        self.channel = f"{control}:inv"
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
        client: aioredis.Redis,
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
    ) -> None:
        self._client = client
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
        self._scripts = {name: _Script(_script_source(name)) for name in _SCRIPTS}
        self._reads = ReadPipe(
            client.connection_pool.make_connection,
            self._pool_get,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        #: The run id of the server this tier last made sure of (see `prepare`).
        self.run_id: str | None = None
        #: Entries read (GETs, whether coalesced or through the pool): a stat.
        self.reads = 0
        # This instance's own invalidations and clears, as Redis confirms them:
        # the version mirror takes them at once (read-your-writes), whether the
        # change was sent by its caller or later from the outbox.
        self.on_bumped: Callable[[list[tuple[str, str]]], None] = lambda pairs: None
        self.on_cleared: Callable[[str], None] = lambda generation: None

    async def prepare(self, connection: Any) -> None:
        """Run on every new connection before its first command (redis-py's
        ``redis_connect_func``): authenticate, load every script, and meet the
        server.

        Loading here keeps NOSCRIPT off the request path: a cold call used to
        need NOSCRIPT, SCRIPT LOAD and EVALSHA within one timeout (issue 7,
        item 2). Every connection to a restarted, restored or promoted server
        is a new one, so this is also where such a server is noticed before
        anything is read from it: unless the namespace's generation was drawn
        on this server run, `epoch.lua` draws a new one (guarantee 9).
        """
        await connection.on_connect()
        commands: list[tuple[Any, ...]] = [
            ("SCRIPT", "LOAD", script.source) for script in self._scripts.values()
        ]
        commands.append(("INFO", "server"))
        await connection.send_packed_command(connection.pack_commands(commands))
        replies = [await connection.read_response() for _ in commands]
        run_id = _run_id(replies[-1])
        if run_id != self.run_id:
            layout = self.layout
            keys = [layout.tags, layout.seq, layout.log, layout.bumped, layout.epoch]
            await connection.send_command(
                "EVALSHA",
                self._scripts["epoch"].sha,
                len(keys),
                *keys,
                *self._announce_args(),
                run_id,
            )
            await connection.read_response()
            self.run_id = run_id

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

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        run, execute = self._scripts[script], self._execute
        return await self._call(lambda: run(execute, keys, args))

    def _announce_args(self) -> list[Any]:
        return [self._origin, self.layout.channel, self._log_maxlen, _now_ms()]

    # -- reads -------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        name = self.layout.entry(key)
        self.reads += 1
        return await self._guard.call(lambda: self._reads.get(name))

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
        """One pipelined round trip (warmup); WRONGTYPE replies read as garbage."""
        self.reads += len(keys)
        replies = await self._pipeline([("GET", self.layout.entry(key)) for key in keys], False)
        return [WRONG_TYPE if isinstance(reply, ResponseError) else reply for reply in replies]

    async def open_reads(self) -> None:
        """Open the read pipe's connection now, not on the first read."""
        await self._guard.call(self._reads.connect)

    async def versions(
        self, tags: tuple[str, ...], horizon: float = 0.0
    ) -> tuple[str, tuple[str, ...]]:
        layout = self.layout
        reply = await self._run(
            "versions",
            [layout.tags, layout.seq, layout.log, layout.bumped],
            [*self._announce_args(), _ms(horizon) if horizon else 0, *tags],
        )
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

    async def claim_many(self, keys: list[str], token: str, rejected: list[bytes]) -> list[Claim]:
        """`claim` for each key (warmup): one script call per key, on the key's
        own slot, all sent as one lean batch (`_batch.py`)."""
        head = self._script_head("claim")
        tail = bulk(token.encode()) + bulk(b"%d" % self._lease_ms)
        commands = [
            b"".join((head, *self._slot_bulks(key), tail, bulk(header)))
            for key, header in zip(keys, rejected, strict=True)
        ]
        try:
            replies = await self._batch("claim", commands)
        except BaseException:
            for key in keys:
                self._orphaned(key, token)
            raise
        return [_claim(reply) for reply in replies]

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
        codes = [int(code) for code in await self._batch("fill", commands)]
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

    async def _batch(self, script: str, commands: list[bytes]) -> list[Any]:
        """Run packed EVALSHAs of *script* as one batch; raise the first error
        reply (after reading them all: the connection stays usable)."""
        pool = self._client.connection_pool

        async def send() -> list[Any]:
            replies = await _batch.run(pool, b"".join(commands), len(commands))
            missing = [i for i, r in enumerate(replies) if _noscript(r)]
            if missing:  # a server whose scripts were flushed since we met it
                await self._execute("SCRIPT", "LOAD", self._scripts[script].source)
                again = await _batch.run(pool, b"".join(commands[i] for i in missing), len(missing))
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
            return replies

        return await self._call(send)

    async def release(self, key: str, token: str) -> None:
        if int(await self._run("release", [self.layout.lease(key)], [token])):
            await self._wake(key)

    async def _wake(self, key: str) -> None:
        """Tell the callers waiting on *key*'s lease that it ended (an unnumbered 'f')."""
        message = Message("f", (key,), self._origin, 0, sent_at=time.time())
        await self._call(lambda: self._client.publish(self.layout.channel, message.encode()))

    async def _pipeline(
        self, commands: list[tuple[Any, ...]], raise_on_error: bool = True
    ) -> list[Any]:
        async def send() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
                return replies

        return await self._call(send)

    # -- changes ---------------------------------------------------------------------

    async def write(self, key: str, entry: bytes, ttl: float, horizon: float) -> None:
        await self._run("write", list(self.layout.slot_names(key)), [entry, _ms(ttl)])
        await self._announce((key,), horizon)

    async def delete(self, keys: tuple[str, ...]) -> None:
        for chunk in _chunks(keys):
            names = [name for key in chunk for name in self.layout.slot_names(key)]
            # One DEL per key: each touches one slot (entry and lease share it).
            await self._pipeline([("DEL", names[i], names[i + 1]) for i in range(0, len(names), 2)])
            await self._announce(chunk, 0.0)

    async def _announce(self, keys: tuple[str, ...], horizon: float) -> None:
        layout = self.layout
        await self._run(
            "announce",
            [layout.tags, layout.seq, layout.log],
            [*self._announce_args(), _ms(horizon) if horizon else 0, *keys],
        )

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
        layout = self.layout
        reply = await self._run(
            "invalidate",
            [layout.tags, layout.seq, layout.log, layout.bumped],
            [*self._announce_args(), kind, *tags],
        )
        return [_text(v) for v in reply]

    async def heartbeat(self, report: bytes, ttl: float) -> None:
        """Publish this instance's stats for `ttl` seconds (no change, no number)."""
        name = self.layout.heartbeat_prefix + self._origin
        await self._call(lambda: self._client.set(name, report, px=_ms(ttl)))

    async def forget_heartbeat(self) -> None:
        await self._call(lambda: self._client.delete(self.layout.heartbeat_prefix + self._origin))

    async def compact(self) -> int:
        """Drop tag versions no live entry can carry any more; how many went."""
        layout = self.layout
        dropped = 0
        while True:
            count = int(
                await self._run(
                    "compact",
                    [layout.tags, layout.bumped, layout.seq, layout.log],
                    [*self._announce_args(), CHUNK, self._compaction_margin_ms],
                )
            )
            dropped += count
            if count < CHUNK:
                return dropped

    async def drop(self, key: str, header: bytes) -> None:
        await self._run("drop", [self.layout.entry(key)], [header])

    async def discard(self, key: str) -> None:
        await self._call(lambda: self._client.delete(self.layout.entry(key)))

    async def close(self) -> None:
        await self._reads.close()

    # -- what the subscriber needs to resynchronise ------------------------------

    async def server_id(self) -> str:
        info = await self._call(lambda: self._client.info("server"))
        return str(info.get("run_id", ""))

    async def current_seq(self) -> int:
        """The change counter; 0 for foreign data there (listeners then clear L1)."""
        try:
            raw = await self._call(lambda: self._client.get(self.layout.seq))
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


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


def _claim(reply: Any) -> Claim:
    status = int(reply[0])
    return Claim(status, bytes(reply[1]) if status == 2 else None)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chunks(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]


def _run_id(info: Any) -> str:
    """The run id in a raw ``INFO server`` reply."""
    for line in _text(info).splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    return ""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
