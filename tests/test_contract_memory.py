"""The contract (tests/contract.py) in memory mode: L1 plus the in-process bus."""

import uuid
from collections.abc import AsyncIterator

import pytest

from twotier import TwoTierCache

from .contract import CacheContract


class TestMemoryMode(CacheContract):
    @pytest.fixture
    async def trio(self) -> AsyncIterator[list[TwoTierCache]]:
        namespace = f"t{uuid.uuid4().hex[:8]}"  # instances of one test share a hub, tests do not
        caches = [TwoTierCache(namespace=namespace) for _ in range(3)]
        for cache in caches:
            await cache.start()
        yield caches
        for cache in caches:
            await cache.close()
