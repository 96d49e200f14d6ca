"""The invalidation channel: one subscription, its frames read straight off the stream.

redis-py's `PubSub` hands each message through a read with its own timeout
context, a retry wrapper, a dict, and a metrics hook; on the receiving side
of an invalidation that was 20 µs of the 50 µs from the bytes' arrival to
L1. Here the connection (redis-py's: it connects, authenticates, speaks
HELLO 3 or RESP2, finds the Sentinel master) is only borrowed for its
streams: the SUBSCRIBE (or, on a cluster's shard channel, SSUBSCRIBE) is
packed by hand, and every frame, the confirmation included, is parsed by
a reply reader of the subscription's own (`_batch.new_reader`: hiredis'
when installed, else the hand-written one), several per read when they
arrive together, and a large one in time linear in its size (issue 17: a
24 MiB publish kept the listener busy for 0.85 s, parsed again from its
start on every read). redis-py's parser never reads this stream, so no
frame can be left in its buffer. A malformed frame raises `InvalidResponse`
(a lost link for the listener).

Frames are returned as (kind, data): "message" (with the payload),
"subscribed", "unsubscribed" (the server dropped a shard channel: its slot
moved), "pong", "counter" (the value `read_counter` asked for) and
"replica" (`check_replica`'s answer: b"up" while the node is a replica in
touch with its master).

Over RESP3 a subscribed connection runs any command (RESP2 allows only PING
and the subscription commands): the listener's idle check reads the change
counter here, one command that proves the link alive and, answered in order
after every message published before it, says exactly whether one was lost
(issue 20: one idle command per interval, not a PING here and a GET on
another connection).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import redis.exceptions as redis_errors

from ._batch import HIREDIS_FAILURES, MORE, command, new_reader, refused, write

_READ = 1 << 16
_KINDS = {
    b"message": "message",
    b"smessage": "message",
    b"subscribe": "subscribed",
    b"ssubscribe": "subscribed",
    b"unsubscribe": "unsubscribed",
    b"sunsubscribe": "unsubscribed",
    b"pong": "pong",
}
Frame = tuple[str, bytes]


class Subscription:
    def __init__(self, connection: Any, channel: str, *, sharded: bool, timeout: float) -> None:
        self._connection = connection
        self._channel = channel
        self._timeout = timeout  # for a write the kernel does not take at once
        self._verb = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._replies = new_reader()
        self._answers: deque[str] = deque()  # the kinds of the answers asked for, in order
        self.frames = 0  # received so far, answers aside (the listener tells an idle link by it)

    @property
    def reads_counter(self) -> bool:
        """Whether `read_counter` can be used: the connection speaks RESP3."""
        return str(getattr(self._connection, "protocol", 2)) == "3"

    async def open(self, owned: str | None = None, *, replica: bool = False) -> None:
        """Connect and subscribe; returns once the server confirmed it (from
        then on no message of the channel is missed). Unbounded: the caller
        bounds it (a paused server accepts connections and never answers).

        *owned*, a key of the channel's slot: first confirm that the node
        holds that slot. A replica, or a master demoted by a failover that a
        lagging slot map still names, takes the SSUBSCRIBE (shard messages
        reach replicas too) but answers a read with MOVED, raised here: the
        listener subscribes again where the slot is (issue 21, item 4).
        The read travels with the SSUBSCRIBE, so it costs no round trip.

        *replica*: the node is meant to be a replica of the channel's master;
        first confirm that it follows its master (`check_replica`), else
        raise: a replica cut off from its master would look idle and in sync
        to every later check of the counter."""
        await self._connection.connect()
        packed = command(self._verb, self._channel)
        if owned is not None:
            self._answers.append("counter")
            packed = command("GET", owned) + packed
        if replica:
            self._answers.appendleft("replica")
            packed = command("INFO", "replication") + packed
        await self._send(packed)
        while (frame := await self.next()) != ("subscribed", b""):
            if frame[0] == "replica" and frame[1] != b"up":
                raise not_following(frame[1])

    async def next(self) -> Frame:
        """The next frame. Unbounded: the caller keeps the idle deadline (one
        timer for many frames, not a timeout context per read). Cancelling
        it loses nothing: what was read stays buffered for the next call."""
        while True:
            try:
                reply = self._replies.gets()
            except HIREDIS_FAILURES as exc:
                raise refused(exc) from exc
            if reply is MORE:
                await self._read()
                continue
            if self._answers and not isinstance(reply, list):  # not a push
                kind = self._answers.popleft()
                return (kind, _counter(reply) if kind == "counter" else _replica_state(reply))
            frame = _frame(reply)
            if frame is not None:
                if frame[0] != "pong":  # the answer to our own ping is not traffic
                    self.frames += 1
                return frame

    async def _read(self) -> None:
        reader = self._connection._reader
        if reader is None:
            raise redis_errors.ConnectionError("the subscription's connection is closed")
        chunk = await reader.read(_READ)
        if not chunk:
            raise redis_errors.ConnectionError("Connection closed by server.")
        self._replies.feed(chunk)

    async def ping(self) -> None:
        """Ask for a "pong" frame (proof that the link is alive)."""
        await self._send(command("PING"))

    async def read_counter(self, key: str) -> None:
        """Ask for a "counter" frame: the value of *key* (the change counter,
        in the channel's slot), read after every message published before it
        was delivered here. RESP3 only (`reads_counter`)."""
        self._answers.append("counter")
        await self._send(command("GET", key))

    async def check_replica(self) -> None:
        """Ask for a "replica" frame: whether the node still follows a master
        (`INFO replication`). A replica cut off from its master, or promoted,
        hears no more of the master's changes, and its counter stops with
        them: the counter read alone would find nothing missed. RESP3 only."""
        self._answers.append("replica")
        await self._send(command("INFO", "replication"))

    async def _send(self, packed: bytes) -> None:
        writer = self._connection._writer
        if writer is None:
            raise redis_errors.ConnectionError("the subscription's connection is closed")
        await write(writer, packed, self._timeout)

    async def close(self) -> None:
        await self._connection.disconnect(nowait=True)


def _counter(reply: Any) -> bytes:
    """The counter's value from a GET's reply: b"0" for none, and for foreign
    data under its name (the listener then resyncs, as for a flush); any other
    error is raised (MOVED: the node no longer holds the channel's slot)."""
    if isinstance(reply, bytes):
        return reply
    if reply is None or (
        isinstance(reply, redis_errors.ResponseError) and str(reply).startswith("WRONGTYPE")
    ):
        return b"0"
    if isinstance(reply, redis_errors.RedisError):
        raise reply
    raise redis_errors.InvalidResponse(f"unexpected reply to the counter read: {reply!r}")


def not_following(state: bytes) -> redis_errors.ConnectionError:
    """The error for a replica that hears no more of its master's changes."""
    return redis_errors.ConnectionError(
        f"the replica no longer follows its master ({state.decode(errors='replace')})"
    )


def _replica_state(reply: Any) -> bytes:
    """b"up" for a replica whose link to its master is up; else its role and
    link state, e.g. b"master", b"slave/down"."""
    if isinstance(reply, redis_errors.RedisError):
        raise reply
    if not isinstance(reply, (bytes, str)):
        raise redis_errors.InvalidResponse(f"unexpected reply to INFO replication: {reply!r}")
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    role, link = fields.get("role", "?").strip(), fields.get("master_link_status", "").strip()
    return b"up" if role == "slave" and link == "up" else f"{role}/{link}".encode()


def _frame(reply: Any) -> Frame | None:
    """A frame of the subscription as (kind, data); None for one it ignores."""
    if isinstance(reply, redis_errors.RedisError):
        raise reply  # e.g. NOPERM: the ACL forbids the channel; LOADING
    if reply == b"PONG":  # RESP3 answers PING with a simple string, even here
        return ("pong", b"")
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], bytes):
        return None
    kind = _KINDS.get(reply[0].lower())
    if kind == "message" and len(reply) >= 3 and isinstance(reply[2], bytes):
        return (kind, reply[2])
    if kind is None or kind == "message":
        return None
    return (kind, b"")
