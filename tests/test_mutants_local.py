"""The local tier (`_local.py`) on its own, with a clock that moves only when told.

Written for the mutation run (.ci/mutation.py, module `local`); each test
names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import enum

from twotier import MISS
from twotier._local import _SWEEP_AFTER, LocalTier
from twotier.testing import FakeClock


def _tier(maxsize: int = 100) -> tuple[LocalTier, FakeClock]:
    clock = FakeClock()
    return LocalTier(maxsize, clock, lambda data: ("decoded", data)), clock


def test_an_entry_ends_at_the_moment_of_its_expiry() -> None:
    """A ttl of 60 s serves for 60 s, not one tick more.
    Kills: local-e6a97d (`expires <= now` -> `<`)."""
    tier, clock = _tier()
    tier.store("k", 1, b"", 60, ())
    clock.advance(59.5)
    assert tier.get("k") == 1
    clock.advance(0.5)
    assert tier.get("k") is MISS


def test_an_entry_found_current_takes_the_current_stamp() -> None:
    """After an invalidation of another tag, the first hit checks the entry's tags
    and restamps it, so later hits cost one identity test, not a tag lookup each
    (the hit path's promise in LocalTier's docstring).
    Kills: local-a5236a (the entry keeps its old stamp)."""
    tier, _ = _tier()
    tier.store("k", 1, b"", 60, ("a",))
    tier.evict_tags(["b"])
    entry = tier._items["k"]
    assert entry.stamp is not tier._stamp
    assert tier.get("k") == 1
    assert entry.stamp is tier._stamp


def test_a_tag_invalidated_again_and_again_does_not_hold_back_forgetting() -> None:
    """Remembered invalidations stay bounded even when one tag is invalidated over
    and over among many others: it moves to the newest end each time, so the
    sweep's forgetting, which stops at the first invalidation newer than the
    sweep, is not stopped by it at the oldest end.
    Kills: local-527769 (a re-invalidated tag keeps its first place)."""
    tier, _ = _tier(maxsize=10)
    for i in range(10):
        tier.store(f"k{i}", i, b"", 60, (f"t{i}",))
    for i in range(5000):
        tier.evict_tags(["hot", f"elsewhere:{i}"])
    assert len(tier._bumped) <= 2 * _SWEEP_AFTER
    assert all(tier.get(f"k{i}") == i for i in range(10))


def test_a_sweep_of_a_large_l1_ends_before_the_memory_it_bounds_doubles() -> None:
    """With more entries than `_SWEEP_AFTER`, a sweep checks several entries per
    invalidated tag, so the invalidations remembered never reach twice the limit.
    Kills: local-6a10e8 (one entry per tag: the sweep outlasts the bound)."""
    tier, _ = _tier(maxsize=4000)
    for i in range(4000):
        tier.store(f"k{i}", i, b"", 60, (f"t{i}",))
    most = 0
    for i in range(6000):
        tier.evict_tags([f"elsewhere:{i}"])
        most = max(most, len(tier._bumped))
    assert most <= 2 * _SWEEP_AFTER
    assert tier.get("k3999") == 3999


def test_a_sweep_passes_over_untagged_entries_and_entries_gone_since_it_began() -> None:
    """Kills: local-3372db (an entry evicted mid-sweep is dereferenced),
    local-f51f83 (an untagged entry is checked for tags)."""
    tier, _ = _tier(maxsize=3000)
    for i in range(3000):
        tags = (f"t{i}",) if i % 2 else ()
        tier.store(f"k{i}", i, b"", 60, tags)
    for i in range(_SWEEP_AFTER + 1):
        tier.evict_tags([f"elsewhere:{i}"])
    assert tier._sweeping  # a sweep is under way
    tier.evict_keys([f"k{i}" for i in range(3000) if i % 3 == 0])
    tier.evict_tags(["t1"])
    for i in range(5000):
        tier.evict_tags([f"later:{i}"])
    assert tier._sweeping is None or len(tier._sweeping) < 3000
    assert tier.get("k1") is MISS
    assert [tier.get(f"k{i}") for i in (2, 4, 5, 7)] == [2, 4, 5, 7]
    assert tier.get("k3") is MISS


def test_a_sweep_forgets_only_the_invalidations_from_before_it_began() -> None:
    """An entry the sweep already checked, whose tag is invalidated while the
    sweep still runs, stays unusable once the sweep is done.
    Kills: local-24328d (the sweep's end forgets every invalidation)."""
    tier, _ = _tier(maxsize=10)
    for i in range(10):
        tier.store(f"k{i}", i, b"", 60, (f"t{i}",))
    for i in range(_SWEEP_AFTER + 1):  # the last one starts a sweep; it checks k9 at once
        tier.evict_tags([f"elsewhere:{i}"])
    assert tier._sweeping is not None
    assert "k9" not in tier._sweeping
    tier.evict_tags(["t9"])  # after k9 was checked
    while tier._sweeping is not None:
        tier.evict_tags(["another"])
    assert tier.get("k9") is MISS
    assert tier.get("k8") == 8


class _Level(enum.IntEnum):
    LOW = 1


def test_a_set_holding_more_than_plain_immutables_is_decoded_on_each_hit() -> None:
    """Exact types only (copy_plan): an IntEnum member is an int subclass, so a set of
    them is not shallow-copied but decoded from its bytes on every hit.
    Kills: local-f195ce (no plan for such a set: storing it fails)."""
    tier, _ = _tier()
    tier.store("s", {_Level.LOW}, b"payload", 60, ())
    assert tier.get("s") == ("decoded", b"payload")
    tier.store("plain", {1, 2}, b"payload", 60, ())
    assert tier.get("plain") == {1, 2}
