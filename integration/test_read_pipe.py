"""The read pipe under its callers' cancellations (issue 17, cases 5 and 6).

A request timeout cancels a reader at any point. Whatever point that is, the
other readers of the instance get their replies: no lead is lost (else every
later read waits forever), and a cancelled sender costs the others neither an
error nor the circuit breaker. Run on a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from twotier._pipe import ReadPipe, _Lead
from twotier.testing import RedisServer


@pytest.fixture
async def pipe(server: RedisServer) -> AsyncIterator[ReadPipe]:
    pool = aioredis.ConnectionPool.from_url(server.url)
    client = aioredis.Redis(connection_pool=pool)
    await client.set("k", b"v")
    read_pipe = ReadPipe(pool.make_connection, client.get, timeout=2, connect_timeout=2)
    await read_pipe.connect()
    yield read_pipe
    await read_pipe.close()
    await client.aclose()


async def test_a_reader_cancelled_as_it_is_handed_the_lead_passes_it_on(pipe: ReadPipe) -> None:
    first = asyncio.create_task(pipe.get("k"))  # sends at once
    await asyncio.sleep(0)
    second = asyncio.create_task(pipe.get("k"))  # queued behind it
    await asyncio.sleep(0)
    handed: list[Any] = []
    hand_over = pipe._hand_over

    def cancel_the_new_leader() -> None:
        queued = list(pipe._queue)
        hand_over()
        for _, future in queued:
            if future.done() and type(future.result()) is _Lead:
                handed.append(future)
                second.cancel()  # in the very turn it is handed the lead

    pipe._hand_over = cancel_the_new_leader  # type: ignore[method-assign]
    third = asyncio.create_task(pipe.get("k"))
    assert await first == b"v"
    with pytest.raises(asyncio.CancelledError):
        await second
    assert handed, "the lead was never handed to the cancelled reader"
    pipe._hand_over = hand_over  # type: ignore[method-assign]
    # Before the fix the lead died with the second reader: the pipe stayed
    # busy and every later read waited forever.
    assert await asyncio.wait_for(third, 2) == b"v"
    assert await asyncio.wait_for(pipe.get("k"), 2) == b"v"


async def test_a_cancelled_sender_costs_the_other_readers_nothing(pipe: ReadPipe) -> None:
    send = pipe._send
    leaders: list[asyncio.Task[Any]] = []

    async def cancelled_while_reading(names: list[str]) -> list[bytes | None]:
        if len(names) > 1 and not leaders:
            leader = asyncio.current_task()
            assert leader is not None
            leaders.append(leader)
            asyncio.get_running_loop().call_soon(leader.cancel)  # its replies are on the way
        return await send(names)

    pipe._send = cancelled_while_reading  # type: ignore[method-assign]
    first = asyncio.create_task(pipe.get("k"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(pipe.get("k")) for _ in range(3)]
    assert await first == b"v"
    results = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 2)
    assert leaders, "no batch of several reads was sent"
    cancelled = [r for r in results if isinstance(r, asyncio.CancelledError)]
    # Only the cancelled sender itself fails; before the fix the others got
    # ReadAbandoned, a ConnectionError that counts against the server.
    assert len(cancelled) == 1
    assert [r for r in results if not isinstance(r, BaseException)] == [b"v", b"v"]
