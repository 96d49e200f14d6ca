"""The read pipe and warmup's lean batches work with every reply parser redis-py
may pick: its pure-Python RESP2 and RESP3 parsers, and hiredis when installed
(redis-py takes hiredis automatically then; the `hiredis` extra installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser

from twotier import _batch
from twotier._batch import bulk, command_head
from twotier._pipe import WRONG_TYPE, ReadPipe

from .conftest import RedisServer


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
