"""The local tier, including the direct views into cachetools it relies on."""

import gc
import tracemalloc
import uuid
from collections.abc import Callable

import pytest

from twotier import MISS, MsgpackSerializer, TwoTierCache
from twotier._local import _SWEEP_AFTER, LocalTier, is_immutable
from twotier.testing import FakeClock


def _tier(maxsize: int = 3) -> tuple[LocalTier, FakeClock]:
    clock = FakeClock()
    return LocalTier(maxsize, clock, lambda data: ("decoded", data)), clock


def test_fast_views_follow_cachetools() -> None:
    """The hit path reads cachetools' item dict and recency order directly; if a
    cachetools release renames or replaces them, this fails instead of L1 silently
    degrading into a cache that never hits or never evicts the right entry."""
    tier, _ = _tier(maxsize=3)
    for key in "abc":
        tier.store(key, 1, b"", 60, ())
    assert tier.get("a") == 1  # touch: "a" is now the most recent
    tier.store("d", 1, b"", 60, ())  # evicts the least recent: "b"
    assert tier.get("b") is MISS
    assert [k for k in "acd" if tier.get(k) is not MISS] == ["a", "c", "d"]
    assert tier.entries == 3


def test_mutable_values_are_decoded_per_read_immutable_ones_shared() -> None:
    tier, _ = _tier()
    tier.store("m", [[1]], b"payload", 60, ())
    tier.store("i", (1, "x"), b"payload", 60, ())
    assert tier.get("m") == ("decoded", b"payload")
    assert tier.get("i") == (1, "x")


def test_flat_values_are_copied_shallowly_per_read() -> None:
    """A dict or list of immutables is copied, not decoded (tests/test_copy_plans.py)."""
    tier, _ = _tier()
    stored = [1, "a"]
    tier.store("f", stored, b"payload", 60, ())
    first = tier.get("f")
    assert first == [1, "a"]
    assert first is not stored
    assert first is not tier.get("f")


def test_expiry_and_bounded_staleness_cap() -> None:
    tier, clock = _tier()
    tier.store("k", 1, b"", 60, ())
    clock.advance(30)
    tier.cap_expiry(clock() + 5)  # Redis went away: at most 5 s more
    clock.advance(5.1)
    assert tier.get("k") is MISS
    assert tier.entries == 0


def test_suspended_tier_neither_serves_nor_stores() -> None:
    tier, _ = _tier()
    tier.store("k", 1, b"", 60, ())
    tier.suspended = True
    assert tier.get("k") is MISS
    tier.store("j", 1, b"", 60, ())
    tier.suspended = False
    assert tier.get("k") == 1
    assert tier.get("j") is MISS


def test_an_invalidated_tag_makes_its_entries_unusable_at_once() -> None:
    tier, _ = _tier(maxsize=10)
    tier.store("none", 0, b"", 60, ())
    tier.store("one", 1, b"", 60, ("x",))
    tier.store("two", 2, b"", 60, ("y", "x"))
    tier.store("three", 3, b"", 60, ("a", "b", "x"))
    tier.store("other", 4, b"", 60, ("y", "z"))
    assert tier.tags == 5  # x, y, a, b, z
    tier.evict_tags(["x"])
    assert [k for k in ("one", "two", "three") if tier.get(k) is not MISS] == []
    assert (tier.get("none"), tier.get("other")) == (0, 4)  # checked, and still current
    assert len(tier._data) == 2  # the outdated ones were dropped when read
    tier.store("one", 10, b"", 60, ("x",))  # stored after the invalidation: current
    assert tier.get("one") == 10
    tier.evict_tags(["z", "nobody-has-this"])
    assert tier.get("other") is MISS
    assert tier.get("one") == 10


def test_a_tagged_entry_costs_no_index_and_no_tuple() -> None:
    """Issue 8, item 6: with lazy tags an entry's tags are two slots of the entry
    (the caller's tuple is not kept) and nothing is indexed per tag, so a tagged
    entry costs a few slots more than an untagged one. With the tag → keys index
    and the tuple it was 136 B more (354 B against 218 B in `twotier bench`)."""

    n = 20_000
    keys, own = [f"key-{i}" for i in range(n)], [f"user:{i}" for i in range(n)]

    def per_entry(tags_of: Callable[[int], tuple[str, ...]]) -> float:
        tier, _ = _tier(maxsize=n)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                tier.store(keys[i], i, b"", 60, tags_of(i))
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()

    untagged = per_entry(lambda i: ())
    tagged = per_entry(lambda i: (own[i], "users"))
    assert tagged - untagged <= 32, (untagged, tagged)


def test_counting_entries_drops_the_invalidated_ones() -> None:
    tier, _ = _tier(maxsize=10)
    for i in range(6):
        tier.store(f"k{i}", i, b"", 60, ("odd",) if i % 2 else ("even",))
    tier.evict_tags(["odd"])
    assert len(tier._data) == 6  # unusable, not yet dropped
    assert tier.entries == 3  # `get_stats()` counts only usable entries, and frees the rest
    assert len(tier._data) == 3
    assert tier._bumped == {}  # every entry left is newer than what was forgotten
    assert [tier.get(f"k{i}") for i in range(6)] == [0, MISS, 2, MISS, 4, MISS]


def test_remembered_invalidations_are_bounded_by_sweeps() -> None:
    tier, _ = _tier(maxsize=100)
    for i in range(100):
        tier.store(f"k{i}", i, b"", 60, (f"t{i}", "all"))
    for i in range(0, 100, 2):  # half of the entries outdated, never read again
        tier.evict_tags([f"t{i}"])
    for i in range(5000):  # many invalidations of tags no entry carries
        tier.evict_tags([f"elsewhere:{i}"])
    assert len(tier._bumped) <= 2 * _SWEEP_AFTER  # bounded, not 5,050
    assert len(tier._data) == 50  # the sweep dropped the outdated entries
    assert all(tier.get(f"k{i}") == i for i in range(1, 100, 2))
    tier.evict_tags(["all"])
    assert all(tier.get(f"k{i}") is MISS for i in range(100))


def _msgpack_tier() -> LocalTier:
    serializer = MsgpackSerializer()
    return LocalTier(3, FakeClock(), serializer.loads)


@pytest.mark.parametrize(
    "value",
    [
        (1, [2, 3]),  # a tuple is immutable, the list inside it is not
        ("x", {"n": 1}),
        ((1, (2, [3])),),  # nested deeper
    ],
)
def test_a_tuple_holding_a_mutable_value_is_never_shared(value: object) -> None:
    tier = _msgpack_tier()
    tier.store("k", value, MsgpackSerializer().dumps(value), 60, ())
    first = tier.get("k")
    assert first == value
    assert first is not value  # the caller's own object is not kept either
    _mutate_innermost(first)
    assert tier.get("k") == value  # the next reader is not affected
    assert tier.get("k") is not tier.get("k")


def _mutate_innermost(value: object) -> None:
    if isinstance(value, list):
        value.append("mutated")
    elif isinstance(value, dict):
        value["n"] = "mutated"
    else:
        assert isinstance(value, tuple)
        _mutate_innermost(value[-1])


def test_only_values_immutable_all_the_way_down_count_as_immutable() -> None:
    assert is_immutable((1, ("a", b"b", None), frozenset({(1, 2)})))
    for mutable in ((1, [2]), ((1, {}),), ("a", ("b", {3})), [1], {"a": 1}):
        assert not is_immutable(mutable), mutable


async def test_copy_on_read_covers_lists_inside_tuples_in_a_cache() -> None:
    async with TwoTierCache(namespace=f"tl{uuid.uuid4().hex[:8]}") as cache:

        @cache.cached(ttl=60)
        async def pair() -> tuple[int, list[int]]:
            return (1, [2])

        first = await pair()
        first[1].append(99)  # a caller mutating the list inside its result...
        assert await pair() == (1, [2])  # ...does not change what the next caller gets
        await cache.set("k", ("a", ["b"]))
        got = await cache.get("k")
        got[1].append("c")
        assert await cache.get("k") == ("a", ["b"])
