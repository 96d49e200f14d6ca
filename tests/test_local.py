"""The local tier, including the direct views into cachetools it relies on."""

import uuid

import pytest

from twotier import MISS, MsgpackSerializer, TwoTierCache
from twotier._local import LocalTier, is_immutable
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
    tier.store("m", [1], b"payload", 60, ())
    tier.store("i", (1, "x"), b"payload", 60, ())
    assert tier.get("m") == ("decoded", b"payload")
    assert tier.get("i") == (1, "x")


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


def test_tag_index_frees_evicted_and_invalidated_entries() -> None:
    tier, _ = _tier(maxsize=2)
    tier.store("a", 1, b"", 60, ("x", "y"))
    tier.store("b", 1, b"", 60, ("y",))
    tier.store("c", 1, b"", 60, ("z",))  # evicts "a", whose tag "x" has no entry left
    assert tier.tags == 2
    assert tier.evict_tags(["y", "z"]) == 2
    assert (tier.entries, tier.tags) == (0, 0)


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
