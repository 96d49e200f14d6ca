"""The change path (`_changes.py`) in memory mode: invalidations awaited or not,
from async and from sync code.

Written for the mutation run (.ci/mutation.py, module `changes`); each test
names in its docstring the mutants it kills (ids from `--list`). The Redis
side is in integration/test_mutants_changes.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest

from tests.contract import eventually
from tests.test_events import Recorder
from twotier import MsgpackSerializer, TwoTierCache


def run_on_a_loop_closed_by_hand(work: Coroutine[Any, Any, None]) -> None:
    """*work* on a loop closed without shutting its async generators down, as
    code driving its own loop may do (`_loop_end.py`): what that loop left on
    its way never runs."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(work)
    finally:
        loop.close()


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


# -- the seed's counters of changes -------------------------------------------------


async def test_each_change_counts_once_in_the_stats() -> None:
    """get_stats() keeps the seed manager's counters: one set, one delete, one
    clear each count once, and nothing else.
    Kills: changes-8259f1, changes-e208d8 (sets), changes-bd3226, changes-8050e2
    (deletes), changes-2cb440, changes-c57bac (clears) not counted, or counted down."""
    async with TwoTierCache(namespace=_namespace()) as cache:
        await cache.set("a", 1)
        await cache.set("b", 2)
        await cache.delete("a")
        await cache.clear()
        stats = cache.get_stats()
    assert (stats["sets"], stats["deletes"], stats["clears"]) == (2, 1, 1)


async def test_a_value_over_max_value_size_is_counted_and_kept_here_only() -> None:
    """A value too big for Redis is kept in the writer's L1, counted in
    oversized_values, and announced as a delete: the other instances drop
    their copy of the key's old value.
    Kills: changes-73d59c, changes-e44797 (not counted, counted down),
    changes-d54b79 (counted only when the versions are missing)."""
    namespace = _namespace()
    async with (
        TwoTierCache(namespace=namespace, max_value_size=64) as writer,
        TwoTierCache(namespace=namespace) as other,
    ):
        await other.set("k", "old")
        await writer.set("k", "x" * 1000)
        assert await writer.get("k") == "x" * 1000
        assert await other.get("k") is None  # the old value was dropped there
        assert writer.get_stats()["oversized_values"] == 1
        await writer.set("small", "y")
        assert writer.get_stats()["oversized_values"] == 1  # a value that fits is not


async def test_a_value_of_exactly_max_value_size_is_not_oversized() -> None:
    """max_value_size is the largest payload allowed, not the first refused.
    Kills: changes-284cb7 ('>' -> '>=')."""
    value = "z" * 100
    size = len(MsgpackSerializer().dumps(value))
    async with TwoTierCache(namespace=_namespace(), max_value_size=size) as cache:
        await cache.set("k", value)
        assert cache.get_stats()["oversized_values"] == 0
        await cache.set("k", value + "z")
        assert cache.get_stats()["oversized_values"] == 1


# -- invalidations delivered in the background --------------------------------------


def _background_deliveries() -> list[asyncio.Task[object]]:
    """The tasks delivering un-awaited invalidations (`Invalidation._deliver`)."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Invalidation._deliver"
    ]


async def test_awaiting_an_invalidation_already_on_its_way_waits_for_its_delivery() -> None:
    """Awaited after its background delivery has started, the invalidation
    still returns only once the other instances have it: the await means
    "delivered", whoever sends it.
    Kills: changes-9fa72c (the await returns at once)."""
    namespace = _namespace()
    async with (
        TwoTierCache(namespace=namespace) as writer,
        TwoTierCache(namespace=namespace) as reader,
    ):
        await reader.set("k", "v", tags=["t"])
        assert await reader.get("k") == "v"
        invalidation = writer.invalidate_tag("t")
        await asyncio.sleep(0)  # its background delivery is scheduled, not yet run
        assert _background_deliveries()
        await invalidation
        assert await reader.get("k") is None


async def test_a_background_delivery_cancelled_before_it_ran_is_queued_and_retried() -> None:
    """An application that cancels its tasks (a shutdown handler, a task group)
    may cancel an invalidation's delivery before it ran. The change is queued,
    retried while the cache stays open, and reaches the other instances; the
    invalidation awaited afterwards returns (it does not wait forever).
    Kills: changes-3fb896, changes-3b5d76 (not retried: the others never hear
    of it until close), changes-2875c2, changes-a3fd68, changes-757fea (its
    awaiters never released)."""
    recorder = Recorder()
    namespace = _namespace()
    async with (
        TwoTierCache(namespace=namespace, health_interval=0.02) as writer,
        TwoTierCache(namespace=namespace, observers=[recorder]),
    ):
        invalidation = writer.invalidate_tag("t")
        await asyncio.sleep(0)
        (delivery,) = _background_deliveries()
        delivery.cancel()
        await invalidation  # released, not stuck on a delivery that never comes
        assert delivery.cancelled()

        async def heard() -> bool:
            return recorder.events == [("invalidation", "t", None)]

        await eventually(heard, timeout=5)


@pytest.mark.filterwarnings("ignore:coroutine .Invalidation._deliver. was never awaited")
def test_an_invalidation_left_on_a_closed_loop_does_not_hold_up_the_next_loop() -> None:
    """A hand-driven loop closed without shutting its generators down (see
    `_loop_end.py`) never ran the delivery of its last, un-awaited
    invalidation. The next loop takes the cache over and forgets what was on
    its way on the dead loop: a load of an entry carrying that tag runs, instead
    of waiting forever for a delivery that dead loop will never make.
    Kills: changes-ffcb7d (the dead loop's invalidations kept as unsettled)."""
    cache = TwoTierCache(namespace=_namespace())
    calls: list[int] = []

    @cache.cached(ttl=60, tags=["t"])
    async def load(n: int) -> int:
        calls.append(n)
        return n * 10

    async def first() -> None:
        await cache.start()
        cache.invalidate_tag("t")  # the loop is closed before its delivery starts

    run_on_a_loop_closed_by_hand(first())
    try:
        assert asyncio.run(load(4)) == 40
        assert calls == [4]
    finally:
        cache.close_blocking()
        gc.collect()  # the dead loop's delivery, never run: its warning here, not elsewhere


async def test_a_close_with_nothing_left_to_deliver_warns_of_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Kills: changes-530d28 (a close with every change delivered warns of 0
    changes "Redis never received")."""
    cache = TwoTierCache(namespace=_namespace())
    await cache.set("k", 1)
    await cache.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert cache.get_stats()["dropped_ops"] == 0
