"""Lean commands: packed by hand, written straight to the socket, replies parsed in bulk.

Used for every script call (one command) and for warmup's batches (a thousand
script calls of one kind, each on one key's slot). Through redis-py most of
their cost was the client's: packing each command argument by argument, one
parser coroutine per reply, and — on connections with a socket timeout —
an `asyncio.wait_for` around each write, which in Python 3.11 is a new task
and a whole extra turn of the event loop before the command leaves: 60 µs of
an invalidation's 120 µs before its first byte was sent. Here a command or a
batch is one buffer written to the connection's transport; only a write the
kernel does not take at once waits (bounded), and the replies are parsed
straight out of the bytes as they arrive — one coroutine per chunk of 64 KiB,
not per reply. The replies of twotier's scripts are few shapes: integers,
bulk strings, nil, arrays of those, errors (RESP2 and RESP3 alike; RESP3
push frames are skipped). Errors come back typed as redis-py types them
(`NoScriptError`, `OutOfMemoryError`, `MovedError`...), not raised.

The connection is borrowed from redis-py's pool and returned with nothing
pending; on any failure (a timeout, a reset, a malformed reply) it is
disconnected first, since replies may still be on their way. Reading takes
the connection's own socket timeout as the longest wait for data, as
redis-py does for each reply (`Deadline`).

Each command keeps to one key's slot: `RedisTier` groups nothing across slots,
so a cluster client can send a batch per node.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions as redis_errors
from redis._parsers.base import BaseParser

_CRLF = b"\r\n"
_READ = 1 << 16


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def command_head(count: int, *fixed: bytes) -> bytes:
    """The start of a command of *count* arguments whose first ones are *fixed*."""
    return b"*%d\r\n" % count + b"".join(bulk(part) for part in fixed)


def command(*parts: bytes | str | int) -> bytes:
    """One command, packed (strings as UTF-8, integers in decimal)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, int):
            part = b"%d" % part
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


class Push(list[Any]):
    """A RESP3 push frame (an out-of-band message): not the reply to a command."""


def parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at *pos*, and where the next one starts.

    Integers come back as int, bulk and simple strings as bytes, nil as None, arrays as
    lists, errors as redis-py's `ResponseError` subclasses (not raised). Raises
    `Incomplete` when *buf* ends first, and `InvalidResponse` for any kind of
    reply twotier's scripts never send.
    """
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise Incomplete
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
            raise Incomplete
        return buf[start:stop], stop + 2
    if kind == 43:  # '+' simple string (OK)
        return buf[pos + 1 : end], end + 2
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
        return (items if kind == 42 else Push(items)), at
    if kind == 45:  # '-' error
        error = BaseParser.parse_error(buf[pos + 1 : end].decode(errors="replace"))  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
        return error, end + 2
    if kind == 35:  # '#' RESP3 boolean (a Lua true, in RESP3)
        return int(buf[pos + 1 : end] == b"t"), end + 2
    raise redis_errors.InvalidResponse(f"unexpected reply type {chr(kind)!r}")


class Deadline:
    """The bound on one batch's replies: one timer for all of them, cheaper than
    an `asyncio.timeout` around each read (a quarter of an L2 hit's cost).

    It fails the pending read once *timeout* passes with no data arriving,
    as a socket timeout would. Data that came in while the loop was blocked
    past the timer (a long GC, a starved CPU) is no timeout: the data and the
    timer fall in one turn of the loop, the data first, and the timer finds
    it in the reader's buffer and waits on. (An `asyncio.timeout` cancels
    the read then: a CI run's loop, slow for a moment, timed out a batch of
    replies that had all arrived.) None: no bound.
    """

    __slots__ = ("_handle", "_last", "_loop", "_reader", "_timeout")

    def __init__(self, reader: asyncio.StreamReader, timeout: float | None) -> None:
        self._reader = reader
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._last = 0.0  # the loop's time when data last came in (0.0: not yet)
        self._handle: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._handle = self._loop.call_later(timeout, self._expire)

    def arrived(self) -> None:
        """Data came in: the bound counts from now."""
        self._last = self._loop.time()

    def _expire(self) -> None:
        reader, timeout = self._reader, self._timeout
        assert timeout is not None
        # (StreamReader's buffer, data not read yet: private, and not in typeshed)
        if reader._buffer:  # type: ignore[attr-defined]
            self._handle = self._loop.call_later(timeout, self._expire)  # the loop was late
            return
        left = self._last + timeout - self._loop.time()
        if self._last and left > 0:
            self._handle = self._loop.call_later(left, self._expire)
        else:
            reader.set_exception(TimeoutError())  # the pending read raises it

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def read_replies(reader: asyncio.StreamReader, count: int, deadline: Deadline) -> list[Any]:
    """*count* replies, as fast as they arrive, within *deadline*.

    A failure leaves the reader unusable (an error set in it, replies half
    read): the caller drops the connection."""
    replies: list[Any] = []
    buf, pos = b"", 0
    while True:
        try:
            while len(replies) < count:
                reply, pos = parse(buf, pos)
                if type(reply) is not Push:
                    replies.append(reply)
        except Incomplete:
            pass
        if len(replies) == count:
            while pos < len(buf):  # nothing may follow but push frames
                try:
                    extra, pos = parse(buf, pos)
                except Incomplete:
                    extra = None
                if type(extra) is not Push:
                    raise redis_errors.InvalidResponse("more replies than commands")
            return replies
        chunk = await reader.read(_READ)
        if not chunk:
            raise redis_errors.ConnectionError("Connection closed by server.")
        deadline.arrived()
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
        reader, writer = connection._reader, connection._writer  # redis-py's own streams
        if reader is None or writer is None:
            raise redis_errors.ConnectionError("an unconnected connection")
        wait = connection.socket_timeout
        try:
            await write(writer, packed, wait)
            deadline = Deadline(reader, wait)
            try:
                return await read_replies(reader, count, deadline)
            finally:
                deadline.cancel()
        except TimeoutError as exc:
            raise redis_errors.TimeoutError("Timeout sending or reading a batch") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


async def write(writer: asyncio.StreamWriter, packed: bytes, wait: float | None) -> None:
    """Hand *packed* to the socket; wait (bounded) only if the kernel's buffer is full."""
    try:
        writer.write(packed)
    except (OSError, RuntimeError) as exc:  # RuntimeError: the transport is closed
        raise redis_errors.ConnectionError(f"Error while writing to socket: {exc}") from exc
    if writer.transport.get_write_buffer_size():
        async with asyncio.timeout(wait):
            await writer.drain()
