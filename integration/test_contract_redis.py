"""The contract (tests/contract.py) against real servers, under RESP3 and RESP2."""

import pytest

from tests.contract import CacheContract
from twotier import TwoTierCache

from .conftest import CacheFactory


class TestRedisMode(CacheContract):
    @pytest.fixture
    async def trio(self, make_cache: CacheFactory, protocol: int) -> list[TwoTierCache]:
        return [await make_cache(protocol=protocol) for _ in range(3)]  # closed by make_cache
