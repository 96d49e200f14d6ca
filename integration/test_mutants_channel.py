"""The invalidation channel (`_channel.py`) on a real server: closing a
subscription, and a server that hangs up or stops.

Written for the mutation run (.ci/mutation.py, module `channel`); each test
names in its docstring the mutants it kills (ids from `--list`). The frames
themselves are in tests/test_mutants_channel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from tests.contract import eventually
from twotier._channel import Subscription
from twotier.testing import RedisServer

CHANNEL = "ch"


@contextlib.asynccontextmanager
async def subscribed(url: str, timeout: float = 5) -> AsyncIterator[Subscription]:
    """An open subscription to CHANNEL on a connection of redis-py's, closed on exit."""
    pool = aioredis.ConnectionPool.from_url(url)
    connection = pool.make_connection()  # type: ignore[no-untyped-call,unused-ignore]
    subscription = Subscription(connection, CHANNEL, sharded=False, timeout=timeout)
    try:
        await asyncio.wait_for(subscription.open(), 5)
        yield subscription
    finally:
        await subscription.close()
        await pool.disconnect()


async def _ping_for_ever(subscription: Subscription) -> None:
    """Ping until a ping fails: the socket's buffers full, a write timed out."""
    while True:
        await subscription.ping()


async def _subscribers(raw: aioredis.Redis) -> int:
    ((_, count),) = await raw.pubsub_numsub(CHANNEL)
    return int(count)


async def test_closing_a_subscription_ends_its_pending_read_and_leaves_the_channel(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    """The listener's reconnect() closes the subscription while the listening
    task waits on its next frame: that read ends with ConnectionError (the
    loop then subscribes again where the channel is now), the server counts
    no subscriber any more, and the closed subscription can neither read
    nor ping.
    Kills: channel-8016b7 (close() leaves the connection open)."""
    async with subscribed(server.url) as subscription:
        assert await _subscribers(raw) == 1
        assert await raw.publish(CHANNEL, b"before") == 1
        assert await asyncio.wait_for(subscription.next(), 5) == ("message", b"before")
        pending = asyncio.ensure_future(subscription.next())
        await asyncio.sleep(0.01)  # (the read is under way; nothing depends on how far)
        await subscription.close()
        with pytest.raises(redis_errors.ConnectionError):
            await asyncio.wait_for(pending, 5)

        async def left() -> bool:
            return await _subscribers(raw) == 0

        await eventually(left, timeout=5)
        with pytest.raises(redis_errors.ConnectionError):
            await subscription.next()
        with pytest.raises(redis_errors.ConnectionError):
            await subscription.ping()


async def test_a_server_that_drops_the_subscriber_ends_its_read(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    """CLIENT KILL of the subscriber (a restart, an operator, a proxy): the
    read waiting on the next frame raises ConnectionError, the lost link the
    listener reconnects after.
    Kills: channel-0b28fc (the end of the stream read again for ever; in
    tests/test_mutants_channel.py too, without a server)."""
    async with subscribed(server.url) as subscription:
        pending = asyncio.ensure_future(subscription.next())
        await asyncio.sleep(0.01)
        assert await raw.client_kill_filter(_type="pubsub") == 1
        with pytest.raises(redis_errors.ConnectionError, match="closed by server"):
            await asyncio.wait_for(pending, 5)


async def test_closing_a_subscription_to_a_stopped_server_does_not_wait_for_it(
    server: RedisServer,
) -> None:
    """The listener closes its subscription in a `finally`, with no bound, and
    then reconnects: close() must not wait on the server. Here the server is
    stopped (SIGSTOP) and the pings sent to it fill the socket's buffers
    until one times out; close() still returns at once, without waiting for
    the unsent bytes to drain (they never would while the server sleeps).
    Kills: channel-e86cd7 (disconnect(nowait=False): close() waits for the
    socket to be flushed and closed)."""
    async with subscribed(server.url, timeout=0.2) as subscription:
        transport: asyncio.WriteTransport = subscription._connection._writer.transport
        server.pause()
        try:
            with pytest.raises(TimeoutError):
                await _ping_for_ever(subscription)
            assert transport.get_write_buffer_size() > 0  # bytes the server never took
            await asyncio.wait_for(subscription.close(), 10)
        finally:
            server.resume()

        async def flushed() -> bool:
            return transport.is_closing() and transport.get_write_buffer_size() == 0

        await eventually(flushed, timeout=10)  # (so that no socket outlives the test)
