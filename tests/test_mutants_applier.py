"""How changes are applied to an instance (`_applier.py`), in memory mode.

Written for the mutation run (.ci/mutation.py, module `applier`); each test
names in its docstring the mutants it kills (ids from `--list`). The Redis
side is in integration/test_mutants_applier.py.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.contract import eventually
from twotier import TwoTierCache


async def _true(value: bool) -> bool:
    return value


async def test_a_clear_during_a_load_keeps_its_result_out_of_l1() -> None:
    """The load began before the clear: its caller gets its result, but the next
    call loads again (the result may predate the clear).
    Kills: applier-14435c (a clear does not revoke the loads in flight)."""
    source = {"value": "old"}
    gate = asyncio.Event()
    loads = 0

    async with TwoTierCache(namespace=f"ap{uuid.uuid4().hex[:8]}") as cache:

        @cache.cached(ttl=60, key="k")
        async def value() -> str:
            nonlocal loads
            loads += 1
            result = source["value"]
            await gate.wait()
            return result

        first = asyncio.ensure_future(value())
        await eventually(lambda: _true(loads == 1))
        await cache.clear()
        source["value"] = "new"
        gate.set()
        assert await first == "old"
        assert await value() == "new"
        assert loads == 2
