"""The local tier, including the direct views into cachetools it relies on."""

from twotier import MISS
from twotier._local import LocalTier
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
