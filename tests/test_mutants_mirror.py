"""The version mirror (`_mirror.py`) on its own, against the fake Redis of
tests/test_mirror.py.

Written for the mutation run (.ci/mutation.py, module `mirror`); each test
names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.test_mirror import FakeRedis, envelope, trusted_mirror, until_sent
from twotier._exceptions import BackendError
from twotier._mirror import VersionMirror


async def _current(mirror: VersionMirror, redis: FakeRedis, tags: tuple[str, ...]) -> object:
    """mirror.current(tags), its fetch (if any) answered at once."""
    task = asyncio.ensure_future(mirror.current(tags))
    for _ in range(10):
        await asyncio.sleep(0)
        redis.answer()
    return await task


async def test_a_mirror_not_yet_trusted_remembers_nothing() -> None:
    """Before the listener is subscribed and in sync, a change could pass unseen:
    every version is asked of Redis, and none is kept.
    Kills: mirror-d40dbc (a new mirror trusted from the start)."""
    redis = FakeRedis()
    redis.versions = {"a": 5}
    mirror = VersionMirror(redis.fetch)
    assert await _current(mirror, redis, ("a",)) == ("g1", ("5",))
    redis.versions["a"] = 6  # a change no message told the mirror of
    assert await _current(mirror, redis, ("a",)) == ("g1", ("6",))
    assert len(redis.sent) == 2
    assert len(mirror) == 0
    assert mirror.judge(envelope("g1", a="6")) is None


async def test_the_mirror_counts_what_it_remembers_and_forgets_all_past_its_limit() -> None:
    """Up to its limit it keeps every version; one more, and it starts afresh.
    Kills: mirror-ecc5aa (len() broken), mirror-b4b756 (`>` -> `>=` at the limit),
    mirror-1600b4 (never forgets)."""
    redis = FakeRedis()
    redis.versions = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    mirror = VersionMirror(redis.fetch, limit=3)
    mirror.trusted = True
    await _current(mirror, redis, ("a", "b"))
    assert len(mirror) == 2
    await _current(mirror, redis, ("c",))  # 3: at the limit, all kept
    assert len(mirror) == 3
    assert mirror.judge(envelope("g1", a="1", c="3")) is True
    await _current(mirror, redis, ("d", "e"))  # 5 > 3: the old ones are forgotten
    assert len(mirror) == 2
    assert mirror.judge(envelope("g1", a="1")) is None  # unknown again
    assert mirror.judge(envelope("g1", d="4", e="5")) is True


async def test_a_trusted_mirror_answers_known_versions_without_redis() -> None:
    redis = FakeRedis()
    redis.versions = {"a": 1}
    mirror = trusted_mirror(redis)
    assert await _current(mirror, redis, ("a",)) == ("g1", ("1",))
    assert await _current(mirror, redis, ("a",)) == ("g1", ("1",))
    assert len(redis.sent) == 1


async def test_a_namespace_cleared_during_every_version_load_is_an_error() -> None:
    """Each reply predates a clear the mirror has applied since: after three
    tries the read gives up with BackendError (a miss for the caller), never
    with versions of a generation that is gone.
    Kills: mirror-291ba8 (the error not raised)."""
    redis = FakeRedis()
    redis.versions = {"a": 1}
    mirror = trusted_mirror(redis)
    task = asyncio.ensure_future(mirror.current(("a",)))
    for attempt in range(3):
        await until_sent(redis, attempt + 1)
        mirror.cleared(f"g{attempt + 10}")  # the reply on its way still says g1
        redis.answer()
    with pytest.raises(BackendError, match="cleared during every version load"):
        await task


async def test_a_reply_from_a_generation_no_message_announced_yet_voids_the_old_versions() -> None:
    """Redis was cleared and its announcement is still on its way: the first reply
    from the new generation makes every version of the old one unknown, so an
    entry of the new generation is not judged by them.
    Kills: mirror-911b79 (the old generation's versions kept)."""
    redis = FakeRedis()
    redis.versions = {"a": 5, "b": 1}
    mirror = trusted_mirror(redis)
    await _current(mirror, redis, ("a",))
    assert mirror.judge(envelope("g1", a="5")) is True
    redis.generation, redis.versions = "g2", {}
    assert await _current(mirror, redis, ("b",)) == ("g2", ("0",))
    assert mirror.generation == "g2"
    assert mirror.judge(envelope("g2", a="0")) is None  # a: not known in g2 yet
    assert mirror.judge(envelope("g2", b="0")) is True


async def test_a_compacted_tag_is_no_longer_known() -> None:
    """Compaction dropped `a`'s version in Redis (it reads as 0 again): the mirror
    forgets its copy, and asks again.
    Kills: mirror-a45096 (the version kept)."""
    redis = FakeRedis()
    redis.versions = {"a": 5}
    mirror = trusted_mirror(redis)
    await _current(mirror, redis, ("a",))
    del redis.versions["a"]
    mirror.dropped(["a"])
    assert mirror.judge(envelope("g1", a="5")) is None
    assert await _current(mirror, redis, ("a",)) == ("g1", ("0",))


async def test_a_load_in_flight_when_its_tag_is_compacted_does_not_remember_it() -> None:
    """The reply was read before the drop: its version of `a` is returned to the
    caller but not remembered.
    Kills: mirror-b3e170 (`in` -> `not in`), mirror-dc04a5 (the drop not recorded)."""
    redis = FakeRedis()
    redis.versions = {"a": 5, "b": 1}
    mirror = trusted_mirror(redis)
    task = asyncio.ensure_future(mirror.current(("a", "b")))
    await until_sent(redis, 1)
    del redis.versions["a"]
    mirror.dropped(["a"])
    redis.answer()
    assert await task == ("g1", ("5", "1"))
    assert mirror.judge(envelope("g1", a="5")) is None
    assert mirror.judge(envelope("g1", b="1")) is True


async def test_a_clear_during_a_load_makes_an_earlier_drop_moot() -> None:
    """Drop, then clear, while a load read on the new generation is in flight: its
    reply holds for the new generation, `a` included, and is remembered.
    Kills: mirror-d46731 (the drop still skips `a`)."""
    redis = FakeRedis()
    redis.generation, redis.versions = "g2", {}  # cleared; the messages are on their way
    mirror = trusted_mirror(redis)
    task = asyncio.ensure_future(mirror.current(("a",)))
    await until_sent(redis, 1)
    mirror.dropped(["a"])
    mirror.cleared("g2")
    redis.answer()
    assert await task == ("g2", ("0",))
    assert mirror.judge(envelope("g2", a="0")) is True


async def test_after_a_reset_even_an_untagged_entry_is_not_judged_by_the_old_generation() -> None:
    """A reset (a resync that could not replay what it missed, maybe a clear)
    forgets the generation too: an entry without tags is then not judged current
    until a version load has learnt the generation again.
    Kills: mirror-a77ad1 (the generation kept)."""
    redis = FakeRedis()
    mirror = trusted_mirror(redis)
    await _current(mirror, redis, ("a",))
    assert mirror.judge(envelope("g1")) is True
    redis.generation = "g2"  # the clear the resync could not replay
    mirror.reset()
    assert mirror.judge(envelope("g1")) is None
    await _current(mirror, redis, ())
    assert mirror.judge(envelope("g1")) is False
