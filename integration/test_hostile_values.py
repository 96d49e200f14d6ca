"""Values on a real server: an entry nested too deep is a counted miss, never a crash
(issue 17, case 7); a value has the same type and meaning on a miss, an L1 hit and an
L2 hit, or is refused at `set` (issue 17, case 9)."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import sys
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from tests.test_serialization import REFUSED_LEAVES, TUPLE, identical, nested
from twotier import SerializationError, TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

# conftest's CacheFactory says the factory returns a cache; it returns an awaitable of one.
CacheFactory = Callable[..., Awaitable[TwoTierCache]]
L = Layout("it")  # the Redis names of the tests' namespace

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
ACCEPTED: list[object] = [
    {
        "id": uuid.UUID(int=7),
        "price": decimal.Decimal("19.90"),
        "lines": [{"sku": "A-1", "qty": 2, "dims": (1.5, 2)}],
        "tags": {"new", ("bulk", 10)},
        "frozen": frozenset({frozenset({1}), (2, 3)}),
        (2026, "Q1"): b"\x00\x01",
        None: [float("nan"), -0.0, 2**80, decimal.Decimal("-0E-3"), decimal.Decimal("sNaN")],
    },
    # The second 02:30 of the night Berlin's clocks go back, and its wall time.
    dt.datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1),
    [dt.time(2, 30, fold=1), dt.time(2, 30, tzinfo=BERLIN, fold=1)],
    (
        dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.date(2026, 1, 1),
    ),
    [dt.timedelta(days=-1, microseconds=1), dt.datetime(2026, 1, 1)],
]


# Another process: before the fix, reading the entry killed it with SIGSEGV.
_READER = """
import asyncio, sys
from twotier import TwoTierCache

async def main():
    async with TwoTierCache(redis_url=sys.argv[1], namespace="it") as cache:
        print(await cache.get("hostile", "miss"), cache.get_stats()["garbage_entries"])
        await cache.set("hostile", "written again")
        print(await cache.get("hostile"))

asyncio.run(main())
"""


async def test_an_entry_nested_too_deep_is_a_counted_miss_not_a_crash(
    make_cache: CacheFactory, raw: aioredis.Redis, server: RedisServer
) -> None:
    cache = await make_cache()
    await cache.set("hostile", 1)
    entry = await raw.get(L.entry("hostile"))
    header = entry[: entry.index(b"\x1e") + 1]  # a current header: only the payload is bad
    await raw.set(L.entry("hostile"), header + nested(TUPLE, 10_000))  # 50 KB anyone can write
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _READER,
        server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, f"the reader died ({child.returncode}): {err.decode()[-2000:]}"
    assert out.decode().splitlines() == ["miss 1", "written again"]
    await eventually(lambda: _equals(cache.get("hostile"), "written again"))


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


async def test_a_value_reads_back_the_same_from_every_tier(make_cache: CacheFactory) -> None:
    writer, reader = await make_cache(), await make_cache()
    for n, value in enumerate(ACCEPTED):
        loads = 0

        @writer.cached(ttl=60, key=f"v{n}")
        async def load() -> object:
            nonlocal loads
            loads += 1
            return value  # noqa: B023  # called within this iteration only

        assert identical(await load(), value)  # the miss: the loader's own value
        assert identical(await load(), value)  # an L1 hit
        assert loads == 1
        assert identical(await reader.get(f"v{n}"), value)  # an L2 hit, on another instance
        assert identical(await reader.get(f"v{n}"), value)  # and its L1 hit
        await writer.set(f"s{n}", value)
        assert identical(await writer.get(f"s{n}"), value)
        assert identical(await reader.get(f"s{n}"), value)


async def test_a_refused_value_reaches_neither_tier(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Before: an OrderedDict read back as a dict from L2, a pytz/dateutil zone as a fixed
    offset, a named offset unnamed; a ZoneInfo.from_file datetime was garbage on every read."""
    cache, other = await make_cache(), await make_cache()
    for n, leaf in enumerate([*REFUSED_LEAVES, bytearray(b"x"), memoryview(b"x")]):
        value = leaf if isinstance(leaf, (bytearray, memoryview)) else {"row": [leaf]}
        with pytest.raises(SerializationError):
            await cache.set(f"k{n}", value)

        @cache.cached(ttl=60, key=f"d{n}")
        async def load() -> object:
            return value  # noqa: B023  # called within this iteration only

        with pytest.raises(SerializationError):
            await load()
        for key in (f"k{n}", f"d{n}"):
            assert not await raw.exists(L.entry(key))
            assert await cache.get(key, "absent") == "absent"
            assert await other.get(key, "absent") == "absent"
    assert cache.get_stats()["garbage_entries"] == 0
    assert other.get_stats()["garbage_entries"] == 0
