"""Fixtures of the server-free suite."""

import uuid
from collections.abc import AsyncIterator, Iterator

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


def unique_namespace() -> str:
    """A namespace no other test uses (memory-mode instances of one namespace share a hub)."""
    return f"u{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cache() -> Iterator[TwoTierCache]:
    """One memory-mode cache, not started (sync callers start it on first use), closed after."""
    made = TwoTierCache(namespace=unique_namespace())
    yield made
    made.close_blocking()
