"""Fixtures of the server-free suite."""

import uuid
from collections.abc import AsyncIterator

import pytest

from twotier import TwoTierCache


@pytest.fixture
async def trio() -> AsyncIterator[list[TwoTierCache]]:
    """Three started memory-mode caches, coherent with each other over one in-process hub."""
    namespace = f"t{uuid.uuid4().hex[:8]}"  # instances of one test share a hub, tests do not
    caches = [TwoTierCache(namespace=namespace) for _ in range(3)]
    for cache in caches:
        await cache.start()
    yield caches
    for cache in caches:
        await cache.close()
