"""The read pipe (`_pipe.py`) with no server: a pipe whose server is not
there, and a fake cluster node that answers MOVED and ASK.

Written for the mutation run (.ci/mutation.py, module `pipe`); each test
names in its docstring the mutants it kills (ids from `--list`). What needs
a real server is in integration/test_mutants_pipe.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from twotier._batch import parse
from twotier._pipe import NOT_READY, ReadPipe, get_command
from twotier.testing import free_port


async def test_connect_raises_when_the_server_is_not_there_and_reads_use_the_pool() -> None:
    """`connect` raises redis-py's error when nothing listens (the tier then
    starts without its pipe); the pipe is not free, commands are told
    NOT_READY, and reads go through the pool.
    Kills: pipe-54df0c (the failure swallowed: connect returns)."""
    pool = aioredis.ConnectionPool.from_url(f"redis://127.0.0.1:{free_port()}/0")
    asked: list[str] = []

    async def pool_read(name: str) -> bytes | None:
        asked.append(name)
        return b"from the pool"

    pipe = ReadPipe(pool.make_connection, pool_read, timeout=1, connect_timeout=1)
    try:
        with pytest.raises(redis_errors.ConnectionError):
            await pipe.connect()
        assert not pipe.free()
        assert await pipe.call_in_turn(get_command("k")) is NOT_READY
        assert await pipe.get("k") == b"from the pool"
        assert asked == ["k"]
        assert pipe.batches == 0
    finally:
        await pipe.close()
        await pool.disconnect()


class _Transport:
    def get_write_buffer_size(self) -> int:
        return 0


class _Writer:
    """Answers each GET written, a turn of the loop later, as the node would."""

    transport = _Transport()

    def __init__(self, node: _Node, reader: asyncio.StreamReader) -> None:
        self.node = node
        self.reader = reader

    def write(self, data: bytes) -> None:
        pos, out = 0, b""
        while pos < len(data):
            (verb, name), pos = parse(data, pos)
            assert verb == b"GET"
            out += self.node.answer(name.decode())
        asyncio.get_running_loop().call_soon(self.reader.feed_data, out)


class _Node:
    """What the pipe uses of a redis-py connection, to a cluster node that
    holds the keys of `values` and answers the others MOVED or ASK."""

    def __init__(self, values: dict[str, bytes], redirect: dict[str, bytes]) -> None:
        self.values = values
        self.redirect = redirect
        self.socket_timeout: float | None = 1.0
        self._reader: Any = None
        self._writer: Any = None

    @property
    def is_connected(self) -> bool:
        return self._reader is not None and self._writer is not None

    async def connect(self) -> None:
        if not self.is_connected:
            self._reader = asyncio.StreamReader()
            self._writer = _Writer(self, self._reader)

    async def disconnect(self, nowait: bool = False) -> None:
        self._reader = self._writer = None

    def answer(self, name: str) -> bytes:
        if name in self.redirect:
            return b"-" + self.redirect[name] + b"\r\n"
        value = self.values[name]
        return b"$%d\r\n%s\r\n" % (len(value), value)


async def test_keys_whose_slot_moved_are_read_through_the_cluster_client() -> None:
    """A node that no longer holds a key's slot answers MOVED (or ASK while
    the slot migrates): those reads, alone or in a batch with the node's own
    keys, go through the fallback (the cluster client, which follows the
    move); the others get the node's values.
    Kills: pipe-8fea97 (the MOVED error returned as the value)."""
    node = _Node(
        {"here": b"1", "also": b"2"},
        {"moved": b"MOVED 3999 127.0.0.1:7001", "asked": b"ASK 3999 127.0.0.1:7001"},
    )
    followed: list[str] = []

    async def cluster_read(name: str) -> bytes | None:
        followed.append(name)
        return b"from " + name.encode()

    pipe = ReadPipe(lambda: node, cluster_read, timeout=5, connect_timeout=5)
    await pipe.connect()
    try:
        assert await pipe.get("moved") == b"from moved"
        first = asyncio.create_task(pipe.get("here"))
        await asyncio.sleep(0)
        batch = [asyncio.create_task(pipe.get(name)) for name in ("moved", "also", "asked")]
        assert await first == b"1"
        assert await asyncio.gather(*batch) == [b"from moved", b"2", b"from asked"]
        assert followed == ["moved", "moved", "asked"]
        assert pipe.batches == 3
        assert pipe.free()  # the node's connection stays: MOVED is no fault of it
    finally:
        await pipe.close()


async def test_closing_a_pipe_never_opened() -> None:
    """A pipe whose connection was never made (the tier closed before any
    read or connect) closes without error.
    Kills: pipe-cb12fd (None taken for a connection to close)."""

    async def pool_read(name: str) -> bytes | None:
        raise AssertionError("no read")

    def make() -> Any:
        raise AssertionError("no connection")

    pipe = ReadPipe(make, pool_read, timeout=1, connect_timeout=1)
    await pipe.close()
    assert pipe.batches == 0
