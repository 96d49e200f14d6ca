"""How changes are applied to an instance (`_applier.py`), in memory mode.

Written for the mutation run (.ci/mutation.py, module `applier`); each test
names in its docstring the mutants it kills (ids from `--list`). The Redis
side is in integration/test_mutants_applier.py.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.contract import eventually
from tests.test_events import Recorder
from twotier import TwoTierCache
from twotier._tier import Message
from twotier._types import MISS


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


async def test_a_hint_evicts_and_holds_and_is_no_invalidation_received() -> None:
    """A hint (`_hints.py`) is not a change: it evicts what it names and holds
    its L2 entries, but no observer hears of an invalidation received.
    Kills: applier-e04451 (the hint taken for a change as well)."""
    recorder = Recorder()
    async with TwoTierCache(namespace=f"ap{uuid.uuid4().hex[:8]}", observers=[recorder]) as cache:
        await cache.set("k", "v")
        cache._applier.apply_message(Message("h", ("k",), "another", 0, ("k",)))
        assert cache.local.get("k") is MISS  # evicted
        assert cache._shared._held("k", ())
        assert recorder.events == []


async def test_the_numbered_change_a_hint_announced_ends_its_hold() -> None:
    """Once the change itself arrives, Redis has it: the entries are judged
    by their versions again, not held until the hold's time runs out.
    Kills: applier-91666d (holds never released by the change)."""
    async with TwoTierCache(namespace=f"ap{uuid.uuid4().hex[:8]}") as cache:
        cache._applier.apply_message(Message("h", ("t",), "another", 0, ("t",)))
        assert cache._shared._held("k", ("t",))
        cache._applier.apply_message(Message("t", ("t",), "another", 7, ("2",)))
        assert not cache._shared._held("k", ("t",))
