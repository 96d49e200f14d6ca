"""The Redis tier: key layout, Lua scripts, and the change log.

Key layout for namespace ``ns`` (the wire-format version ``v1`` is part of every
name, so an instance of a later format ignores these keys instead of misreading
them):

    ns:v1:e:<key>        entry: a hash {p: payload, t: tags, v: versions}
    ns:v1:l:<key>        fill lease of <key> (a token, with a short expiry)
    ns:v1:{ctl}:tags     hash tag → version ('' = namespace generation,
                         '\x1fhorizon' = the longest an entry can live, ms)
    ns:v1:{ctl}:bumped   sorted set tag → time of its last bump (compaction)
    ns:v1:{ctl}:seq      the change counter
    ns:v1:{ctl}:log      stream of the last changes, id = <seq>-1
    ns:v1:{ctl}:epoch    run id of the server the generation was drawn on
    ns:v1:{ctl}:hb:<id>  instance <id>'s stats (JSON), expiring unless renewed
    ns:v1:inv            the pub/sub channel

The control keys share the hash slot ``{ctl}``.

Scripts carry Redis 7 flags (``#!lua flags=…``). Scripts that store values are
refused as a whole under ``maxmemory`` (before, a script's first ``DEL`` let
its later writes through: 31.8 MB landed under a 3 MB limit). Scripts that
only read, delete, take a short lease or bump a version run under OOM
(``allow-oom``): an invalidation must never be refused for memory, and a full
cache must still answer reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ._exceptions import BackendError, BackendTimeout, BackendUnavailable
from ._guard import Guard
from ._tier import BUSY, FILL, FOREIGN, IN_L2, SEP, BatchRead, Message, ReadResult

FORMAT = "v1"
T = TypeVar("T")


#: Scripts that may run while Redis is at `maxmemory` (see the module docstring).
_ALLOW_OOM = frozenset(
    {"read", "read_batch", "release", "delete", "invalidate", "epoch", "compact"}
)
_SCRIPTS = (
    "read",
    "fill",
    "read_batch",
    "fill_batch",
    "release",
    "write",
    "delete",
    "invalidate",
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
        base = f"{namespace}:{FORMAT}"
        self.entry_prefix = f"{base}:e:"
        self.lease_prefix = f"{base}:l:"
        self.tags = f"{base}:{{ctl}}:tags"
        self.bumped = f"{base}:{{ctl}}:bumped"
        self.seq = f"{base}:{{ctl}}:seq"
        self.log = f"{base}:{{ctl}}:log"
        self.epoch = f"{base}:{{ctl}}:epoch"
        #: `<prefix><instance id>`: each live instance's stats, with a TTL
        #: (`twotier stats` reads them; the key vanishes with the instance).
        self.heartbeat_prefix = f"{base}:{{ctl}}:hb:"
        self.channel = f"{base}:inv"

    def entry(self, key: str) -> str:
        return self.entry_prefix + key

    def lease(self, key: str) -> str:
        return self.lease_prefix + key


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
        max_connections: int = 50,
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
        # Called with (key, token) for a lease this client may hold without knowing:
        # its read timed out or was cancelled after Redis may have run it.
        self._orphaned = orphaned
        self._scripts = {name: _Script(_script_source(name)) for name in _SCRIPTS}
        #: The run id of the server this tier last made sure of (see `prepare`).
        self.run_id: str | None = None

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
        """Every command of the tier: one of `max_connections` slots, then the guard.

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
        return [self._origin, self.layout.channel, self._log_maxlen]

    def _horizon_ms(self, ttl: float) -> int:
        return _ms(ttl) + self._lease_ms

    async def read(
        self, key: str, tags: tuple[str, ...], lease: bool, min_ttl: float = 0.0
    ) -> ReadResult:
        layout = self.layout
        token = secrets.token_hex(8) if lease else ""
        try:
            reply = await self._run(
                "read",
                [layout.tags, layout.entry(key), layout.lease(key)],
                [token, self._lease_ms, int(min_ttl * 1000), *tags],
            )
        except BaseException:
            if token:  # Redis may have granted it before the reply was lost
                self._orphaned(key, token)
            raise
        return _parse_read(reply, token)

    async def read_many(self, keys: list[str], tags: tuple[str, ...]) -> BatchRead:
        """`read(key, tags, lease=True)` for many keys in one script call."""
        layout = self.layout
        token = secrets.token_hex(8)
        names = [name for key in keys for name in (layout.entry(key), layout.lease(key))]
        try:
            reply = await self._run(
                "read_batch", [layout.tags, *names], [self._lease_ms, SEP.join(tags), token]
            )
        except BaseException:
            for key in keys:
                self._orphaned(key, token)
            raise
        codes, snapshot = reply[0].decode(), reply[1].decode()
        return BatchRead([_BATCH_CODES[c] for c in codes], snapshot, token)

    async def fill(
        self,
        key: str,
        payload: bytes,
        ttl: float,
        tags: tuple[str, ...],
        snapshot: str,
        lease: str,
    ) -> bool:
        layout = self.layout
        stored = await self._run(
            "fill",
            [layout.tags, layout.entry(key), layout.lease(key)],
            [
                lease,
                _ms(ttl),
                payload,
                SEP.join(tags),
                snapshot,
                layout.channel,
                self._origin,
                key,
                self._horizon_ms(ttl),
            ],
        )
        return bool(stored)

    async def fill_many(
        self, read: BatchRead, ttl: float, tags: tuple[str, ...], fills: list[tuple[str, bytes]]
    ) -> list[bool]:
        """`fill` for many keys sharing a TTL, tags and *read*'s lease, in one script call."""
        layout = self.layout
        names = [name for key, _ in fills for name in (layout.entry(key), layout.lease(key))]
        results = await self._run(
            "fill_batch",
            [layout.tags, *names],
            [
                layout.channel,
                self._origin,
                _ms(ttl),
                SEP.join(tags),
                read.token,
                read.snapshot,
                layout.entry_prefix,
                self._horizon_ms(ttl),
                *(payload for _, payload in fills),
            ],
        )
        return [flag == "1" for flag in results.decode()]

    async def release(self, key: str, lease: str) -> None:
        layout = self.layout
        await self._run(
            "release",
            [layout.tags, layout.lease(key)],
            [lease, layout.channel, self._origin, key],
        )

    async def write(self, key: str, payload: bytes, ttl: float, tags: tuple[str, ...]) -> None:
        layout = self.layout
        await self._run(
            "write",
            [layout.tags, layout.seq, layout.log, layout.entry(key), layout.lease(key)],
            [*self._announce_args(), payload, _ms(ttl), SEP.join(tags), key, self._horizon_ms(ttl)],
        )

    async def delete(self, keys: tuple[str, ...]) -> None:
        layout = self.layout
        for chunk in _chunks(keys):
            data_keys = [name for key in chunk for name in (layout.entry(key), layout.lease(key))]
            await self._run(
                "delete",
                [layout.tags, layout.seq, layout.log, *data_keys],
                [*self._announce_args(), SEP.join(chunk)],
            )

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        # Each chunk is a change of its own; if a later one fails, the caller
        # queues them all again, and a repeated bump is harmless.
        for chunk in _chunks(tags):
            await self._bump("t", chunk)

    async def clear(self) -> None:
        await self._bump("c", ())

    async def _bump(self, kind: str, tags: tuple[str, ...]) -> None:
        layout = self.layout
        await self._run(
            "invalidate",
            [layout.tags, layout.seq, layout.log, layout.bumped],
            [*self._announce_args(), kind, *tags],
        )

    async def heartbeat(self, report: bytes, ttl: float) -> None:
        """Publish this instance's stats for `ttl` seconds (no change, no number)."""
        name = self.layout.heartbeat_prefix + self._origin
        await self._call(lambda: self._client.set(name, report, px=_ms(ttl)))

    async def forget_heartbeat(self) -> None:
        await self._call(lambda: self._client.delete(self.layout.heartbeat_prefix + self._origin))

    async def compact(self) -> int:
        """Drop tag versions no live entry can carry any more; how many went."""
        dropped = 0
        while True:
            count = int(await self._run("compact", [self.layout.tags, self.layout.bumped], [CHUNK]))
            dropped += count
            if count < CHUNK:
                return dropped

    async def discard(self, key: str) -> None:
        await self._call(lambda: self._client.delete(self.layout.entry(key)))

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
        first_id = rows[0][0].decode() if isinstance(rows[0][0], bytes) else str(rows[0][0])
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


_BATCH_CODES = {"2": IN_L2, "1": FILL, "0": BUSY, "x": FOREIGN}


def _parse_read(reply: Any, token: str) -> ReadResult:
    status = int(reply[0])
    if status == 1:
        stored_tags = tuple(t for t in reply[3].decode().split(SEP) if t)
        return ReadResult(bytes(reply[1]), int(reply[2]) / 1000, stored_tags, None, None)
    if status == 0:
        return ReadResult(None, 0.0, (), reply[2].decode(), token if int(reply[1]) else None)
    return ReadResult(None, 0.0, (), None, None, garbage=True)  # the script deleted it


def _chunks(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]


def _run_id(info: Any) -> str:
    """The run id in a raw ``INFO server`` reply."""
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    return ""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
