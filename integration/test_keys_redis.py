"""Keys on real servers: no literal key can reach a long key's entry (issue 7, item 10);
default keys never merge arguments that compare different (issue 17, case 8)."""

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable

from tests.contract import eventually
from twotier import CachedFunction, TwoTierCache
from twotier._keys import validate_key

# conftest's CacheFactory says the factory returns a cache; it returns an awaitable of one.
CacheFactory = Callable[..., Awaitable[TwoTierCache]]

LONG_KEY = "report:" + "r" * 300
# The hashed form long keys had before issue 7: itself a valid literal key.
CRAFTED = LONG_KEY[:64] + "#" + hashlib.sha256(LONG_KEY.encode()).hexdigest()


async def test_a_long_key_and_its_old_hashed_form_are_two_entries(
    make_cache: CacheFactory,
) -> None:
    writer, reader = await make_cache(), await make_cache()
    await writer.set(LONG_KEY, "long")
    await reader.set(CRAFTED, "crafted")  # would have overwritten the long key's entry
    for cache in (writer, reader):
        assert await cache.get(LONG_KEY) == "long"
        assert await cache.get(CRAFTED) == "crafted"
    # And from Redis itself, not from an L1 that kept its own copy.
    fresh = await make_cache()
    assert await fresh.get(LONG_KEY) == "long"
    assert await fresh.get(CRAFTED) == "crafted"

    await reader.delete(CRAFTED)  # deletes that entry only
    later = await make_cache()  # other L1s learn of the delete asynchronously
    for cache in (reader, later):
        assert await cache.get(CRAFTED) is None
        assert await cache.get(LONG_KEY) == "long"


def _report(cache: TwoTierCache) -> CachedFunction[[str], str]:
    """The same decorated function on *cache* (one qualname, so one key on every instance)."""

    @cache.cached()
    async def report(name: str) -> str:
        return f"computed {len(name)}"

    return report


async def test_a_decorated_long_key_is_not_reachable_by_a_literal_key(
    make_cache: CacheFactory,
) -> None:
    one, two = await make_cache(), await make_cache()
    report_one, report_two = _report(one), _report(two)
    name = "n" * 300
    assert report_one.key(name) == report_two.key(name)
    plain = f"{__name__}._report.<locals>.report({name!r})"  # the key before hashing
    assert len(plain) > 200
    await one.set(plain[:64] + "#" + hashlib.sha256(plain.encode()).hexdigest(), "poison")
    assert await report_two(name) == "computed 300"
    assert await report_one(name) == "computed 300"


async def test_a_long_key_is_reachable_through_its_hashed_form(make_cache: CacheFactory) -> None:
    """`fn.key()` output (the hashed form) names the same entry as the long key."""
    cache, other = await make_cache(), await make_cache()
    await cache.set(LONG_KEY, "value")
    assert await other.get(validate_key(LONG_KEY)) == "value"
    await other.delete(validate_key(LONG_KEY))
    assert await other.get(LONG_KEY) is None

    async def gone_everywhere() -> bool:
        return await cache.get(LONG_KEY) is None

    await eventually(gone_everywhere)


# --- default keys never merge arguments that compare different (issue 17, case 8) ---


@dataclasses.dataclass(frozen=True)
class Report:
    tenant: int = dataclasses.field(repr=False)  # hidden from logs, not from the key
    year: int = 2024


def _revenue(cache: TwoTierCache, loads: list[Report]) -> CachedFunction[[Report], int]:
    """One decorated function on *cache*; the same key on every instance."""

    @cache.cached()
    async def revenue(report: Report) -> int:
        loads.append(report)
        return {1: 100, 2: 200}[report.tenant]

    return revenue


async def test_tenants_hidden_from_repr_get_their_own_entries_across_instances(
    make_cache: CacheFactory,
) -> None:
    """The report: tenant 2 was served tenant 1's revenue, from Redis by another
    instance as much as from L1."""
    one_loads: list[Report] = []
    two_loads: list[Report] = []
    on_one = _revenue(await make_cache(), one_loads)
    on_two = _revenue(await make_cache(), two_loads)
    assert await on_one(Report(1)) == 100
    assert await on_two(Report(2)) == 200  # not an L2 hit on tenant 1's entry
    assert await on_two(Report(1)) == 100  # an L2 hit on it: the key is shared
    assert (one_loads, two_loads) == ([Report(1)], [Report(2)])


def _first(cache: TwoTierCache) -> CachedFunction[[object], str]:
    @cache.cached()
    async def first(items: object) -> str:
        return f"loaded {type(items).__name__}"

    return first


async def test_entries_under_keys_of_the_repr_encoding_are_not_read(
    make_cache: CacheFactory,
) -> None:
    """A rolling deploy shares one Redis with instances of the version before. It
    wrote `f((1,))`'s result under `f([1])`, also the key of `f([1])` then: the
    new keys of such calls are others (`f@2(...)`). Keys of plain scalars did not
    change, so their entries stay warm across the upgrade."""
    old, new = await make_cache(), await make_cache()
    name = f"{__name__}._first.<locals>.first"
    await old.set(f"{name}([1])", "the tuple's result")  # as the version before wrote it
    await old.set(f"{name}({{}})", "the empty set's result")
    await old.set(f"{name}(7)", "seven")
    first = _first(new)
    assert await first([1]) == "loaded list"
    assert await first((1,)) == "loaded tuple"
    assert await first({}) == "loaded dict"
    assert await first(set()) == "loaded set"
    assert await first(7) == "seven"  # an L2 hit on the entry the old version wrote
