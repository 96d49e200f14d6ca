"""The change path (`_changes.py`) in memory mode: invalidations awaited or not,
from async and from sync code.

Written for the mutation run (.ci/mutation.py, module `changes`); each test
names in its docstring the mutants it kills (ids from `--list`). The Redis
side is in integration/test_mutants_changes.py.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.test_events import Recorder
from twotier import TwoTierCache


def _namespace() -> str:
    return f"ch{uuid.uuid4().hex[:8]}"


async def _turns(count: int = 20) -> None:
    """Let the loop run *count* turns (background deliveries, callbacks)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_an_invalidation_awaited_at_once_is_delivered_once() -> None:
    """Awaited in the turn it was made, the invalidation is sent by the awaiting
    caller, and the background delivery scheduled for the un-awaited case then
    does nothing: the other instances hear of it once.
    Kills: changes-23a60a (the background delivery sends it again)."""
    recorder = Recorder()
    namespace = _namespace()
    async with (
        TwoTierCache(namespace=namespace) as writer,
        TwoTierCache(namespace=namespace, observers=[recorder]) as reader,
    ):
        await writer.invalidate_tag("t")
        await _turns()
        assert recorder.events == [("invalidation", "t", None)]
        assert reader.get_stats()["tag_invalidations"] == 0  # it made none itself


async def test_an_invalidation_not_awaited_is_delivered_once_in_the_background() -> None:
    """Kills: changes-1d8deb, changes-d7952d (the background delivery not marked
    started: awaiting the invalidation afterwards sends it again)."""
    recorder = Recorder()
    namespace = _namespace()
    async with (
        TwoTierCache(namespace=namespace) as writer,
        TwoTierCache(namespace=namespace, observers=[recorder]),
    ):
        invalidation = writer.invalidate_tag("t")  # the seed's style: not awaited
        await _turns()
        assert recorder.events == [("invalidation", "t", None)]
        await invalidation  # awaited after its background delivery: nothing more is sent
        await _turns()
        assert recorder.events == [("invalidation", "t", None)]


def test_an_invalidation_made_from_sync_code_is_done_and_can_still_be_awaited() -> None:
    """From code without a running loop, invalidate_tag returns once the change is
    delivered; the Invalidation it returns can be awaited later (it is done).
    Kills: changes-cfe714 (its future left unset)."""
    cache = TwoTierCache(namespace=_namespace())
    try:
        invalidation = cache.invalidate_tag("t")

        async def later() -> None:
            await invalidation

        asyncio.run(later())
        assert cache.get_stats()["tag_invalidations"] == 1
    finally:
        cache.close_blocking()
