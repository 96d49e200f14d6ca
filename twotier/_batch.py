"""Lean pipelines for warmup's batches: commands packed by hand, replies parsed in bulk.

A batch of warmup is a thousand script calls of one kind (`claim`, `fill`),
each on one key's slot. Through redis-py's pipeline most of their cost was the
client's: packing each command argument by argument, then one parser coroutine
(and, on pool connections, one socket-timeout context) per reply. Here a
batch is one buffer built from bytes joined once per command, sent on a pool
connection, and its replies are parsed straight out of the bytes as they
arrive — one coroutine per chunk of 64 KiB, not per reply. The replies of
twotier's scripts are few shapes: integers, bulk strings, nil, arrays of
those, errors (RESP2 and RESP3 alike; RESP3 push frames are skipped).

The connection is borrowed from redis-py's pool and returned with nothing
pending; on any failure (a timeout, a reset, a malformed reply) it is
disconnected first, since replies may still be on their way. Reading takes
the connection's own socket timeout as the bound for each wait for data, as
redis-py does for each reply.

Each command keeps to one key's slot: `RedisTier` groups nothing across slots,
so a cluster client can send a batch per node.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions as redis_errors

_CRLF = b"\r\n"
_READ = 1 << 16


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def command_head(count: int, *fixed: bytes) -> bytes:
    """The start of a command of *count* arguments whose first ones are *fixed*."""
    return b"*%d\r\n" % count + b"".join(bulk(part) for part in fixed)


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


class _Push:
    """A RESP3 push frame (an out-of-band message): not the reply to a command."""

    __slots__ = ()


_PUSH = _Push()


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at *pos*, and where the next one starts.

    Integers come back as int, bulk strings as bytes, nil as None, arrays as
    lists, errors as `redis.exceptions.ResponseError` (not raised). Raises
    `_Incomplete` when *buf* ends first, and `InvalidResponse` for any kind of
    reply twotier's scripts never send.
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 58:  # ':' integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 36:  # '$' bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        start = end + 2
        stop = start + size
        if len(buf) < stop + 2:
            raise _Incomplete
        return buf[start:stop], stop + 2
    if kind == 95:  # '_' RESP3 null
        return None, end + 2
    if kind == 42 or kind == 62:  # '*' array, '>' RESP3 push
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(count):
            item, at = parse(buf, at)
            items.append(item)
        return (items if kind == 42 else _PUSH), at
    if kind == 45:  # '-' error
        return redis_errors.ResponseError(buf[pos + 1 : end].decode(errors="replace")), end + 2
    if kind == 35:  # '#' RESP3 boolean (a Lua true, in RESP3)
        return int(buf[pos + 1 : end] == b"t"), end + 2
    raise redis_errors.InvalidResponse(f"unexpected reply type {chr(kind)!r}")


async def read_replies(reader: asyncio.StreamReader, count: int, wait: float | None) -> list[Any]:
    """*count* replies; each wait for more data is bounded by *wait* seconds."""
    replies: list[Any] = []
    buf, pos = b"", 0
    while True:
        try:
            while len(replies) < count:
                reply, pos = parse(buf, pos)
                if reply is not _PUSH:
                    replies.append(reply)
        except _Incomplete:
            pass
        if len(replies) == count:
            while pos < len(buf):  # nothing may follow but push frames
                try:
                    extra, pos = parse(buf, pos)
                except _Incomplete:
                    extra = None
                if extra is not _PUSH:
                    raise redis_errors.InvalidResponse("more replies than commands")
            return replies
        async with asyncio.timeout(wait):
            chunk = await reader.read(_READ)
        if not chunk:
            raise redis_errors.ConnectionError("Connection closed by server.")
        buf = buf[pos:] + chunk if pos < len(buf) else chunk
        pos = 0


async def run(pool: Any, packed: bytes, count: int) -> list[Any]:
    """Send *count* packed commands on a connection of redis-py's *pool*; their replies."""
    connection = await pool.get_connection()
    try:
        return await run_on(connection, packed, count)
    finally:
        await pool.release(connection)


async def run_on(connection: Any, packed: bytes, count: int) -> list[Any]:
    """Send *count* packed commands on *connection* (redis-py's); their replies.
    On any failure the connection is dropped: replies may still be on the way."""
    try:
        if not connection.is_connected:
            await connection.connect()
        reader = connection._reader  # redis-py's parsers read this very stream
        if reader is None:
            raise redis_errors.ConnectionError("an unconnected connection")
        await connection.send_packed_command(packed, check_health=False)
        try:
            return await read_replies(reader, count, connection.socket_timeout)
        except TimeoutError as exc:
            raise redis_errors.TimeoutError("Timeout reading a batch's replies") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
