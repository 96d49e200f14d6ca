"""What twotier logs when Redis misbehaves, against a real server (issue 18,
item 7): every record says its instance (and, as every record does, its pid),
and no message ends in an empty cause — a bare `TimeoutError()` from one of
the client's own deadlines once logged "Redis did not answer in time: "."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from twotier import TwoTierCache
from twotier.testing import RedisServer

from .conftest import FLAVOURS

WAIT = 20.0
EMPTY_CAUSE = re.compile(r":\s*(\)|;|$)")  # "...: )", "...: ;", a message ending in ":"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("twotier")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(saved)


async def test_a_hung_server_is_logged_with_causes(records: Records) -> None:
    """The server stops answering (SIGSTOP) while the cache runs: the
    listener's health ping, then its subscription's deadline, pass without a
    reply. Each is logged with its cause; the instance is on every record."""
    with RedisServer.start(FLAVOURS[0]) as server:
        cache = TwoTierCache(
            redis_url=server.url,
            namespace=f"lg{uuid.uuid4().hex[:8]}",
            redis_timeout=0.05,
            connect_timeout=0.1,
            health_interval=0.1,
        )
        async with cache:
            server.pause()
            try:
                deadline = time.monotonic() + WAIT
                while sum("did not answer" in r.getMessage() for r in records.records) < 2:
                    assert time.monotonic() < deadline, [r.getMessage() for r in records.records]
                    await cache.get("k")  # the data path fails too: the breaker opens
                    await asyncio.sleep(0.05)
            finally:
                server.resume()
    messages = [r.getMessage() for r in records.records]
    assert messages
    for record, message in zip(records.records, messages, strict=True):
        assert not EMPTY_CAUSE.search(message), message
        assert record.instance == cache.instance_id  # type: ignore[attr-defined]
        assert record.process == os.getpid()
