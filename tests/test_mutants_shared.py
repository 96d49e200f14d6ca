"""The L2 side of a read (`_shared.py`) with no server: a memory-mode cache whose
shared tier is a `RemoteTier` kept in a dict (what Redis would hold), and the
module on its own with a clock moved by hand for the lease release's retries.

Written for the mutation run (.ci/mutation.py, module `shared`); each test
names in its docstring the mutants it kills (ids from `--list`). What needs a
real server is in integration/test_mutants_shared.py.
"""

from __future__ import annotations

import asyncio
import logging
import types
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.contract import eventually
from twotier import MsgpackSerializer, TwoTierCache, _envelope, _shared
from twotier._envelope import pack, unpack
from twotier._events import Events
from twotier._exceptions import BackendError
from twotier._logging import tier_log
from twotier._mirror import VersionMirror
from twotier._shared import SharedTier
from twotier._stats import Counters
from twotier._tier import GRANTED, HELD, STORED, Claim, Message
from twotier.testing import FakeClock

SERIALIZER = MsgpackSerializer()
LEASE_TTL = 5.0


class Remote:
    """A `RemoteTier` in a dict, keeping the contract of the Redis tier: entries,
    fill leases (a claim refused while another token holds one, or answered by
    an entry stored since the caller's read), tag versions and the generation,
    the compaction horizon, and the waiters woken when a lease ends. A method
    named in `fail` raises `BackendError` (Redis away) before doing anything."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}
        self.leases: dict[str, str] = {}
        self.generation = "1"
        self.tags: dict[str, str] = {}
        self.horizons: list[tuple[str, float]] = []  # (generation, horizon) recorded
        self.calls: list[tuple[object, ...]] = []
        self.fail: set[str] = set()
        self.fail_tagged_versions = False  # only version reads of some tags fail
        self.wakes: list[str] = []  # keys whose lease waiters were woken
        self.arrives: dict[str, bytes] = {}  # stored by another instance just before a claim
        self.hang: asyncio.Event | None = None  # a fill that waits for this

    def _call(self, name: str, *args: object) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise BackendError(f"{name}: Redis is away")

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)

    async def get(self, key: str) -> bytes | None:
        self._call("get", key)
        return self.entries.get(key)

    async def hint(self, subject: str, names: tuple[str, ...]) -> None:
        self._call("hint", subject, names)

    async def versions(
        self, tags: tuple[str, ...], horizon: float = 0.0
    ) -> tuple[str, tuple[str, ...]]:
        self._call("versions", tags, horizon)
        if tags and self.fail_tagged_versions:
            raise BackendError("versions: Redis is away")
        if horizon:
            self.horizons.append((self.generation, horizon))
        return self.generation, tuple(self.tags.get(tag, "1") for tag in tags)

    async def claim(self, key: str, token: str, rejected: bytes) -> Claim:
        self._call("claim", key)
        if key in self.arrives:
            self.entries[key] = self.arrives.pop(key)
        data = self.entries.get(key)
        if data is not None:
            entry = unpack(data)
            if entry is None or entry.header != rejected:
                return Claim(STORED, data)
        if key in self.leases:
            return Claim(HELD)
        self.leases[key] = token
        return Claim(GRANTED)

    async def fill(self, key: str, entry: bytes, ttl: float, token: str) -> bool:
        self._call("fill", key)
        if self.hang is not None:
            await self.hang.wait()
        if self.leases.get(key) != token:
            return False
        del self.leases[key]
        self.entries[key] = entry
        return True

    async def release(self, key: str, token: str, *, uncertain: bool = False) -> None:
        self._call("release", key, uncertain)
        if self.leases.get(key) == token:
            del self.leases[key]
            self.wakes.append(key)
        elif uncertain:  # it may have ended unseen: wake its waiters anyway
            self.wakes.append(key)

    async def drop(self, key: str, header: bytes) -> None:
        self._call("drop", key)
        data = self.entries.get(key)
        if data is not None and data.startswith(header):
            del self.entries[key]

    async def discard(self, key: str) -> None:
        self._call("discard", key)
        self.entries.pop(key, None)

    async def delete(self, keys: tuple[str, ...]) -> None:
        self._call("delete", *keys)
        for key in keys:
            self.entries.pop(key, None)
            self.leases.pop(key, None)


def _entry(
    value: object, *, tags: tuple[str, ...] = (), versions: tuple[str, ...] | None = None
) -> bytes:
    """An entry as another instance stores it: generation "1", its tags at *versions*."""
    if versions is None:
        versions = ("1",) * len(tags)
    return pack(60, "1", tags, versions, SERIALIZER.dumps(value))


async def _turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.fixture
async def l2() -> AsyncIterator[tuple[TwoTierCache, Remote]]:
    """A started memory-mode cache whose shared tier is a `Remote`."""
    remote = Remote()
    cache = TwoTierCache(namespace=f"s{uuid.uuid4().hex[:8]}", lease_ttl=LEASE_TTL)
    async with cache:
        cache._use_remote(remote, VersionMirror(remote.versions))  # type: ignore[arg-type]
        yield cache, remote


# -- reads --------------------------------------------------------------------------


async def test_memory_mode_loads_once_then_hits() -> None:
    """Without Redis the shared tier is the in-process hub's: a cached function
    loads once, then hits.
    Kills: shared-26c767 (the remote tier not kept), shared-6b19be (the
    mirror not kept): both an AttributeError on the first load."""
    loads = 0
    async with TwoTierCache(namespace=f"s{uuid.uuid4().hex[:8]}") as cache:

        @cache.cached(ttl=60, tags=["t"])
        async def value() -> int:
            nonlocal loads
            loads += 1
            return 7

        assert await value() == 7
        assert await value() == 7
        assert loads == 1


async def test_a_current_entry_in_l2_is_a_hit(l2: tuple[TwoTierCache, Remote]) -> None:
    cache, remote = l2
    remote.entries["k"] = _entry({"a": 1}, tags=("t",))
    assert await cache.get("k") == {"a": 1}
    assert cache.get_stats()["l2_hits"] == 1


async def test_data_that_is_no_entry_of_ours_is_counted_logged_and_deleted(
    l2: tuple[TwoTierCache, Remote], caplog: pytest.LogCaptureFixture
) -> None:
    """Foreign data under a key is a miss, counted in `garbage_entries`, reported
    at WARNING, and deleted from Redis.
    Kills: shared-c5fb49 (not handled: an AttributeError), shared-da6c11 (the
    miss not returned: judged as an entry), shared-7a390b, shared-8e0799 (not
    counted, counted down), shared-a67f93 (not logged), shared-4e30a7 (not
    deleted), shared-3643b8 (the log not kept: an AttributeError)."""
    cache, remote = l2
    remote.entries["k"] = b"written by someone else"
    with caplog.at_level(logging.WARNING, logger="twotier"):
        assert await cache.get("k", "default") == "default"
    assert cache.get_stats()["garbage_entries"] == 1
    assert any(
        r.levelno == logging.WARNING
        and "'k'" in r.getMessage()
        and "not readable" in r.getMessage()
        for r in caplog.records
    )
    assert "k" not in remote.entries


async def test_garbage_that_cannot_be_deleted_counts_an_l2_error(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """Kills: shared-1e17e7, shared-22e96d (the failed delete not counted, counted down)."""
    cache, remote = l2
    remote.entries["k"] = b"written by someone else"
    remote.fail.add("discard")
    assert await cache.get("k") is None
    stats = cache.get_stats()
    assert (stats["garbage_entries"], stats["l2_errors"]) == (1, 1)


async def test_an_entry_whose_payload_does_not_decode_is_counted_logged_and_deleted(
    l2: tuple[TwoTierCache, Remote], caplog: pytest.LogCaptureFixture
) -> None:
    """A current entry whose payload the serializer refuses (another format, a
    bad signature) is a miss, not a hit, counted, logged and deleted.
    Kills: shared-184814 (not handled as garbage), shared-909405 (the miss not
    returned: an UnboundLocalError)."""
    cache, remote = l2
    remote.entries["k"] = pack(60, "1", (), (), b"\x00not msgpack")
    with caplog.at_level(logging.WARNING, logger="twotier"):
        assert await cache.get("k", "default") == "default"
    stats = cache.get_stats()
    assert (stats["garbage_entries"], stats["l2_hits"]) == (1, 0)
    assert any("not readable" in r.getMessage() for r in caplog.records)
    assert "k" not in remote.entries


async def test_nothing_is_read_from_l2_while_this_instance_has_changes_redis_lacks(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """A delete Redis has not taken yet (queued while Redis is away): what Redis
    holds is what was deleted, so a read does not serve it.
    Kills: shared-18764e (L2 read anyway: the deleted value is served)."""
    cache, remote = l2
    remote.entries["k"] = _entry("old")
    remote.fail.add("delete")
    await cache.delete("k")
    assert cache.get_stats()["queued_ops"] >= 1
    assert await cache.get("k", "default") == "default"
    assert remote.count("get") == 0


async def test_an_entry_whose_versions_cannot_be_read_is_a_miss_left_in_place(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """An entry with a tag the mirror does not know is judged by Redis's versions;
    when those cannot be read, the read misses with an L2 error counted, and
    the entry, perhaps current, stays in Redis.
    Kills: shared-08a39e, shared-20173e (the error not counted, counted down),
    shared-702972 (no early return: the entry is deleted as outdated)."""
    cache, remote = l2
    remote.entries["k"] = _entry("v", tags=("t",))
    remote.fail_tagged_versions = True
    assert await cache.get("k", "default") == "default"
    await _turns()
    assert cache.get_stats()["l2_errors"] == 1
    assert "k" in remote.entries
    assert remote.count("drop") == 0


async def test_a_read_that_finds_an_outdated_entry_deletes_it(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """An entry whose tag was invalidated since is a miss, and deleted from Redis
    by the read (its memory freed now, not at its TTL).
    Kills: shared-04edb4 (the delete not started), shared-852f68 (the delete
    not sent)."""
    cache, remote = l2
    remote.entries["k"] = _entry("v", tags=("t",), versions=("1",))
    remote.tags["t"] = "2"
    assert await cache.get("k", "default") == "default"

    async def gone() -> bool:
        return "k" not in remote.entries

    await eventually(gone, timeout=5)


async def test_an_outdated_entry_that_cannot_be_deleted_counts_an_l2_error(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """Kills: shared-008fb4, shared-203518 (the failed delete not counted, counted down)."""
    cache, remote = l2
    remote.entries["k"] = _entry("v", tags=("t",), versions=("1",))
    remote.tags["t"] = "2"
    remote.fail.add("drop")
    assert await cache.get("k") is None

    async def counted() -> bool:
        return cache.get_stats()["l2_errors"] == 1

    await eventually(counted, timeout=5)


async def test_an_entry_whose_lifetime_is_up_is_not_served(
    l2: tuple[TwoTierCache, Remote], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry with no time left (the wall clock at its expiry) is a miss.
    Kills: shared-0bc183 (`<=` -> `<`: served with 0 s left)."""
    cache, remote = l2
    now = {"ms": 1_700_000_000_000}
    monkeypatch.setattr(_envelope, "now_wall_ms", lambda: now["ms"])
    remote.entries["k"] = _entry("v")  # expires 60 s from "now"
    now["ms"] += 60_000
    assert await cache.get("k", "default") == "default"
    now["ms"] -= 1
    assert await cache.get("k", "default") == "v"


# -- fill leases ---------------------------------------------------------------------


async def test_a_claim_redis_cannot_answer_loads_without_a_lease_or_a_wait(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """Kills: shared-ab521b, shared-6e0665 (the error not counted, counted down),
    shared-c56543 (no early return: an UnboundLocalError), shared-08b882
    (reported as held by another: a lease wait)."""
    cache, remote = l2
    remote.fail.add("claim")
    loads = 0

    @cache.cached(ttl=60)
    async def value() -> int:
        nonlocal loads
        loads += 1
        return 5

    assert await value() == 5
    stats = cache.get_stats()
    assert (loads, stats["l2_errors"], stats["lease_waits"]) == (1, 1, 0)
    assert remote.count("fill") == 0


async def test_an_entry_stored_just_before_the_claim_is_served_without_loading(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """The read misses, then another instance stores the key: the claim answers
    with its entry, which is served; nothing loads, nobody waits.
    Kills: shared-0c67de (the stored entry ignored: a load), shared-aaded3
    (reported as held by another: a lease wait)."""
    cache, remote = l2
    remote.arrives["k"] = _entry(9, tags=("t",))
    loads = 0

    @cache.cached(ttl=60, key="k", tags=["t"])
    async def value() -> int:
        nonlocal loads
        loads += 1
        return 1

    assert await value() == 9
    await _turns()
    stats = cache.get_stats()
    assert (loads, stats["lease_waits"], stats["l2_hits"]) == (0, 0, 1)
    assert remote.count("drop") == 0
    assert "k" in remote.entries


async def test_an_outdated_entry_found_by_the_claim_is_left_to_the_loaders(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """An entry stored before the claim but outdated already is not served, and
    not deleted by each reader of a stampede: it is no hit, and the load goes
    on without a lease (someone else's entry is there).
    Kills: shared-e15a87 (judged with drop=True: deleted by the reader)."""
    cache, remote = l2
    remote.tags["t"] = "2"
    remote.arrives["k"] = _entry(9, tags=("t",), versions=("1",))
    loads = 0

    @cache.cached(ttl=60, key="k", tags=["t"])
    async def value() -> int:
        nonlocal loads
        loads += 1
        return 1

    assert await value() == 1
    await _turns()
    assert (loads, cache.get_stats()["lease_waits"]) == (1, 0)
    assert remote.count("drop") == 0


async def test_versions_unreadable_before_the_load_keep_its_result_out_of_redis(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """The lease taken, the tags' versions cannot be read: the value is loaded and
    served, kept in L1 only, counted as an L2 error, and the lease given back.
    Kills: shared-845fe5, shared-a405f5 (the error not counted, counted down)."""
    cache, remote = l2
    remote.fail_tagged_versions = True
    loads = 0

    @cache.cached(ttl=60, key="k", tags=["t"])
    async def value() -> int:
        nonlocal loads
        loads += 1
        return 3

    assert await value() == 3
    await _turns()
    assert cache.get_stats()["l2_errors"] == 1
    assert "k" not in remote.entries
    assert "k" not in remote.leases
    assert await value() == 3
    assert loads == 1


async def test_a_tag_invalidated_during_the_load_keeps_its_result_out_of_both_tiers(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """The loader's result is returned to its caller, but stored nowhere (it is
    outdated already), counted as a refused stale set, and the lease given
    back at once so that the waiters elsewhere load.
    Kills: shared-3d4fa9 (the lease kept), shared-67fc09 (stored in Redis
    anyway), shared-17beb1 (kept in L1)."""
    cache, remote = l2
    loads = 0

    @cache.cached(ttl=60, key="k", tags=["t"])
    async def value() -> int:
        nonlocal loads
        loads += 1
        remote.tags["t"] = str(int(remote.tags.get("t", "1")) + 1)  # invalidated meanwhile
        return loads

    assert await value() == 1
    await _turns()
    assert cache.get_stats()["stale_sets_refused"] == 1
    assert "k" not in remote.entries
    assert "k" not in remote.leases
    assert remote.wakes == ["k"]
    assert await value() == 2


async def test_a_release_of_a_lease_that_ended_meanwhile_wakes_nobody(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """A set of the key during the load revoked the lease (and woke its waiters):
    the loader's later release, certain of its own state, does not wake them
    again (each such wake is a read by every waiter).
    Kills: shared-0b745b (release_later uncertain by default), shared-80c76e
    (release uncertain by default)."""
    cache, remote = l2

    @cache.cached(ttl=60, key="k", tags=["t"])
    async def outdated() -> int:
        remote.leases.pop("k")  # revoked by a set elsewhere
        remote.tags["t"] = "2"  # and the tag invalidated: the fill is refused
        return 1

    @cache.cached(ttl=60, key="j")
    async def failing() -> int:
        remote.leases.pop("j")
        raise RuntimeError("the database is away")

    assert await outdated() == 1
    with pytest.raises(RuntimeError):
        await failing()
    await _turns()
    assert sorted(call[1:] for call in remote.calls if call[0] == "release") == [
        ("j", False),
        ("k", False),
    ]
    assert remote.wakes == []


async def test_a_fill_redis_refuses_keeps_the_value_in_l1_and_wakes_the_waiters(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """The fill fails (Redis away, or its reply lost after it ran): the value is
    served and kept in L1, an L2 error counted, and the lease released as
    uncertain, so that waiters elsewhere are woken even if the fill ended the
    lease unseen.
    Kills: shared-d24f71, shared-b183f2 (the error not counted, counted down),
    shared-47d888 (released as certain), shared-f59a82 (treated as a refused
    stale set: not kept in L1)."""
    cache, remote = l2
    remote.fail.add("fill")
    loads = 0

    @cache.cached(ttl=60, key="k")
    async def value() -> int:
        nonlocal loads
        loads += 1
        return 4

    assert await value() == 4
    await _turns()
    stats = cache.get_stats()
    assert (stats["l2_errors"], stats["stale_sets_refused"]) == (1, 0)
    assert [call for call in remote.calls if call[0] == "release"] == [("release", "k", True)]
    assert "k" not in remote.leases
    assert await value() == 4
    assert loads == 1


async def test_a_load_cancelled_during_its_fill_is_cancelled_and_gives_the_lease_back(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """Kills: shared-bf5898 (the lease kept), shared-1726d7 (released as certain,
    though the fill may have run), shared-e7aa23 (the cancellation swallowed:
    an UnboundLocalError)."""
    cache, remote = l2
    remote.hang = asyncio.Event()

    @cache.cached(ttl=60, key="k")
    async def value() -> int:
        return 4

    task = asyncio.ensure_future(value())

    async def filling() -> bool:
        return remote.count("fill") == 1

    await eventually(filling, timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def released() -> bool:
        return remote.count("release") == 1

    await eventually(released, timeout=5)
    assert [call for call in remote.calls if call[0] == "release"] == [("release", "k", True)]
    assert "k" not in remote.leases


# -- the compaction horizon ----------------------------------------------------------


async def test_the_horizon_is_recorded_once_per_longer_lifetime_and_generation(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """Before a tagged load, Redis learns how long its entry may live, lease time
    included (compaction's horizon): once for each longer lifetime, and again
    in a new generation (after a clear), not before every load.
    Kills: shared-347d63, shared-16cbd1 (never recorded), shared-e42248,
    shared-97a9ad, shared-290b90, shared-66325e (recorded again for a lifetime
    already known), shared-349572 (not recorded again in a new generation)."""
    cache, remote = l2
    mirror = cache._shared.mirror
    mirror.cleared("1")  # the generation as the start's sync learned it
    serial = 0

    async def load() -> int:
        nonlocal serial
        serial += 1
        return serial

    async def loaded(ttl: float) -> None:
        await cache.cached(ttl=ttl, key=f"k{serial}", tags=["t"])(load)()

    await loaded(10)
    await loaded(10)
    await loaded(5)
    assert remote.horizons == [("1", 10 + LEASE_TTL)]
    await loaded(20)
    assert remote.horizons == [("1", 10 + LEASE_TTL), ("1", 20 + LEASE_TTL)]
    remote.generation = "2"  # cleared elsewhere, and the clear's message applied here
    mirror.cleared("2")
    await loaded(5)
    assert remote.horizons[2:] == [("2", 5 + LEASE_TTL)]
    await loaded(5)
    assert len(remote.horizons) == 3


# -- the lease release's retries -----------------------------------------------------


class _Failing(Remote):
    """Each release runs (the lease ends) but its first *lost* replies are lost;
    past *limit* attempts the test fails rather than loop."""

    def __init__(self, lost: int, limit: int = 100) -> None:
        super().__init__()
        self.lost = lost
        self.limit = limit

    async def release(self, key: str, token: str, *, uncertain: bool = False) -> None:
        await super().release(key, token, uncertain=uncertain)
        attempts = self.count("release")
        assert attempts <= self.limit, "the release does not stop retrying"
        if attempts <= self.lost:
            raise BackendError("the reply was lost")


def _tier(
    remote: Remote, clock: FakeClock, *, lease_ttl: float, retry: float, most: float
) -> tuple[SharedTier, Counters]:
    counters = Counters()
    log = tier_log("test", "cache")
    shared = SharedTier(
        remote,  # type: ignore[arg-type]
        VersionMirror(remote.versions),
        SERIALIZER,
        counters,
        log,
        lease_ttl=lease_ttl,
        retry_delay=retry,
        max_retry_delay=most,
        clock=clock,
        spawn=asyncio.ensure_future,
        blocked=lambda: False,
        events=Events((), log),
        held=lambda key, tags: False,
    )
    return shared, counters


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeClock, list[float]]:
    """A clock moved by the release's own sleeps, and those sleeps."""
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(_shared, "asyncio", types.SimpleNamespace(sleep=sleep))
    return clock, slept


async def test_a_release_that_succeeds_is_sent_once(
    sleeps: tuple[FakeClock, list[float]],
) -> None:
    """Kills: shared-01ed8b (released again and again)."""
    clock, slept = sleeps
    remote = _Failing(lost=0, limit=3)
    remote.leases["k"] = "tok"
    shared, counters = _tier(remote, clock, lease_ttl=10, retry=0.125, most=1)
    await asyncio.wait_for(shared.release("k", "tok"), 10)
    assert remote.count("release") == 1
    assert (slept, counters.l2_errors, remote.wakes) == ([], 0, ["k"])


async def test_a_release_whose_reply_was_lost_is_retried_as_uncertain_and_wakes_the_waiters(
    sleeps: tuple[FakeClock, list[float]],
) -> None:
    """The first attempt ended the lease but its reply was lost: the retry finds
    no lease, and wakes the waiters anyway (else they wait out the lease).
    Kills: shared-0f9f91 (retried as certain: nobody woken), shared-5f77b3,
    shared-bde254 (the lost reply not counted, counted down)."""
    clock, _ = sleeps
    remote = _Failing(lost=1)
    remote.leases["k"] = "tok"
    shared, counters = _tier(remote, clock, lease_ttl=10, retry=0.125, most=1)
    remote.wakes.clear()
    await asyncio.wait_for(shared.release("k", "tok"), 10)
    assert [call[2] for call in remote.calls if call[0] == "release"] == [False, True]
    assert counters.l2_errors == 1
    assert remote.wakes == ["k", "k"]


async def test_a_release_retries_with_backoff_until_the_lease_would_have_expired(
    sleeps: tuple[FakeClock, list[float]],
) -> None:
    """While Redis fails, the release retries, the delay doubling from
    `retry_delay` up to `max_retry_delay`, as long as the lease may still be
    there: the last try at the instant the lease expires (Redis still holds a
    key at its expiry instant), none after. Every failure is an L2 error.
    Kills: shared-1db15f (`>` -> `>=`: no try at the expiry instant),
    shared-8b714d (never gives up), shared-3ff5fc (no backoff)."""
    clock, slept = sleeps
    remote = _Failing(lost=1000, limit=20)
    shared, counters = _tier(remote, clock, lease_ttl=1.375, retry=0.125, most=0.5)
    start = clock()
    await asyncio.wait_for(shared.release("k", "tok"), 10)
    assert slept == [0.125, 0.25, 0.5, 0.5]  # tries at +0, 1/8, 3/8, 7/8 and 11/8 s
    assert clock() - start == 1.375
    assert counters.l2_errors == remote.count("release") == 5


async def test_an_entry_held_by_a_hint_is_not_served(l2: tuple[TwoTierCache, Remote]) -> None:
    """Another instance hinted a change of the key that Redis refused for now
    (`_hints.py`): the entry Redis holds may be the one it replaces.
    Kills: shared-3b4b6e (lookups not held by default)."""
    cache, remote = l2
    remote.entries["k"] = _entry("old")
    cache._applier.apply_message(Message("h", ("k",), "another", 0, ("k",)))
    assert await cache.get("k", "default") == "default"
    assert remote.count("get") == 1  # read, and passed over


async def test_an_entry_stored_just_before_the_claim_is_served_even_while_held(
    l2: tuple[TwoTierCache, Remote],
) -> None:
    """What a claim finds stored since the read was stored by a load or a
    `set`, after the hint: newer than the change on its way, so it is served
    rather than loaded again.
    Kills: shared-45bc72 (the claim's entry held too: a needless load)."""
    cache, remote = l2
    remote.entries["k"] = _entry("old")
    remote.arrives["k"] = _entry("new", tags=("t",))  # a header of its own
    cache._applier.apply_message(Message("h", ("k",), "another", 0, ("k",)))
    loads = 0

    @cache.cached(ttl=60, key="k")
    async def value() -> str:
        nonlocal loads
        loads += 1
        return "loaded"

    assert await value() == "new"
    assert loads == 0
