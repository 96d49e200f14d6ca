"""The read pipe and warmup's lean batches work with every reply parser redis-py
may pick: its pure-Python RESP2 and RESP3 parsers, and hiredis when installed
(redis-py takes hiredis automatically then; the `hiredis` extra installs it).
And with each of twotier's own reply readers (`_batch.new_reader`): large
replies and publishes, and a push frame cut after a batch's last reply."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser

from twotier import _batch, _channel
from twotier._batch import bulk, command, command_head
from twotier._channel import Subscription
from twotier._pipe import WRONG_TYPE, ReadPipe

from .conftest import CacheFactory, RedisServer


def _parser(kind: str, protocol: int) -> type:
    if kind == "hiredis":
        pytest.importorskip("hiredis")
        return _AsyncHiredisParser
    return _AsyncRESP3Parser if protocol == 3 else _AsyncRESP2Parser


@contextlib.asynccontextmanager
async def pool_and_client(
    url: str, **options: Any
) -> AsyncIterator[tuple[aioredis.ConnectionPool, aioredis.Redis]]:
    """A redis-py pool and a client on it, both closed afterwards."""
    pool = aioredis.ConnectionPool.from_url(url, **options)
    client = aioredis.Redis(connection_pool=pool)
    try:
        yield pool, client
    finally:
        await client.aclose()
        await pool.disconnect()


async def block_the_loop() -> None:
    """A CPU-bound handler or a long GC: no callback runs for 0.2 s, while
    replies sent before it arrive."""
    time.sleep(0.2)


@pytest.mark.parametrize("kind", ["python", "hiredis"])
async def test_read_pipe_and_batches_with_each_parser(
    server: RedisServer, protocol: int, kind: str
) -> None:
    parser = _parser(kind, protocol)
    async with pool_and_client(
        server.url, protocol=protocol, parser_class=parser, socket_timeout=2
    ) as (pool, client):

        async def through_pool(name: str) -> bytes | None:
            return await client.get(name)  # type: ignore[no-any-return]

        pipe = ReadPipe(pool.make_connection, through_pool, timeout=2, connect_timeout=2)
        try:
            await client.set("a", b"x" * 100_000)  # a reply longer than one read
            await client.set("b", b"\r\n")
            await client.rpush("l", b"1")
            await pipe.connect()
            assert type(pipe._connection._parser) is parser
            got = await asyncio.gather(*(pipe.get(n) for n in ("a", "missing", "b", "l", "a")))
            assert got == [b"x" * 100_000, None, b"\r\n", WRONG_TYPE, b"x" * 100_000]

            script = "return {tonumber(ARGV[1]), ARGV[2]}"
            sha = await client.script_load(script)
            commands = [
                command_head(5, b"EVALSHA", sha.encode(), b"0") + bulk(b"%d" % i) + bulk(b"v" * i)
                for i in range(0, 3000, 3)
            ]
            commands.append(command_head(2, b"GET") + bulk(b"missing"))
            commands.append(command_head(2, b"GET") + bulk(b"l"))  # an error reply, returned
            replies = await _batch.run(pool, b"".join(commands), len(commands))
            assert replies[:-2] == [[i, b"v" * i] for i in range(0, 3000, 3)]
            assert replies[-2] is None
            assert str(replies[-1]).startswith("WRONGTYPE")
            assert await client.get("b") == b"\r\n"  # the pool's connection is clean afterwards
            await pipe.get("a")
        finally:
            await pipe.close()


async def test_a_deadline_that_passes_as_the_replies_arrive_spoils_no_later_read(
    server: RedisServer,
) -> None:
    """The loop is blocked (a CPU-bound handler, a long GC) past a batch's
    deadline while its reply arrives: the batch's timer and its reply fall in
    one turn of the loop. The reply is served, and the next read, a second
    later, is served too (found by review: the timer's error stayed in the
    connection's reader and failed that later read at once)."""
    async with pool_and_client(server.url) as (pool, client):

        async def through_pool(name: str) -> bytes | None:
            return await client.get(name)  # type: ignore[no-any-return]

        pipe = ReadPipe(pool.make_connection, through_pool, timeout=0.05, connect_timeout=2)
        try:
            await client.set("k", b"v")
            await pipe.connect()
            got, _ = await asyncio.gather(pipe.get("k"), block_the_loop())
            assert got == b"v"
            await asyncio.sleep(0.5)
            assert await pipe.get("k") == b"v"  # not a TimeoutError from the old timer
            await asyncio.sleep(0.5)
            assert await pipe.get("k") == b"v"
        finally:
            await pipe.close()


async def test_a_reply_that_arrives_while_the_loop_is_blocked_past_the_timeout_is_served(
    server: RedisServer,
) -> None:
    """The loop is blocked past a command's timeout while its reply arrives:
    the reply and the timer fall in one turn of the loop. The reply is
    served and the connection stays usable, for the read pipe and for a
    script call alike (a CI run timed out a whole burst of script calls this
    way: `asyncio.timeout` cancelled reads whose replies were in)."""
    async with pool_and_client(server.url, socket_timeout=0.05) as (pool, client):
        connection = pool.make_connection()
        try:
            await client.set("k", b"v")
            await connection.connect()
            get = command_head(2, b"GET") + bulk(b"k")
            got, _ = await asyncio.gather(_batch.run_on(connection, get, 1), block_the_loop())
            assert got == [b"v"]
            assert connection.is_connected  # not dropped as if it had timed out
            assert await _batch.run_on(connection, get, 1) == [b"v"]
        finally:
            await connection.disconnect()


async def test_a_read_with_no_reply_still_times_out(server: RedisServer) -> None:
    """The deadline waits on only while data keeps arriving: a server that
    answers nothing fails the read after the timeout."""
    pool = aioredis.ConnectionPool.from_url(server.url, socket_timeout=0.1)
    connection = pool.make_connection()
    try:
        await connection.connect()
        started = time.monotonic()
        blocking_pop = command_head(3, b"BLPOP", b"nothing") + bulk(b"5")
        with pytest.raises(redis_errors.TimeoutError):
            await _batch.run_on(connection, blocking_pop, 1)
        assert time.monotonic() - started < 4  # not the 5 s the server would take
        assert not connection.is_connected  # dropped: its reply may still come
    finally:
        await connection.disconnect()
        await pool.disconnect()


# Issue 17, cases 10 and 11, on real servers: large replies and publishes, and
# a push frame after a batch's last reply, with each of twotier's own reply
# readers (hiredis', the default when installed, and the hand-written one).


@pytest.fixture(params=["hiredis", "hand-written"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "hiredis":
        pytest.importorskip("hiredis")
    else:
        monkeypatch.setattr(_batch, "new_reader", _batch.Reader)
        monkeypatch.setattr(_batch, "_PUSH", _batch.Push)
        monkeypatch.setattr(_channel, "new_reader", _batch.Reader)
    return str(request.param)


async def test_a_32_mib_entry_is_read_whole_through_the_read_pipe(
    make_cache: CacheFactory, protocol: int, reader: str
) -> None:
    """Issue 17, case 11: a 32 MiB entry took 1.3–2.1 s to read (the buffer
    parsed again on every 64 KiB read). It is written by one instance and
    read from L2 by another, through its read pipe, and by a lean batch."""
    options = {"protocol": protocol, "redis_timeout": 5.0, "max_value_size": 64 << 20}
    writer, other = await make_cache(**options), await make_cache(**options)
    value = os.urandom(32 << 20)
    await writer.set("big", value)
    assert await other.get("big") == value
    assert other.get_stats()["l2_hits"] == 1  # from Redis, not from a message


async def test_a_32_mib_reply_is_read_whole_by_a_lean_batch(
    server: RedisServer, protocol: int, reader: str
) -> None:
    value = os.urandom(32 << 20)
    async with pool_and_client(server.url, protocol=protocol, socket_timeout=5) as (pool, client):
        await client.set("big", value)
        get = command("GET", "big")
        assert await _batch.run(pool, get + command("GET", "missing") + get, 3) == [
            value,
            None,
            value,
        ]
        assert await client.get("missing") is None  # the connection went back in step


async def test_a_large_publish_is_read_whole_by_the_channel(
    server: RedisServer, protocol: int, reader: str
) -> None:
    """Issue 17, case 11: a 24 MiB publish kept the listener busy for 0.85 s."""
    payload = os.urandom(24 << 20)
    async with pool_and_client(server.url, protocol=protocol) as (pool, client):
        subscription = Subscription(pool.make_connection(), "ch", sharded=False, timeout=5)
        try:
            await asyncio.wait_for(subscription.open(), 5)
            assert await client.publish("ch", payload) == 1
            assert await client.publish("ch", b"after") == 1
            assert await asyncio.wait_for(subscription.next(), 10) == ("message", payload)
            assert await asyncio.wait_for(subscription.next(), 5) == ("message", b"after")
            await subscription.ping()
            assert await asyncio.wait_for(subscription.next(), 5) == ("pong", b"")
        finally:
            await subscription.close()


@contextlib.asynccontextmanager
async def cutting_proxy(port: int, marker: bytes, offset: int) -> AsyncIterator[int]:
    """A loopback proxy to *port* that cuts the server's data once: the first
    time *marker* comes, *offset* bytes from its start, the rest following
    50 ms later (as a slow network or a full socket buffer cuts it). Its port."""
    cut = False
    writers: list[asyncio.StreamWriter] = []

    async def forward(source: asyncio.StreamReader, sink: asyncio.StreamWriter, cuts: bool) -> None:
        nonlocal cut
        while data := await source.read(1 << 16):
            at = data.find(marker) if cuts and not cut else -1
            if at >= 0:
                cut = True
                sink.write(data[: at + offset])
                await sink.drain()
                await asyncio.sleep(0.05)
                data = data[at + offset :]
            sink.write(data)
            await sink.drain()
        sink.close()

    async def accept(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        writers.extend((client_w, server_w))
        await asyncio.gather(
            forward(client_r, server_w, cuts=False),
            forward(server_r, client_w, cuts=True),
            return_exceptions=True,
        )

    proxy = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield int(proxy.sockets[0].getsockname()[1])
    finally:
        proxy.close()
        for writer in writers:
            writer.transport.abort()
        await proxy.wait_closed()


INVALIDATE = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"


@pytest.mark.parametrize("offset", [1, 4, 10, 19, 23, len(INVALIDATE) - 1])
async def test_a_push_frame_cut_after_a_batch_s_last_reply_is_read_to_its_end(
    server: RedisServer, reader: str, offset: int
) -> None:
    """Issue 17, case 10, from a real server: with RESP3 client tracking, a
    batch that reads a key and then sets it gets the server's invalidation
    push right after its last reply; cut by the network, it raised "more
    replies than commands" and dropped the connection. Now it is read to its
    end and skipped, and the connection's next batch reads its own reply."""
    async with cutting_proxy(server.port, INVALIDATE, offset) as port:
        url = f"redis://127.0.0.1:{port}/0"
        async with pool_and_client(url, protocol=3, socket_timeout=2) as (pool, _client):
            connection = pool.make_connection()
            try:
                await connection.connect()
                assert await _batch.run_on(connection, command("CLIENT", "TRACKING", "ON"), 1) == [
                    b"OK"
                ]
                get, set_ = command("GET", "k"), command("SET", "k", "x")
                assert await _batch.run_on(connection, get + set_, 2) == [None, b"OK"]
                assert connection.is_connected
                assert connection._reader._buffer == b""  # nothing of the push left
                assert await _batch.run_on(connection, get, 1) == [b"x"]
            finally:
                await connection.disconnect()
