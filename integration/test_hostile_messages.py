"""Hostile bytes on the invalidation channel (issue 17, case 4), on a real server.

Anyone who may publish on the namespace's channel can send anything. Whatever
it is, the listener goes on: an unreadable message clears L1 (what it meant
is unknown), an unexpected failure reconnects and resyncs, and changes sent
afterwards still reach every instance. Before the fix, a message whose `sent`
field had 400 digits ended the listener silently (OverflowError): the
instance kept serving stale values for good, with `redis_available` True.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from twotier._redis import Layout
from twotier._tier import Message

from .conftest import CacheFactory
from .test_read_races import _async, eventually

HOSTILE = [
    pytest.param(b"2\x1fk\x1f1\x1fstranger\x1f" + b"9" * 400 + b"\x1fk", id="sent-overflows"),
    pytest.param(b"2\x1ft\x1f1\x1fstranger\x1f0\x1fa\x1f" + b"9" * 5000, id="huge-version"),
    pytest.param(b"2\x1fk\x1f" + b"9" * 5000 + b"\x1fstranger\x1f0\x1fk", id="huge-seq"),
    pytest.param(b"\xff\xfe", id="not-utf8"),
    pytest.param(b"2\x1fq", id="truncated"),
]


@pytest.mark.parametrize("frame", HOSTILE)
async def test_a_hostile_message_does_not_stop_the_listener(
    make_cache: CacheFactory, raw: aioredis.Redis, frame: bytes
) -> None:
    reader, writer = await make_cache(), await make_cache()
    await writer.set("k", "v1")
    assert await reader.get("k") == "v1"
    await raw.publish(Layout("it").channel, frame)
    await asyncio.sleep(0.1)  # let the listener take it
    received = reader.counters.invalidations_received
    await writer.set("k", "v2")
    # The change reaches the reader over the channel: its listener lives on.
    await eventually(lambda: _async(reader.counters.invalidations_received > received))
    assert await reader.get("k") == "v2"
    assert reader.redis_available


@pytest.mark.parametrize(
    "text",
    [
        "2\x1fk\x1f1\x1fo\x1f" + "9" * 400 + "\x1fk",
        "2\x1ft\x1f1\x1fo\x1f0\x1fa\x1f" + "9" * 20,
        "2\x1fk\x1f-1\x1fo\x1f0\x1fk",
        "2\x1fk\x1f\u0661\x1fo\x1f0\x1fk",  # an Arabic-Indic digit: isdigit, not a number
        "2\x1fk",
    ],
)
def test_messages_with_numbers_redis_never_sends_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="message"):
        Message.decode(text)


async def _is(read: object, expected: object) -> bool:
    return await read == expected  # type: ignore[misc]


async def test_any_failure_on_the_way_to_l1_reconnects_and_resyncs(
    make_cache: CacheFactory,
) -> None:
    """Not only hostile bytes: whatever fails while a message is applied (a bug,
    an exception nobody expected) ends in a reconnect and a resync, with L1
    suspended meanwhile, never in a dead listener."""
    reader, writer = await make_cache(), await make_cache()
    listener = reader._link.listener  # type: ignore[union-attr]
    apply = listener._apply
    failures = 0

    def fails_once(message: Message) -> None:
        nonlocal failures
        if not failures:
            failures += 1
            raise RuntimeError("a bug on the way to L1")
        apply(message)

    listener._apply = fails_once
    await writer.set("k", "v1")
    await eventually(lambda: _async(reader.counters.listener_errors == 1))
    await eventually(lambda: _async(reader.redis_available))
    await writer.set("k", "v2")
    assert await reader.get("k") == "v2"
    received = reader.counters.invalidations_received
    await writer.delete("k")
    await eventually(lambda: _async(reader.counters.invalidations_received > received))
    assert await reader.get("k") is None
