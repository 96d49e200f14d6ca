"""Nothing accepted is lost at the end of a loop or of the cache (DESIGN §4,
guarantee 11; issue 18, item 2), in memory mode: the seed's un-awaited
`cache.invalidate_tag(...)` as the last statement inside `async with cache:`
or of an `asyncio.run(...)` reaches the other instances. The same against a
real server, each in a process of its own, is in
`integration/test_process_models.py`.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
import warnings

import pytest

from twotier import MISS, TwoTierCache
from twotier._memory import hub_for
from twotier._tier import Message


def unique_namespace() -> str:
    return f"le{uuid.uuid4().hex[:8]}"


def listen(namespace: str) -> list[Message]:
    """What the namespace's in-process bus carries from now on."""
    messages: list[Message] = []
    hub_for(namespace).subscribe(f"spy-{uuid.uuid4().hex}", messages.append)
    return messages


async def test_the_last_statement_inside_async_with_is_delivered() -> None:
    """Before: `close()` began before the delivery, which then raised
    `CacheClosedError` in a task nobody awaited; the observer kept the entry."""
    ns = unique_namespace()
    async with TwoTierCache(namespace=ns) as observer:
        await observer.set("k", "old", tags=["t"])
        messages = listen(ns)
        async with TwoTierCache(namespace=ns) as writer:
            writer.invalidate_tag("t")  # not awaited; the last statement
        assert observer.local.get("k") is MISS
        assert [(m.kind, m.names) for m in messages] == [("t", ("t",))]


@pytest.mark.parametrize("used", [True, False], ids=["used-before", "first-use"])
def test_the_last_statement_of_asyncio_run_is_delivered(used: bool) -> None:
    """Before: `asyncio.run` cancelled the delivery task before its first step."""
    ns = unique_namespace()
    writer = TwoTierCache(namespace=ns)
    messages = listen(ns)

    async def main() -> None:
        if used:
            await writer.get("anything")
        writer.invalidate_tag("t")  # not awaited; the loop's last statement

    asyncio.run(main())
    assert [(m.kind, m.names) for m in messages] == [("t", ("t",))]
    writer.close_blocking()


def test_a_loop_end_closes_nothing_the_next_loop_needs() -> None:
    """The hook ends the loop's link, not the cache: the next `asyncio.run`
    takes the cache over, L1 empty (it heard nothing in between)."""
    cache = TwoTierCache(namespace=unique_namespace())

    async def first() -> None:
        await cache.set("k", 1)
        cache.invalidate_tag("t")

    async def second() -> object:
        peeked = cache.local.get("k")
        return peeked, await cache.get("k", "gone")

    asyncio.run(first())
    assert not cache.closed
    assert asyncio.run(second()) == (MISS, "gone")  # memory mode: no L2 to read it back from
    cache.close_blocking()


def test_a_closed_cache_leaves_no_hook_behind() -> None:
    """Closed on its loop, the cache disarms the hook: nothing runs at the
    loop's end, and no generator is left for a closed loop to finalise."""
    cache = TwoTierCache(namespace=unique_namespace())

    async def main() -> None:
        async with cache:
            await cache.set("k", 1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(main())
        gc.collect()
    assert cache.closed
