"""Long keys on real servers: no literal key can reach a long key's entry (issue 7, item 10)."""

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
