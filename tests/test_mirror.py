"""The version mirror's loads: coalesced while one is in flight, never joined in flight.

The fetch stands in for `versions.lua`: it reads the versions when it is sent
(as Redis runs the script), and its reply arrives when the test opens a gate.
"""

from __future__ import annotations

import asyncio

import pytest

from twotier._exceptions import BackendError
from twotier._mirror import VersionMirror


class FakeRedis:
    def __init__(self) -> None:
        self.generation = "g1"
        self.versions: dict[str, int] = {}
        self.sent: list[tuple[str, ...]] = []  # the tags of each fetch, as sent
        self.gate = asyncio.Event()
        self.failure: Exception | None = None

    async def fetch(self, tags: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        self.sent.append(tags)
        reply = self.generation, tuple(str(self.versions.get(tag, 0)) for tag in tags)
        await self.gate.wait()  # the gate of its time: opened by `answer()`
        if self.failure is not None:
            raise self.failure
        return reply

    def answer(self) -> None:
        """The fetches sent so far get their replies; later ones wait again."""
        self.gate.set()
        self.gate = asyncio.Event()


async def until_sent(redis: FakeRedis, count: int) -> None:
    """Let the loop run until *count* fetches have been sent."""
    for _ in range(100):
        if len(redis.sent) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(redis.sent)} fetches sent, not {count}")


def trusted_mirror(redis: FakeRedis) -> VersionMirror:
    mirror = VersionMirror(redis.fetch)
    mirror.trusted = True
    return mirror


async def test_a_burst_of_loads_costs_two_fetches_and_each_caller_gets_its_own_tags() -> None:
    redis = FakeRedis()
    redis.versions = {f"t{i}": i for i in range(100)}
    mirror = trusted_mirror(redis)
    first = asyncio.ensure_future(mirror.current(()))
    await asyncio.sleep(0)  # sent, waiting at the gate
    burst = [asyncio.ensure_future(mirror.current((f"t{i}", "t0"))) for i in range(100)]
    await asyncio.sleep(0)
    redis.answer()
    assert await first == ("g1", ())
    await until_sent(redis, 2)
    redis.answer()
    results = await asyncio.gather(*burst)
    assert results == [("g1", (str(i), "0")) for i in range(100)]
    assert len(redis.sent) == 2  # the first, then every tag asked for meanwhile at once
    assert sorted(redis.sent[1]) == sorted(f"t{i}" for i in range(100))
    assert mirror.loads == 2


async def test_a_load_asked_for_during_a_fetch_sees_a_change_made_after_it_was_sent() -> None:
    """Joining the fetch in flight would answer with versions read before the
    caller began: an invalidation it saw complete would not count."""
    redis = FakeRedis()
    redis.versions = {"a": 1}
    mirror = VersionMirror(redis.fetch)  # not trusted: every judgement asks Redis
    early = asyncio.ensure_future(mirror.current(("a",)))
    await asyncio.sleep(0)
    redis.versions["a"] = 2  # another instance's invalidation completes
    late = asyncio.ensure_future(mirror.current(("a",)))
    await asyncio.sleep(0)
    redis.answer()
    assert await early == ("g1", ("1",))
    await until_sent(redis, 2)
    redis.answer()
    assert await late == ("g1", ("2",))


async def test_a_queued_load_whose_sender_is_cancelled_still_answers_the_others() -> None:
    redis = FakeRedis()
    mirror = trusted_mirror(redis)
    first = asyncio.ensure_future(mirror.current(("a",)))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(mirror.current(("b",))) for _ in range(3)]
    await asyncio.sleep(0)
    redis.answer()
    await first
    await until_sent(redis, 2)  # the first queued caller woke and sent the shared fetch
    queued[0].cancel()
    await until_sent(redis, 3)  # the others fetch for themselves
    redis.answer()
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [("g1", ("0",))] * 2


async def test_a_failed_shared_fetch_fails_every_caller_of_it() -> None:
    redis = FakeRedis()
    mirror = trusted_mirror(redis)
    first = asyncio.ensure_future(mirror.current(("a",)))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(mirror.current((f"t{i}",))) for i in range(3)]
    await asyncio.sleep(0)
    redis.failure = BackendError("Redis is away")
    redis.answer()
    with pytest.raises(BackendError):
        await first
    await until_sent(redis, 2)
    redis.answer()
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(result, BackendError) for result in results)
    assert len(redis.sent) == 2


async def test_a_bump_during_a_shared_fetch_is_merged_into_every_callers_answer() -> None:
    redis = FakeRedis()
    redis.versions = {"a": 5}
    mirror = trusted_mirror(redis)
    first = asyncio.ensure_future(mirror.current(()))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(mirror.current(("a",))) for _ in range(2)]
    await asyncio.sleep(0)
    redis.answer()
    await first
    await until_sent(redis, 2)  # the shared fetch is sent: it read version 5
    mirror.bumped([("a", "7")])  # an invalidation's message arrives before its reply
    redis.answer()
    assert await asyncio.gather(*queued) == [("g1", ("7",))] * 2
    assert await mirror.current(("a",)) == ("g1", ("7",))  # remembered, merged
    assert len(redis.sent) == 2
