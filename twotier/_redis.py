"""The Redis tier: key layout, Lua scripts, and the change log.

Key layout for namespace ``ns`` (the wire-format version ``v1`` is part of every
name, so an instance of a later format ignores these keys instead of misreading
them):

    ns:v1:e:<key>        entry: a hash {p: payload, t: tags, v: versions}
    ns:v1:l:<key>        fill lease of <key> (a token, with a short expiry)
    ns:v1:{ctl}:tags     hash tag → version ('' = namespace generation)
    ns:v1:{ctl}:seq      the change counter
    ns:v1:{ctl}:log      stream of the last changes, id = <seq>-1
    ns:v1:inv            the pub/sub channel

The control keys share the hash slot ``{ctl}``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from ._exceptions import BackendError, BackendTimeout, BackendUnavailable
from ._guard import Guard
from ._tier import BUSY, FILL, FOREIGN, IN_L2, SEP, BatchRead, Message, ReadResult

FORMAT = "v1"


def _script_source(name: str) -> str:
    lua = resources.files("twotier") / "lua"
    return (lua / "prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


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
        self.seq = f"{base}:{{ctl}}:seq"
        self.log = f"{base}:{{ctl}}:log"
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
    ) -> None:
        self._client = client
        self._execute: Execute = client.execute_command
        self._guard = guard
        self.layout = layout
        self._origin = origin
        self._lease_ms = max(1, int(lease_ttl * 1000))
        self._log_maxlen = log_maxlen
        self._scripts = {
            name: _Script(_script_source(name))
            for name in (
                "read",
                "fill",
                "read_batch",
                "fill_batch",
                "release",
                "write",
                "delete",
                "invalidate",
            )
        }

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        run, execute = self._scripts[script], self._execute
        return await self._guard.call(lambda: run(execute, keys, args))

    def _announce_args(self) -> list[Any]:
        return [self._origin, self.layout.channel, self._log_maxlen]

    async def read(
        self, key: str, tags: tuple[str, ...], lease: bool, min_ttl: float = 0.0
    ) -> ReadResult:
        layout = self.layout
        token = secrets.token_hex(8) if lease else ""
        reply = await self._run(
            "read",
            [layout.tags, layout.entry(key), layout.lease(key)],
            [token, self._lease_ms, int(min_ttl * 1000), *tags],
        )
        return _parse_read(reply, token)

    async def read_many(self, keys: list[str], tags: tuple[str, ...]) -> BatchRead:
        """`read(key, tags, lease=True)` for many keys in one script call."""
        layout = self.layout
        token = secrets.token_hex(8)
        names = [name for key in keys for name in (layout.entry(key), layout.lease(key))]
        reply = await self._run(
            "read_batch", [layout.tags, *names], [self._lease_ms, SEP.join(tags), token]
        )
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
            [lease, _ms(ttl), payload, SEP.join(tags), snapshot, layout.channel, self._origin, key],
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
            [*self._announce_args(), payload, _ms(ttl), SEP.join(tags), key],
        )

    async def delete(self, keys: tuple[str, ...]) -> None:
        layout = self.layout
        data_keys = [name for key in keys for name in (layout.entry(key), layout.lease(key))]
        await self._run(
            "delete",
            [layout.tags, layout.seq, layout.log, *data_keys],
            [*self._announce_args(), SEP.join(keys)],
        )

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        await self._bump("t", tags)

    async def clear(self) -> None:
        await self._bump("c", ())

    async def _bump(self, kind: str, tags: tuple[str, ...]) -> None:
        layout = self.layout
        await self._run(
            "invalidate",
            [layout.tags, layout.seq, layout.log],
            [*self._announce_args(), kind, *tags],
        )

    async def discard(self, key: str) -> None:
        await self._guard.call(lambda: self._client.delete(self.layout.entry(key)))

    # -- what the subscriber needs to resynchronise ------------------------------

    async def server_id(self) -> str:
        info = await self._guard.call(lambda: self._client.info("server"))
        return str(info.get("run_id", ""))

    async def current_seq(self) -> int:
        """The change counter; 0 for foreign data there (listeners then clear L1)."""
        try:
            raw = await self._guard.call(lambda: self._client.get(self.layout.seq))
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
            rows = await self._guard.call(
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


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
