"""In-flight loads (twotier/_flights.py): single flight per key, and the guard that
keeps a load's result out of L1 once its key, one of its tags, or everything was
invalidated while it ran. First `Flights` and `Flight` on their own, then the same
races through a memory-mode cache (the `trio` fixture of tests/conftest.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

import pytest

from tests.contract import SlowSource, eventually
from twotier import TwoTierCache
from twotier._flights import Flight, Flights

# -- Flights: the registry ----------------------------------------------------------


def test_a_flight_is_joined_until_it_ends() -> None:
    flights = Flights()
    flight = flights.begin("k", ("t",))
    assert flights.join("k") is flight
    assert flights.join("other") is None
    flights.end(flight)
    assert flights.join("k") is None


def test_the_end_of_an_outdated_flight_leaves_its_successor_registered() -> None:
    flights = Flights()
    old = flights.begin("k", ())
    flights.invalidate_keys(["k"])
    new = flights.begin("k", ())  # a caller after the invalidation loads afresh
    flights.end(old)  # the old load finishes later
    assert flights.join("k") is new


def test_invalidating_keys_marks_and_unregisters_only_those_flights() -> None:
    flights = Flights()
    hit, also, spared = (flights.begin(k, ()) for k in ("a", "b", "c"))
    flights.invalidate_keys(["a", "b", "absent"])
    assert (hit.invalidated, also.invalidated, spared.invalidated) == (True, True, False)
    assert (flights.join("a"), flights.join("b"), flights.join("c")) == (None, None, spared)


@pytest.mark.parametrize(
    ("flight_tags", "invalidated"),
    [
        (("a",), ["b", "a"]),  # matched by the second invalidated tag
        (("x", "b"), ["b"]),  # through the flight's second tag
        (("x", "b"), ["a", "b"]),  # second tag on both sides
        (("x", "y", "z"), ["q", "r", "z"]),  # last tag on both sides
    ],
)
def test_a_tag_invalidation_reaches_a_flight_through_every_tag(
    flight_tags: tuple[str, ...], invalidated: list[str]
) -> None:
    flights = Flights()
    flight = flights.begin("k", flight_tags)
    spared = flights.begin("other", ("unrelated",))
    flights.invalidate_tags(invalidated)
    assert flight.invalidated
    assert flights.join("k") is None
    assert not spared.invalidated
    assert flights.join("other") is spared


def test_a_tag_invalidation_spares_untagged_and_other_tags() -> None:
    flights = Flights()
    untagged, other = flights.begin("u", ()), flights.begin("o", ("a-b", "ab"))
    flights.invalidate_tags(["a", "b"])
    assert not untagged.invalidated
    assert not other.invalidated
    assert flights.join("u") is untagged
    assert flights.join("o") is other


def test_invalidating_everything_marks_and_unregisters_every_flight() -> None:
    flights = Flights()
    made = [flights.begin(f"k{i}", (f"t{i}",)) for i in range(3)]
    flights.invalidate_all()
    assert all(f.invalidated for f in made)
    assert all(flights.join(f"k{i}") is None for i in range(3))


# -- Flight: the shared result ---------------------------------------------------------


async def test_every_waiter_gets_the_result() -> None:
    flight = Flight("k", ())
    waiters = [asyncio.create_task(flight.wait()) for _ in range(3)]
    await _until_waiting(flight)
    flight.resolve({"v": 1})
    assert await asyncio.gather(*waiters) == [{"v": 1}] * 3


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    flight = Flight("k", ())
    quitter = asyncio.create_task(flight.wait())
    stayers = [asyncio.create_task(flight.wait()) for _ in range(2)]
    await _until_waiting(flight)  # the three tasks took their first step together
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    flight.resolve("v")
    assert await asyncio.gather(*stayers) == ["v", "v"]


async def test_a_failure_reaches_the_waiters_and_is_never_reported_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flight = Flight("k", ())
    waiter = asyncio.create_task(flight.wait())
    await _until_waiting(flight)
    flight.fail(RuntimeError("db down"))
    with pytest.raises(RuntimeError, match="db down"):
        await waiter

    # Every waiter gave up before the leader failed: nobody reads the error.
    lonely = Flight("j", ())
    gone = asyncio.create_task(lonely.wait())
    await _until_waiting(lonely)
    gone.cancel()
    await asyncio.wait([gone])  # not `await gone`: its traceback would keep the flight alive
    assert gone.cancelled()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        lonely.fail(RuntimeError("nobody listens"))
        del lonely, gone
        gc.collect()
    assert "never retrieved" not in caplog.text


async def _until_waiting(flight: Flight) -> None:
    """Until a waiter has asked for the shared result (the future exists)."""

    async def waiting() -> bool:
        return flight._future is not None

    await eventually(waiting)


# -- the same races through a cache (memory mode) -----------------------------------------


async def _gets_fresh_value(row: Callable[[], Awaitable[int]], source: SlowSource) -> None:
    """The racing load stored nothing: the next call loads the new value."""
    loads = source.loads
    assert await row() == source.value
    assert source.loads == loads + 1


@pytest.mark.parametrize("where", ["here", "elsewhere"])
async def test_clear_racing_a_load_keeps_its_result_out_of_l1(
    trio: list[TwoTierCache], where: str
) -> None:
    a, b, _ = trio
    source = SlowSource(1)
    row = source.loader(a)
    slow = asyncio.create_task(row())
    await source.started.wait()
    source.value = 2
    await (a if where == "here" else b).clear()
    source.release.set()
    assert await slow == 1  # its caller asked before the clear
    assert a.get_stats()["stale_sets_refused"] == 1
    await _gets_fresh_value(row, source)


async def test_a_cancelled_waiter_does_not_fail_the_other_waiters(
    trio: list[TwoTierCache],
) -> None:
    a = trio[0]
    source = SlowSource(1)
    row = source.loader(a)
    leader = asyncio.create_task(row())
    await source.started.wait()
    quitter, stayer = asyncio.create_task(row()), asyncio.create_task(row())
    await eventually(lambda: _is(a.get_stats()["joined_loads"] == 2))
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    source.release.set()
    assert (await leader, await stayer) == (1, 1)
    assert source.loads == 1


@pytest.mark.parametrize("where", ["here", "elsewhere"])
async def test_caller_after_a_delete_does_not_join_the_old_load(
    trio: list[TwoTierCache], where: str
) -> None:
    a, b, _ = trio
    source = SlowSource(1)
    row = source.loader(a)
    first = asyncio.create_task(row())
    await source.started.wait()
    source.value = 2
    await (a if where == "here" else b).delete("row")
    second = asyncio.create_task(row())
    # The second caller has either joined the old flight or started its own load.
    await eventually(lambda: _is(source.loads == 2 or a.get_stats()["joined_loads"] > 0))
    source.release.set()
    assert (await first, await second) == (1, 2)
    assert a.get_stats()["joined_loads"] == 0
    assert await row() == 2  # the fresh load was stored, not the old one
    assert source.loads == 2


@pytest.mark.parametrize(
    ("load_tags", "invalidated"),
    [
        (("a",), ["b", "a"]),
        (("x", "b"), ["b"]),
        (("x", "b"), ["a", "b"]),
    ],
)
@pytest.mark.parametrize("where", ["here", "elsewhere"])
async def test_multi_tag_invalidation_reaches_the_load_through_every_tag(
    trio: list[TwoTierCache], load_tags: tuple[str, ...], invalidated: list[str], where: str
) -> None:
    a, b, _ = trio
    source = SlowSource(1)
    row = source.loader(a, tags=load_tags)
    first = asyncio.create_task(row())
    await source.started.wait()
    source.value = 2
    await (a if where == "here" else b).invalidate_tags(invalidated)
    second = asyncio.create_task(row())  # after the invalidation: must not join the old load
    await eventually(lambda: _is(source.loads == 2 or a.get_stats()["joined_loads"] > 0))
    source.release.set()
    assert (await first, await second) == (1, 2)
    assert a.get_stats()["stale_sets_refused"] == 1
    assert await row() == 2  # from L1: the fresh load's result, never the outdated one
    assert source.loads == 2


async def _is(value: bool) -> bool:
    return value
