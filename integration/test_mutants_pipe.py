"""The read pipe (`_pipe.py`) on a real server: commands sharing its
connection, a replica's READONLY, a server that hangs, a connection that
drops and is opened again in the background, cancelled readers and commands.

Written for the mutation run (.ci/mutation.py, module `pipe`); each test
names in its docstring the mutants it kills (ids from `--list`). What needs
no server is in tests/test_mutants_pipe.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from tests.contract import eventually
from twotier._batch import command
from twotier._pipe import NOT_READY, ReadPipe
from twotier.testing import RedisServer, free_port

PING = command("PING")
CLIENT_ID = command("CLIENT", "ID")

Fallback = Callable[[str], Awaitable[bytes | None]]


class Pipes:
    """Read pipes on one server, each with the pool and client its fallback uses."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.pool = aioredis.ConnectionPool.from_url(server.url)
        self.client = aioredis.Redis(connection_pool=self.pool)
        self.fallbacks = 0
        self.made: list[ReadPipe] = []

    async def fallback(self, name: str) -> bytes | None:
        self.fallbacks += 1
        return await self.client.get(name)  # type: ignore[no-any-return]

    def new(
        self,
        *,
        timeout: float = 2,
        connect_timeout: float = 2,
        fallback: Fallback | None = None,
        pool: aioredis.ConnectionPool | None = None,
    ) -> ReadPipe:
        pipe = ReadPipe(
            (pool or self.pool).make_connection,
            fallback or self.fallback,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        self.made.append(pipe)
        return pipe

    async def open(self, **options: Any) -> ReadPipe:
        pipe = self.new(**options)
        await pipe.connect()
        return pipe

    async def close(self) -> None:
        self.server.resume()
        for pipe in self.made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pipe.close(), 5)
        await self.client.aclose()
        await self.pool.disconnect()


@pytest.fixture
async def pipes(server: RedisServer) -> AsyncIterator[Pipes]:
    made = Pipes(server)
    await made.client.set("k", b"v")
    await made.client.set("a", b"1")
    await made.client.set("b", b"2")
    await made.client.set("c", b"3")
    yield made
    await made.close()


async def _over_the_pipe(pipe: ReadPipe) -> None:
    """Wait until the pipe's connection is open again and carries reads."""

    async def read_over_the_pipe() -> bool:
        before = pipe.batches
        assert await pipe.get("k") == b"v"
        return pipe.batches > before

    await eventually(read_over_the_pipe, 10)


async def _free(pipe: ReadPipe) -> bool:
    return pipe.free()


async def test_a_replicas_readonly_is_the_commands_reply_and_the_pipe_meets_the_master_again(
    pipes: Pipes,
) -> None:
    """A command that meets READONLY (the master moved: this server is a
    replica now) gets the error as its reply, not raised; the pipe drops
    that connection, and the next one it opens (in the background) is a new
    session on the server, where the write succeeds once it is a master again.
    Kills: pipe-60d697 (the reply lost: AttributeError), pipe-83463e (the
    connection kept), pipe-a25625 (not closed: the same session again)."""
    pipe = await pipes.open()
    assert pipe.free()
    session = await pipe.call(CLIENT_ID)
    await pipes.client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        assert pipe.free()
        reply = await pipe.call(command("SET", "k", "w"))
        assert isinstance(reply, redis_errors.ReadOnlyError)
        assert not pipe.free()  # dropped: opened again in the background
    finally:
        await pipes.client.execute_command("REPLICAOF", "NO", "ONE")
    assert await pipe.get("k") == b"v"
    await eventually(lambda: _free(pipe), 10)
    assert await pipe.call(CLIENT_ID) != session  # a new connection, met again
    assert pipe.free()
    assert await pipe.call(command("SET", "k", "w")) in (b"OK", "OK", True)
    assert await pipes.client.get("k") == b"w"


@pytest.mark.parametrize("failure", ["readonly", "command timeout", "read timeout"])
async def test_a_command_arriving_as_the_connection_drops_is_told_not_ready_at_once(
    pipes: Pipes, failure: str
) -> None:
    """The pipe's connection drops (a replica's READONLY, a command or a
    batch timing out on a hung server) while a read waits behind it: that
    read goes through the pool while the connection is opened again, and a
    command arriving right then is answered NOT_READY at once (its caller
    takes a pool connection), not kept waiting behind the read.
    Kills: pipe-55ba20, pipe-2b3dba (READONLY leaves the pipe ready),
    pipe-f3dda1, pipe-21e6f4 (a failed command leaves it ready), pipe-bc77e3
    (a failed batch leaves it ready)."""
    pipe: ReadPipe

    async def slow_pool(name: str) -> bytes | None:
        # A pool read slow enough that the pipe's connection is back first.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while not pipe.free() and not pipe._ready:
                    await asyncio.sleep(0.01)
        return await pipes.fallback(name)

    pipe = await pipes.open(timeout=0.5, fallback=slow_pool)
    if failure == "readonly":
        await pipes.client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    else:
        pipes.server.pause()
    try:
        assert pipe.free()
        if failure == "read timeout":
            first: Awaitable[Any] = pipe.get("a")
        elif failure == "command timeout":
            first = pipe.call(PING)
        else:
            first = pipe.call(command("SET", "k", "w"))
        queued = asyncio.create_task(pipe.get("k"))  # runs once `first` is in flight
        if failure == "readonly":
            assert isinstance(await first, redis_errors.ReadOnlyError)
        else:
            with pytest.raises(TimeoutError):
                await first
            pipes.server.resume()
        # In the very turn the connection dropped, the queued read not run yet:
        assert await pipe.call_in_turn(PING) is NOT_READY
        assert await asyncio.wait_for(queued, 10) == b"v"
    finally:
        pipes.server.resume()
        if failure == "readonly":
            await pipes.client.execute_command("REPLICAOF", "NO", "ONE")


async def test_a_pipe_never_opened_reads_through_the_pool_and_connects_in_the_background(
    pipes: Pipes,
) -> None:
    """A pipe whose connection was never opened (the tier started while the
    server was down) reads through the pool, opens its connection in the
    background, and then carries the reads itself.
    Kills: pipe-23fd57, pipe-6f293c (a pipe never opened taken for ready, or
    without the flag), pipe-23de15, pipe-461e77 (no reconnect in the
    background), pipe-776b7f (reads alone never reconnect)."""
    pipe = pipes.new()
    assert await pipe.get("k") == b"v"
    assert pipes.fallbacks >= 1
    await _over_the_pipe(pipe)
    assert pipe.free()


async def test_commands_bring_a_dropped_connection_back_without_any_read(pipes: Pipes) -> None:
    """An instance that only writes (or idles) after its connection dropped:
    `free` opens the connection again in the background, and `call_in_turn`
    waits for that reconnect rather than say NOT_READY (its caller would open
    a pool connection: one more per instance after every outage), so the
    commands come back to the pipe with no read.
    Kills: pipe-131aa9 (free() does not reconnect), pipe-4338ae (an open
    idle pipe never free)."""
    pipe = await pipes.open(timeout=0.5)
    assert await pipe.call_in_turn(PING) in (b"PONG", "PONG")
    pipes.server.pause()
    try:
        assert pipe.free()
        with pytest.raises(TimeoutError):
            await pipe.call(PING)
    finally:
        pipes.server.resume()
    assert not pipe.free()  # dropped with the timeout: reconnecting
    assert await pipe.call_in_turn(PING) in (b"PONG", "PONG")
    assert pipes.fallbacks == 0


async def test_a_command_waits_its_turn_behind_a_read_in_flight(pipes: Pipes) -> None:
    """`call_in_turn` while a read is in flight waits for it, then runs on
    the pipe's connection (not NOT_READY), before the reads queued meanwhile.
    Kills: pipe-1c8f79, pipe-14b01d (no turn queued: an error, or a wait for
    ever), pipe-a33dc1 (turns never served), pipe-b8453c (NOT_READY though the
    connection is open)."""
    pipe = await pipes.open()
    first = asyncio.create_task(pipe.get("a"))
    await asyncio.sleep(0)  # sent: the pipe is busy
    assert not pipe.free()
    order: list[str] = []

    async def read(name: str) -> bytes | None:
        value = await pipe.get(name)
        order.append(name)
        return value

    async def ping() -> Any:
        reply = await asyncio.wait_for(pipe.call_in_turn(PING), 5)
        order.append("ping")
        return reply

    pinged = asyncio.create_task(ping())
    await asyncio.sleep(0)
    queued = asyncio.create_task(read("b"))
    assert await pinged in (b"PONG", "PONG")
    assert await first == b"1"
    assert await queued == b"2"
    assert order == ["ping", "b"]
    assert pipes.fallbacks == 0


async def test_a_command_cancelled_while_waiting_its_turn_costs_the_readers_nothing(
    pipes: Pipes,
) -> None:
    """A command waiting for the connection is cancelled (its caller's
    timeout): it raises CancelledError and runs nothing, and the read in
    flight and the one queued behind get their values, in one batch each.
    Kills: pipe-a9e870, pipe-0b6b0f (the connection handed on by a command
    that does not hold it), pipe-342338 (the cancelled command runs anyway)."""
    pipe = await pipes.open()
    pipes.server.pause()
    try:
        first = asyncio.create_task(pipe.get("a"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(pipe.call_in_turn(command("SET", "c", "x")))
        await asyncio.sleep(0)
        queued = asyncio.create_task(pipe.get("b"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        later = asyncio.create_task(pipe.get("c"))
        await asyncio.sleep(0.05)
    finally:
        pipes.server.resume()
    results = await asyncio.wait_for(asyncio.gather(first, queued, later), 5)
    assert results == [b"1", b"2", b"3"]
    assert pipes.fallbacks == 0
    assert pipe.batches == 2  # the read in flight, then the two queued behind it
    assert await pipes.client.get("c") == b"3"


async def test_a_command_cancelled_as_it_is_given_the_turn_passes_the_connection_on(
    pipes: Pipes,
) -> None:
    """A command cancelled in the very turn the connection is handed to it
    hands it on: the pipe does not stay busy for good.
    Kills: pipe-4ece6f."""
    pipe = await pipes.open()
    waiting: asyncio.Task[Any] | None = None

    async def read_then_cancel() -> bytes | None:
        value = await pipe.get("a")  # its end hands the connection to `waiting`
        assert waiting is not None
        waiting.cancel()
        return value

    pipes.server.pause()
    try:
        first = asyncio.create_task(read_then_cancel())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(pipe.call_in_turn(PING))
        await asyncio.sleep(0)
    finally:
        pipes.server.resume()
    assert await first == b"1"
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await asyncio.wait_for(pipe.get("b"), 5) == b"2"
    assert pipe.free()


async def test_a_command_waiting_behind_a_batch_that_fails_is_not_ready(pipes: Pipes) -> None:
    """The batch in flight times out (a hung server) while a command waits
    its turn: the command is told NOT_READY (its caller takes a pool
    connection), and the pipe, idle again, reconnects and reads.
    Kills: pipe-0fe48c (the command run on the dropped connection),
    pipe-d5f953 (the pipe left busy for good)."""
    pipe = await pipes.open(timeout=0.5)
    pipes.server.pause()
    try:
        first = asyncio.create_task(pipe.get("a"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(pipe.call_in_turn(PING))
        with pytest.raises(TimeoutError):
            await first
        assert await asyncio.wait_for(waiting, 5) is NOT_READY
    finally:
        pipes.server.resume()
    assert await asyncio.wait_for(pipe.get("b"), 5) == b"2"
    await _over_the_pipe(pipe)


async def test_a_reader_cancelled_in_the_turn_its_value_arrives_raises_cancelled(
    pipes: Pipes,
) -> None:
    """A queued reader whose value the batch's sender has just handed it,
    cancelled before it runs: it raises CancelledError like any cancelled
    read, and the pipe goes on.
    Kills: pipe-7911d6, pipe-9384d1 (its value taken for a lead)."""
    pipe = await pipes.open()
    victim: asyncio.Task[Any] | None = None

    async def lead_then_cancel() -> bytes | None:
        value = await pipe.get("b")  # sends the batch of "b" and "c"
        assert victim is not None
        victim.cancel()  # its value is set, it has not run since
        return value

    first = asyncio.create_task(pipe.get("a"))  # sends at once
    leader = asyncio.create_task(lead_then_cancel())
    victim = asyncio.create_task(pipe.get("c"))
    assert await first == b"1"
    assert await leader == b"2"
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert pipe.batches == 2
    assert await asyncio.wait_for(pipe.get("k"), 5) == b"v"


async def test_a_failed_batch_fails_its_readers_and_skips_a_cancelled_one(pipes: Pipes) -> None:
    """The batch of queued reads times out (the server hung once it was
    sent): its sender and the other readers get the TimeoutError, one of
    them cancelled meanwhile only its CancelledError; then the pipe recovers.
    Kills: pipe-221924 (a cancelled reader given the error: InvalidStateError),
    pipe-c1229c (the other readers never answered)."""
    pipe = await pipes.open(timeout=0.5)

    async def read_then_hang() -> bytes | None:
        value = await pipe.get("a")  # its end hands the queued reads to `leader`
        pipes.server.pause()
        return value

    try:
        first = asyncio.create_task(read_then_hang())
        await asyncio.sleep(0)
        leader = asyncio.create_task(pipe.get("b"))
        cancelled = asyncio.create_task(pipe.get("c"))
        other = asyncio.create_task(pipe.get("k"))
        assert await first == b"1"
        await asyncio.sleep(0)  # the leader's batch is sent
        cancelled.cancel()
        done, _ = await asyncio.wait([leader, cancelled, other], timeout=10)
        assert len(done) == 3
    finally:
        pipes.server.resume()
    assert cancelled.cancelled()
    assert isinstance(leader.exception(), TimeoutError)
    assert isinstance(other.exception(), TimeoutError)
    await _over_the_pipe(pipe)


async def test_a_command_stuck_writing_to_a_hung_server_fails_within_its_timeout(
    pipes: Pipes,
) -> None:
    """A large command to a hung server fills the socket's buffers: it fails
    with TimeoutError, and dropping the connection does not wait for bytes
    that will never be sent (the pool's connect timeout is unbounded here).
    Kills: pipe-1dfef7."""
    pipe = await pipes.open(timeout=0.5)
    pipes.server.pause()
    try:
        assert pipe.free()
        task = asyncio.create_task(pipe.call(command("SET", "big", b"x" * (64 << 20))))
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the failed command waited for the socket to close"
        assert isinstance(task.exception(), TimeoutError)
    finally:
        pipes.server.resume()
    await _over_the_pipe(pipe)


async def test_a_connect_that_times_out_in_the_handshake_leaves_nothing_half_open(
    pipes: Pipes,
) -> None:
    """The server hangs during the handshake: connect fails within its
    budget, and the next connect meets the server afresh, so the reads get
    their values (not the replies to the first handshake).
    Kills nothing with the installed redis-py, whose connect closes such a
    socket itself (pipe-e20b8e is listed as equivalent); the pipe's own
    disconnect guards older versions, and this test with them."""
    pipe = pipes.new(connect_timeout=0.5)
    pipes.server.pause()
    try:
        with pytest.raises(TimeoutError):
            await pipe.connect()
    finally:
        pipes.server.resume()
    await pipe.connect()
    assert await pipe.get("k") == b"v"
    assert await pipe.get("a") == b"1"
    assert pipe.batches == 2


async def test_the_pools_socket_timeout_does_not_bound_the_pipes_connect(pipes: Pipes) -> None:
    """The pool's socket timeout (here 0.2 s) is not the pipe's: a handshake
    that takes longer, within the pipe's connect budget, succeeds.
    Kills: pipe-1cd9e9."""
    pool = aioredis.ConnectionPool.from_url(pipes.server.url, socket_timeout=0.2)
    try:
        pipe = pipes.new(connect_timeout=10, pool=pool)
        pipes.server.pause()
        try:
            connecting = asyncio.create_task(pipe.connect())
            await asyncio.sleep(1)
        finally:
            pipes.server.resume()
        await asyncio.wait_for(connecting, 10)
        assert await pipe.get("k") == b"v"
        assert pipe.batches == 1
    finally:
        await pool.disconnect()


async def test_closing_a_pipe_that_reconnects_to_a_hung_server_does_not_wait_for_it(
    pipes: Pipes,
) -> None:
    """The pipe is opening its connection again in the background, to a
    server that hangs (within a long connect budget): `close` cancels that
    connect instead of waiting it out.
    Kills: pipe-b6124c."""
    pipe = await pipes.open(timeout=0.5, connect_timeout=60)
    pipes.server.pause()
    try:
        assert pipe.free()
        with pytest.raises(TimeoutError):
            await pipe.call(PING)
        assert not pipe.free()  # opening again, in the background
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(pipe.close())
        done, _ = await asyncio.wait([closing], timeout=10)
        assert done, "close waited for the connect"
    finally:
        pipes.server.resume()


async def _sessions(pipes: Pipes) -> set[int]:
    listing = await pipes.client.client_list()
    return {int(entry["id"]) for entry in listing}


async def test_close_ends_the_pipes_session_on_the_server(pipes: Pipes) -> None:
    """`close` closes the pipe's connection: the server no longer lists it.
    Kills: pipe-b1fd7f (not disconnected), pipe-cb12fd (an open connection
    taken for none)."""
    pipe = await pipes.open()
    session = int(await pipe.call(CLIENT_ID))
    assert session in await _sessions(pipes)
    await pipe.close()

    async def gone() -> bool:
        return session not in await _sessions(pipes)

    await eventually(gone, 10)


async def test_reads_and_commands_arriving_as_the_lead_is_handed_over_wait_their_turn(
    pipes: Pipes,
) -> None:
    """Once the queued reads are handed to a new sender the pipe stays busy:
    a command arriving right then waits its turn (it runs after that batch,
    on the same connection), and every read gets its value, in two batches.
    Kills: pipe-9888e5 (the pipe idle while the handed batch is sent)."""
    pipe = await pipes.open()

    async def read_then_command() -> tuple[bytes | None, Any]:
        value = await pipe.get("a")  # its end hands "b" and "c" to a new sender
        return value, await asyncio.wait_for(pipe.call_in_turn(PING), 5)

    first = asyncio.create_task(read_then_command())
    queued = [asyncio.create_task(pipe.get(name)) for name in ("b", "c")]
    value, reply = await first
    assert value == b"1"
    assert reply in (b"PONG", "PONG")
    assert await asyncio.wait_for(asyncio.gather(*queued), 5) == [b"2", b"3"]
    assert pipe.batches == 2
    assert pipes.fallbacks == 0


async def test_a_read_stuck_writing_to_a_hung_server_fails_within_its_timeout(
    pipes: Pipes,
) -> None:
    """A batch too large for the socket's buffers, to a hung server: it fails
    with TimeoutError, and dropping the connection does not wait for bytes
    that will never be sent; the pipe then recovers.
    Kills: pipe-0f2f61."""
    pipe = await pipes.open(timeout=0.5)
    pipes.server.pause()
    try:
        task = asyncio.create_task(pipe.get("x" * (64 << 20)))
        done, _ = await asyncio.wait([task], timeout=10)
        assert done, "the failed batch waited for the socket to close"
        assert isinstance(task.exception(), TimeoutError)
    finally:
        pipes.server.resume()
    await _over_the_pipe(pipe)
