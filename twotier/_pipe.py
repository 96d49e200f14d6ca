"""Coalesced L2 reads: concurrent GETs go out together, on a connection of their own.

The auto-pipelining of rueidis and Lettuce, without a background task:

* a read that finds nothing in flight is sent at once, by its caller, which
  reads the reply itself (one caller: one GET, no future, no task switch);
* reads that arrive while a batch is in flight queue up; when the batch's
  replies are in, the caller that sent it hands the queue to the first
  waiter, which sends it as one pipelined write and reads the replies for
  all of them.

So with 50 tasks reading, each round trip carries the reads of the whole last
turn of the event loop, and a lone caller never waits for anyone.

In a cluster there is one pipe per master, each on a connection of its own;
a read its node answers with MOVED (the slot moved) goes through the cluster
client instead, which follows the move.

The connection is the pipe's own (redis-py's pool costs a lock, an event and
its metrics per command), made by the pool's factory so that it meets the
server like any other (`RedisTier.prepare`). Each batch has one deadline
(`_batch.Deadline`): `timeout` without data arriving fails it; the
connection's socket timeout is off.
The replies of a batch are parsed straight out of the bytes as they arrive
(`_batch.read_replies`), not through one parser coroutine per reply: the
connection is nobody else's, so nothing of the stream is lost to the
parser's buffer, whichever parser (pure Python or hiredis) redis-py picked.
A reply that times out drops the connection; until a new one is open
(connected in the background, within the connect budget), reads go through
the pool, so no read waits for a connect it did not need.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions as redis_errors

from ._batch import Deadline, read_replies, write


class _Lead:
    """Handed to a waiting reader: the batch it is now to send."""

    __slots__ = ("batch",)

    def __init__(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        self.batch = batch


class _Retry:
    """Handed to the readers of a batch whose sender was cancelled: its replies
    are lost with the dropped connection, and each of them asks again. A
    caller's own cancellation (a request timeout) is no fault of the server:
    it must cost the others neither an error nor the circuit breaker."""


_RETRY = _Retry()


class _ReadOnly(Exception):
    """A replica's READONLY reply to `ReadPipe.call`, carried to the handler
    that drops the connection before waiting reads may use it."""

    def __init__(self, reply: redis_errors.ReadOnlyError) -> None:
        super().__init__(reply)
        self.reply = reply


NOT_READY = object()  # `call_in_turn`: the pipe's connection is not open
WRONG_TYPE = b""  # the reply for a name holding foreign data (not a string)
MOVED = b"MOVED"  # a marker (compared by identity): the key's slot moved to another node


class ReadPipe:
    def __init__(
        self,
        make_connection: Callable[[], Any],
        fallback: Callable[[str], Awaitable[bytes | None]],
        *,
        timeout: float,
        connect_timeout: float,
        max_batch: int = 512,
    ) -> None:
        self._make_connection = make_connection
        self._fallback = fallback
        self._connecting: asyncio.Task[None] | None = None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_batch = max_batch
        self._connection: Any = None
        self._ready = False  # connected, and met (a connection is "connected" before that)
        self._busy = False
        self._queue: list[tuple[str, asyncio.Future[Any]]] = []
        # Commands waiting for the connection (`call_in_turn`), served before reads.
        self._turns: list[asyncio.Future[None]] = []
        self.batches = 0  # round trips (a stat: reads / batches = coalescing)

    async def get(self, name: str) -> bytes | None:
        if not self._busy:
            self._busy = True
            try:
                return (await self._send([name]))[0]
            finally:
                self._hand_over()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((name, future))
        try:
            result = await future
        except asyncio.CancelledError:
            # Cancelled in the turn after the lead was handed to us: the lead
            # passes on, or the pipe would stay busy for good (issue 17, case 5).
            if future.done() and not future.cancelled() and type(future.result()) is _Lead:
                self._pass_lead(future.result().batch, future)
            raise
        if type(result) is _Lead:
            return await self._lead(result.batch, future)
        if result is _RETRY:
            return await self.get(name)
        return result  # type: ignore[no-any-return]

    def free(self) -> bool:
        """Nothing in flight, and the connection open: `call` may use it now.
        A closed connection is opened again in the background, so commands
        come back to it even when no read does (an instance that only
        writes, or idles, after a server restart)."""
        if self._busy:
            return False
        if self._ready and self._open():
            return True
        self._ready = False
        self._reconnect()
        return False

    def _open(self) -> bool:
        """Connected, and not closed by the server since: a connection the
        server closed (a restart, a failover, `CLIENT KILL`) has its EOF read
        off the socket by the loop already. Used anyway, it failed the first
        command after every outage (the listener's resync, one Redis failure
        counted per instance, and a second subscription: issue 20's storm)."""
        reader = self._connection._reader
        return bool(self._connection.is_connected) and reader is not None and not reader.at_eof()

    async def reopened(self) -> bool:
        """After `free` said no: wait for the reconnect under way, if that is
        why, then say whether the pipe is free. A command that took a pool
        connection instead opened one more connection per instance after
        every outage (issue 20: a fleet's storm of reconnects)."""
        connecting = self._connecting
        if not self._busy and connecting is not None and not connecting.done():
            await asyncio.shield(connecting)
        return self.free()

    async def call(self, packed: bytes) -> Any:
        """One packed command (a script call, a heartbeat) on the pipe's
        connection, which the caller found `free` in this same turn of the
        loop: reads arriving meanwhile queue up behind it as behind a batch.

        This is what keeps an idle instance at one connection for commands
        (issue 20, item 3): changes, claims and the listener's counter reads
        share the socket of the reads instead of holding one of their own;
        only when the pipe is busy does a command take one of the pool.
        Its reply; an error reply as an exception object, not raised. A
        replica's READONLY drops the connection (the master moved): it is
        opened again, and met, on the next read."""
        self._busy = True
        connection = self._connection
        deadline = Deadline(connection._reader, self._timeout)
        try:
            await write(connection._writer, packed, self._timeout)
            (reply,) = await read_replies(connection._reader, 1, deadline)
            if isinstance(reply, redis_errors.ReadOnlyError):
                raise _ReadOnly(reply)
        except _ReadOnly as exc:
            self._ready = False
            await connection.disconnect(nowait=True)
            return exc.reply
        except BaseException:
            self._ready = False
            await connection.disconnect(nowait=True)  # the reply may still be on the way
            raise
        finally:
            deadline.cancel()
            self._hand_over()
        return reply

    async def call_in_turn(self, packed: bytes) -> Any:
        """`call`, once the connection is free: now, or after the batch or
        command in flight (commands go before queued reads). `NOT_READY`
        when the connection is not open: the caller uses another.

        For the background's few commands (heartbeats, the listener's counter
        reads): taking a pool connection whenever they met a read in flight
        kept one more connection open per instance until the next trim."""
        if self.free() or await self.reopened():
            return await self.call(packed)
        if not self._ready:  # the reconnect failed
            return NOT_READY
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # given the turn as we were cancelled
                self._hand_over()
            else:
                self._turns.remove(turn)
            raise
        if not (self._ready and self._connection.is_connected):
            self._hand_over()
            return NOT_READY
        return await self.call(packed)

    async def connect(self) -> None:
        """Open the pipe's connection (raises redis-py's errors)."""
        connection = self._connection = self._connection or self._make_connection()
        if connection.is_connected and not self._open():
            await connection.disconnect(nowait=True)  # closed by the server: a new socket
        connection.socket_timeout = None  # each batch's deadline bounds its reads
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.connect()
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        self._ready = True

    def _reconnect(self) -> None:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect_quietly())

    async def _connect_quietly(self) -> None:
        with contextlib.suppress(redis_errors.RedisError, OSError, TimeoutError):
            await self.connect()  # else the next read tries again

    async def _lead(
        self, batch: list[tuple[str, asyncio.Future[Any]]], own: asyncio.Future[Any]
    ) -> bytes | None:
        mine: bytes | None = None
        try:
            results = await self._send([name for name, _ in batch])
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            for _, future in batch:
                if future is not own and not future.done():
                    if cancelled:
                        future.set_result(_RETRY)
                    else:
                        future.set_exception(exc)
            raise
        finally:
            self._hand_over()
        for (_, future), result in zip(batch, results, strict=True):
            if future is own:
                mine = result
            elif not future.done():
                future.set_result(result)
        return mine

    def _pass_lead(
        self, batch: list[tuple[str, asyncio.Future[Any]]], own: asyncio.Future[Any]
    ) -> None:
        """Give a lead we cannot take up back: the batch's other reads go first."""
        self._queue[:0] = [(name, future) for name, future in batch if future is not own]
        self._hand_over()

    def _hand_over(self) -> None:
        """Pass the connection to a waiting command, or the queued reads to a
        waiting reader, or go idle."""
        while self._turns:
            turn = self._turns.pop(0)
            if not turn.done():
                turn.set_result(None)
                return
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            live = [(name, future) for name, future in batch if not future.done()]
            if live:
                live[0][1].set_result(_Lead(live))
                return
        self._busy = False

    async def _send(self, names: list[str]) -> list[bytes | None]:
        connection = self._connection
        if not self._ready or not connection.is_connected:
            self._ready = False
            self._reconnect()
            return [await self._fallback(name) for name in names]
        self.batches += 1
        reader = connection._reader
        deadline = Deadline(reader, self._timeout)
        try:
            await write(connection._writer, b"".join(map(get_command, names)), self._timeout)
            replies = _replies(await read_replies(reader, len(names), deadline))
        except BaseException:
            self._ready = False
            await connection.disconnect(nowait=True)  # replies may still be on the way
            raise
        finally:
            deadline.cancel()
        # A cluster node that no longer holds a key's slot answers MOVED: those
        # reads go through the client, which follows the move.
        return [
            await self._fallback(name) if reply is MOVED else reply
            for name, reply in zip(names, replies, strict=True)
        ]

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.wait([self._connecting])
        self._ready = False
        if self._connection is not None:
            await self._connection.disconnect()


def get_command(name: str) -> bytes:
    """`GET name`, packed."""
    data = name.encode()
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(data), data)


def _replies(replies: list[Any]) -> list[bytes | None]:
    """GET replies as the tier takes them: WRONGTYPE reads as garbage, MOVED or
    ASK (a cluster node that no longer holds the slot) as `MOVED`, other errors
    raise."""
    for i, reply in enumerate(replies):
        if isinstance(reply, redis_errors.RedisError):  # LOADING is a ConnectionError
            if isinstance(reply, (redis_errors.MovedError, redis_errors.AskError)):
                replies[i] = MOVED
            elif str(reply).startswith("WRONGTYPE"):
                replies[i] = WRONG_TYPE  # GET of a hash or list: not ours, a miss to clean up
            else:
                raise reply
    return replies
