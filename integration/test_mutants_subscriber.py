"""The invalidation listener (`_subscriber.py`) on a real server: numbered
messages applied in order, a lost one found by the next number or by the idle
check and replayed from the change log (L1 kept), a counter that went back
(FLUSHALL) wiping L1, the health checks of an idle link, reconnects with a
growing, jittered backoff.

Pub/sub loss is made on purpose: a `Tap` stands between a listener and its
subscription, and can drop a numbered message or hold the frames for a while
(what a slow or lossy link does), without touching the listener itself.

Written for the mutation run (.ci/mutation.py, module `subscriber`); each
test names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import TwoTierCache, _subscriber
from twotier._channel import Frame, Subscription
from twotier._events import BaseObserver
from twotier._redis import Layout
from twotier._subscriber import RedisListener
from twotier._tier import KINDS, Message
from twotier._topology import Bus
from twotier.testing import RedisServer

from .conftest import CacheFactory, failing_call_of_k, own_call_of_k

NS = "it"  # make_cache's namespace
LAYOUT = Layout(NS)


class Tap:
    """Every subscription opened while installed goes through here: counted,
    held back while `connectable` is clear, its messages with a number in
    `drop` lost, its frames held while `flowing` is clear, a frame of
    `inject` given out instead of the next one read, the health checks'
    answers counted."""

    def __init__(self) -> None:
        self.subscriptions = 0
        self.drop: set[int] = set()
        self.dropped: list[int] = []
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.answers = 0  # pongs and counter reads: the idle checks' answers
        self.pongs = 0
        self.connectable = asyncio.Event()  # cleared: new subscriptions wait
        self.inject: list[Frame] = []  # given out in place of the next frame read
        self.connectable.set()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        opened = Bus.subscription

        async def subscription(bus: Bus, channel: str, write_timeout: float) -> Subscription:
            await self.connectable.wait()
            sub = await opened(bus, channel, write_timeout)
            self.subscriptions += 1
            sub.next = self._wrap(sub.next)  # type: ignore[method-assign]
            return sub

        monkeypatch.setattr(Bus, "subscription", subscription)

    def _wrap(self, read: Callable[[], Any]) -> Callable[[], Any]:
        async def next_frame() -> Frame:
            while True:
                kind, data = await read()
                await self.flowing.wait()
                if self.inject:
                    return self.inject.pop(0)  # the frame read is lost
                if kind == "message":
                    seq = Message.decode(data).seq
                    if seq in self.drop:
                        self.drop.discard(seq)
                        self.dropped.append(seq)
                        continue
                elif kind in ("pong", "counter"):
                    self.answers += 1
                    self.pongs += kind == "pong"
                return kind, data

        return next_frame


class Attempts:
    """Counts the resyncs *cache*'s listener starts (each asks the server who
    it is first): a resync suspends L1 and costs round trips, so one without
    a reason is a cost, not a no-op. *before* runs (awaited) before the
    answer, once: a change landing between the subscription and the resync's
    counter read."""

    def __init__(self, cache: TwoTierCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.before: Callable[[], Any] | None = None
        tier = _listener(cache)._tier
        server_id = tier.server_id

        async def counted() -> str:
            self.count += 1
            if self.before is not None:
                before, self.before = self.before, None
                await before()
            return await server_id()

        monkeypatch.setattr(tier, "server_id", counted)


async def _true(value: object) -> bool:
    return bool(value)


def _listener(cache: TwoTierCache) -> RedisListener:
    return cache._link.listener  # type: ignore[union-attr]


async def _counter(raw: aioredis.Redis) -> int:
    return int(await raw.get(LAYOUT.seq) or 0)


async def _cached_everywhere(writer: TwoTierCache, reader: TwoTierCache, *keys: str) -> None:
    """*keys* written by *writer* and in *reader*'s L1 (its writes' messages received)."""
    for key in keys:
        await writer.set(key, f"old {key}")
    seq = await _listener(reader)._tier.current_seq()
    await eventually(lambda: _in_sync(reader, seq))
    for key in keys:
        assert await reader.get(key) == f"old {key}"
    hits = reader.counters.l1_hits
    for key in keys:
        assert await reader.get(key) == f"old {key}"
    assert reader.counters.l1_hits == hits + len(keys)


async def _lose_a_and_reveal_it(writer: TwoTierCache, raw: aioredis.Redis, tap: Tap) -> int:
    """The writer deletes "a" and "b"; the listener never gets "a"'s message,
    and "b"'s reveals the gap. Returns the counter before them; the
    listener's recovery is for the caller to wait for (it may be held back)."""
    seq = await _counter(raw)
    tap.drop.add(seq + 1)
    await writer.delete("a")  # lost
    await writer.delete("b")  # seq + 2: a gap
    return seq


def _apply_fails_once(reader: TwoTierCache, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next message *reader*'s listener applies raises an unexpected
    error (a bug on the way to L1); the ones after it apply as before."""
    listener = _listener(reader)
    apply = listener._apply

    def fails_once(message: Message) -> None:
        monkeypatch.setattr(listener, "_apply", apply)
        raise RuntimeError("a bug on the way to L1")

    monkeypatch.setattr(listener, "_apply", fails_once)


@contextlib.asynccontextmanager
async def _b_waiting_on_a_failing_load_of_a(
    a: TwoTierCache, b: TwoTierCache, raw: aioredis.Redis
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Future[str]]]:
    """A's call of "k" holds the key's fill lease until the yielded gate is
    set, then its loader fails; B's call of "k" (loading "b's own") waits on
    that lease. Yields (the gate, B's call); on exit the gate is set and A's
    call is over."""
    gate = asyncio.Event()
    leader = failing_call_of_k(a, gate)
    try:
        await eventually(lambda: _lease_held(raw, "k"), timeout=5)
        waiter = own_call_of_k(b)
        await eventually(lambda: _true(b.counters.lease_waits == 1), timeout=5)
        yield gate, waiter
    finally:
        gate.set()
        await asyncio.gather(leader, return_exceptions=True)


async def _in_sync(cache: TwoTierCache, seq: int) -> bool:
    """*cache*'s listener has applied the changes up to *seq* and serves L1 again."""
    return _listener(cache)._last_seq == seq and not cache.local.suspended


async def _served_from_l1(cache: TwoTierCache, key: str, value: object) -> bool:
    hits = cache.counters.l1_hits
    return await cache.get(key) == value and cache.counters.l1_hits == hits + 1


class Resyncs(BaseObserver):
    """An observer that keeps the reasons of the resyncs."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def resynced(self, reason: str) -> None:
        self.reasons.append(reason)


async def test_a_lost_message_is_replayed_from_the_log_when_the_next_number_reveals_the_gap(
    make_cache: CacheFactory,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pub/sub loses the message of a delete; the next message's number jumps
    by two. The listener resyncs ("gap"), replays both changes from the log,
    and keeps the rest of L1: the two keys are gone from the reader's L1, an
    untouched key is still served from it, nothing was wiped, and both
    replayed changes count as received, and the log says so. Later changes
    apply as usual.
    Kills the gap branch of `_handle` and the replay branch of `_resync`,
    and subscriber-d93721 (the replay not logged)."""
    caplog.set_level(logging.INFO, logger="twotier")
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b", "c")
    before = reader.get_stats()
    seq = await _lose_a_and_reveal_it(writer, raw, tap)
    await eventually(lambda: _in_sync(reader, seq + 2))
    assert reader.counters.resyncs == before["resyncs"] + 1
    assert tap.dropped == [seq + 1]
    assert resyncs.reasons == [f"gap {seq}→{seq + 2}"]
    assert f"resynced by replaying 2 change(s) (gap {seq}→{seq + 2})" in caplog.messages
    assert reader.counters.l1_clears == before["l1_clears"]
    assert reader.counters.invalidations_received == before["invalidations_received"] + 2
    assert await _served_from_l1(reader, "c", "old c")
    assert await reader.get("a") is None
    assert await reader.get("b") is None
    await writer.set("c", "new c")
    await eventually(lambda: _served_from_l1(reader, "c", "new c"))
    assert reader.counters.resyncs == before["resyncs"] + 1
    assert tap.subscriptions == 1  # no reconnect on the way


async def test_late_copies_of_replayed_changes_are_ignored_not_taken_for_a_flush(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message is lost and the link then lags: by the time the next number
    reveals the gap, two more changes are in the log, and the replay applies
    them all. Their own copies still arrive over pub/sub afterwards: numbers
    at or below the last applied but above the replay's floor, which are
    late copies, ignored (no second resync, no wipe), not a counter that
    went back. Changes after them apply in order.
    Kills the late-copy branch of `_handle` (the floor comparison, the
    replay's floor), the replay's own advance of the last number, and
    subscriber-e74eae (a late copy of the last number taken for a gap: a
    resync for nothing)."""
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b", "c", "d")
    before = reader.get_stats()
    attempts = Attempts(reader, monkeypatch)
    seq = await _counter(raw)
    tap.drop.add(seq + 1)
    tap.flowing.clear()  # the next frame the listener reads is held
    await writer.delete("a")  # lost
    await writer.delete("b")  # held: reveals the gap
    await writer.delete("c")  # replayed, then arrives late
    tap.flowing.set()
    await eventually(lambda: _in_sync(reader, seq + 3))
    assert resyncs.reasons == [f"gap {seq}→{seq + 2}"]
    await writer.set("d", "new d")  # seq + 4, after the late copy of seq + 3
    await eventually(lambda: _served_from_l1(reader, "d", "new d"))
    assert resyncs.reasons == [f"gap {seq}→{seq + 2}"]
    assert attempts.count == 1  # the late copies started none
    assert reader.counters.l1_clears == before["l1_clears"]
    assert _listener(reader)._last_seq == seq + 4
    for key in ("a", "b", "c"):
        assert await reader.get(key) is None


async def test_a_counter_that_went_back_wipes_l1_at_the_next_message(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLUSHALL under a running fleet: the change counter starts again from
    one. The reader's next message carries a number at or below those it
    applied: its listener resyncs at once ("sequence went back"), finds the
    counter below its last number, and clears L1 (whose entries the log can
    no longer vouch for). The idle check (30 s here) is not what finds it.
    Kills the floor of `_handle` (a message applied over pub/sub raises it)
    and the counter-went-back branch of `_resync`."""
    writer = await make_cache()
    resyncs = Resyncs()
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await writer.set("tagged", "old", tags=["t"])
    await _cached_everywhere(writer, reader, "a", "b")
    assert await reader.get("tagged") == "old"  # the mirror learns t's version
    before = reader.get_stats()
    last = await _counter(raw)
    await raw.flushall()
    await writer.delete("other")
    await eventually(lambda: _true(reader.counters.l1_clears == before["l1_clears"] + 1))
    now = await _counter(raw)
    assert now < last
    [reason] = resyncs.reasons
    assert reason.startswith(f"sequence went back {last}→")
    assert reader.counters.resyncs == before["resyncs"] + 1
    await eventually(lambda: _in_sync(reader, now))
    hits = reader.counters.l1_hits
    assert await reader.get("a") is None  # flushed, and no longer in L1
    assert reader.counters.l1_hits == hits
    await writer.set("b", "new b")
    await eventually(lambda: _in_sync(reader, now + 1))
    assert await reader.get("b") == "new b"
    # The mirror was cleared too: what it knew of the old history (its
    # generation, t's version) does not condemn an entry of the new one.
    await writer.set("fresh", "new", tags=["t"])
    assert await reader.get("fresh") == "new"


@pytest.mark.parametrize("protocol", [3, 2], ids=["resp3", "resp2"])
async def test_a_lost_last_message_is_found_by_the_idle_check_and_replayed(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch, protocol: int
) -> None:
    """The last message before a quiet spell is lost: no later number reveals
    it. After a health interval without traffic the listener compares the
    counter (over RESP3 a GET on the subscription, over RESP2 a PING there
    and a GET elsewhere) with its last number, resyncs ("counter moved
    while idle") and replays the change from the log: the key is gone from
    L1, the rest of L1 kept.
    Kills the idle check's counter comparison (both protocols), its resync,
    and `_seq` reading the counter frame."""
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=0.3, protocol=protocol)
    await _cached_everywhere(writer, reader, "a", "b", "c", "d")
    before = reader.get_stats()
    seq = await _lose_a_and_reveal_it(writer, raw, tap)
    await eventually(lambda: _in_sync(reader, seq + 2), timeout=10)
    tap.drop.add(seq + 3)
    await writer.delete("c")  # the last message before a quiet spell, lost
    await eventually(lambda: _in_sync(reader, seq + 3), timeout=10)
    assert resyncs.reasons == [f"gap {seq}→{seq + 2}", "counter moved while idle"]
    assert reader.counters.l1_clears == before["l1_clears"]
    assert reader.counters.invalidations_received == before["invalidations_received"] + 3
    assert await _served_from_l1(reader, "d", "old d")
    assert await reader.get("c") is None


@pytest.mark.parametrize("protocol", [3, 2], ids=["resp3", "resp2"])
async def test_an_idle_link_that_answers_its_health_checks_stays_subscribed(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch, protocol: int
) -> None:
    """A quiet channel: every health interval the listener asks (a counter
    read over RESP3, a PING over RESP2) and gets its answer. Interval after
    interval, the link is kept: no reconnect, no resync, no warning, Redis
    reported available, L1 served, and no resync started.
    Kills the health check's bookkeeping: a check taken as unanswered from
    the start (subscriber-b0a3c0, the link quiet since it was opened), an
    answer that does not clear it, the answers' kinds (a pong taken for a
    counter that moved: subscriber-a8b55b, subscriber-8fc64e),
    and subscriber-cd9240 (over RESP3, a PING and a counter read elsewhere
    on top of the counter read on the subscription)."""
    tap = Tap()
    tap.install(monkeypatch)
    cache = await make_cache(health_interval=0.1, protocol=protocol)
    resyncs = cache.counters.resyncs
    attempts = Attempts(cache, monkeypatch)
    await eventually(lambda: _true(tap.answers >= 5), timeout=10)  # quiet from the start
    assert tap.subscriptions == 1
    assert attempts.count == 0  # the counter did not move: nothing to resync
    # Over RESP3 one command does both (the counter read proves the link alive).
    assert tap.pongs == (0 if protocol == 3 else tap.answers)
    assert cache.counters.resyncs == resyncs
    assert cache.counters.listener_errors == 0
    stats = cache.get_stats()
    assert stats["redis_available"] is True
    assert stats["last_error"] is None
    await cache.set("k", "v")
    assert await _served_from_l1(cache, "k", "v")


@pytest.mark.parametrize("protocol", [3, 2], ids=["resp3", "resp2"])
async def test_a_link_that_stops_answering_is_dropped_and_l1_stops_trusting_what_it_knew(
    make_cache: CacheFactory,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    protocol: int,
) -> None:
    """The subscription goes silent (nothing comes back, not even the answer
    to the health check) while Redis itself still answers. Two intervals
    later the listener gives the link up: it warns, reports Redis as not
    available, stops serving L1, and no longer trusts its version mirror, so
    a tag invalidated meanwhile (whose message it cannot get) is checked in
    Redis: the tagged entry is not served. Once frames flow again it
    subscribes anew, resyncs, and serves L1 again.
    Kills the unanswered health check (`pending_ping`, its raise) and
    `_lost` (the link still counted as up, L1 still served, the mirror still
    trusted), subscriber-be8cb5 (the given-up subscription left open)."""
    caplog.set_level(logging.WARNING, logger="twotier")
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=0.2, protocol=protocol)
    await writer.set("tagged", "old", tags=["t"])
    await _cached_everywhere(writer, reader, "plain")
    assert await reader.get("tagged") == "old"
    tap.flowing.clear()
    await eventually(lambda: _true(tap.subscriptions >= 2), timeout=10)
    assert _warnings(caplog, "invalidation link lost or refused")
    assert reader.get_stats()["redis_available"] is False
    hits = reader.counters.l1_hits
    assert await reader.get("plain") == "old plain"  # from L2, still current
    assert reader.counters.l1_hits == hits
    await writer.invalidate_tag("t")  # its message does not get through
    assert await reader.get("tagged") is None
    tap.flowing.set()
    await eventually(lambda: _true(reader.get_stats()["redis_available"]), timeout=10)
    await _cached_everywhere(writer, reader, "k")  # L1 served again
    # The silent subscription was closed: the writer's and the new one remain.
    [(_, subscribers)] = await raw.pubsub_numsub(LAYOUT.channel)
    assert subscribers == 2


async def test_a_listener_cancelled_by_anything_but_close_leaves_l1_untrusted(
    make_cache: CacheFactory,
) -> None:
    """The listener's task is cancelled by something else than close() (an
    event loop's shutdown, an application cancelling every task on its way
    out): nobody tells this instance about changes any more. It says Redis
    is not available, L1 is no longer served, and the version mirror is no
    longer trusted: a tag invalidated by another instance is checked in
    Redis, and its entry is not served.
    Kills: subscriber-1e1416 (only a close() suspends L1),
    subscriber-2bef60 (still reported available), subscriber-94f434,
    subscriber-31c43c (L1 still served), subscriber-e642ec,
    subscriber-ee2e0f (the mirror still trusted)."""
    writer, reader = await make_cache(), await make_cache(health_interval=30.0)
    await writer.set("tagged", "old", tags=["t"])
    await _cached_everywhere(writer, reader, "plain")
    assert await reader.get("tagged") == "old"
    task = reader._link._listener_task
    assert task is not None
    task.cancel()
    await asyncio.wait([task])
    assert reader.get_stats()["redis_available"] is False
    hits = reader.counters.l1_hits
    assert await reader.get("plain") == "old plain"  # from L2, still current
    assert reader.counters.l1_hits == hits
    await writer.invalidate_tag("t")
    assert await reader.get("tagged") is None


class Jitter:
    """Stands for `random` in the listener: records the bounds of each
    reconnect's wait, and waits nothing (the test need not)."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return 0.0


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


async def test_reconnects_wait_a_random_share_of_a_doubling_backoff_reset_by_a_success(
    server: RedisServer,
    make_cache: CacheFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis is down when the instance starts. The listener retries, each time
    after a random share of a bound (full jitter) that doubles from 10 ms up
    to the health interval, and warns once per cause, not at every attempt. Redis
    comes back: the listener connects, and the instance says it recovered
    (no longer degraded). The next loss reconnects within the first, short
    bound again.
    Kills: subscriber-a0f85d (no first bound: the listener dies at its
    first retry), subscriber-551098 (no wait at all), subscriber-39e878 (the
    bound never grows), subscriber-30c664 (not reset by a success),
    subscriber-75241f, subscriber-b44ca2, subscriber-902c4a,
    subscriber-48ad25 (a warning per attempt, or none), subscriber-8f718b
    (the cause still reported once connected), subscriber-ffd572 (the
    instance not told the link is back: still degraded)."""
    caplog.set_level(logging.WARNING, logger="twotier")
    jitter = Jitter()
    monkeypatch.setattr(_subscriber, "random", jitter)
    server.kill()
    cache = await make_cache(health_interval=0.4, connect_timeout=0.1, redis_timeout=0.05)
    await eventually(lambda: _true(len(jitter.bounds) >= 8), timeout=10)
    first = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.4, 0.4]
    assert jitter.bounds[:8] == [(0.0, bound) for bound in first]
    # Once per cause (a loaded machine may mix in a connect timeout), not per attempt.
    warned = _warnings(caplog, "invalidation link lost or refused")
    assert warned
    assert len(warned) < 8
    assert all(this != that for this, that in itertools.pairwise(warned))
    server.launch()
    await eventually(lambda: _true(cache.get_stats()["redis_available"]), timeout=15)
    assert cache.get_stats()["last_error"] is None
    assert _warnings(caplog, "recovered: Redis and the invalidation link are back")
    done = len(jitter.bounds)
    server.kill()
    await eventually(lambda: _true(len(jitter.bounds) > done + 1), timeout=10)
    assert jitter.bounds[done : done + 2] == [(0.0, 0.01), (0.0, 0.02)]


async def test_a_forced_reconnect_resubscribes_and_keeps_l1_when_nothing_changed(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reconnect()` (Sentinel moved the master) drops the subscription: the
    listener subscribes again and resyncs ("connected"). Nothing changed
    meanwhile, the counter is where it was: L1 is kept whole (no wipe, no
    resync counted), and changes still arrive over the new subscription.
    Kills: subscriber-e8679b, subscriber-d72a72 (the subscription is not
    dropped), subscriber-22d646 (an unchanged counter taken as one that went
    back: L1 wiped), subscriber-d9bc33 (an unchanged counter taken as one
    that moved: a resync that finds nothing in the log, L1 wiped)."""
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b")
    before = reader.get_stats()
    await _listener(reader).reconnect()
    await eventually(lambda: _true(tap.subscriptions == 2 and reader.redis_available))
    assert resyncs.reasons == []
    assert reader.counters.l1_clears == before["l1_clears"]
    assert reader.counters.resyncs == before["resyncs"]
    assert await _served_from_l1(reader, "b", "old b")
    await writer.delete("a")
    seq = await _listener(reader)._tier.current_seq()
    await eventually(lambda: _in_sync(reader, seq))
    assert await reader.get("a") is None


async def test_a_gap_the_log_no_longer_covers_wipes_l1(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message is lost, and the log is trimmed before the gap shows (a small
    `log_maxlen`, a long outage): the change cannot be replayed. The only
    safe answer is to clear L1 and the version mirror, which the listener
    does (and says why), instead of going on with the lost change unapplied.
    Kills: subscriber-d5687a, subscriber-5e97a7 (a log that does not reach
    back crashes the resync), subscriber-84075b (no wipe: the lost change's
    key still served from L1)."""
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b", "c")
    before = reader.get_stats()
    seq = await _counter(raw)
    tap.drop.add(seq + 1)
    await writer.set("a", "new a")  # lost
    await raw.xtrim(LAYOUT.log, maxlen=0, approximate=False)
    await writer.delete("b")  # reveals the gap; the log starts after it
    await eventually(lambda: _in_sync(reader, seq + 2))
    assert resyncs.reasons == [f"gap {seq}→{seq + 2}"]
    assert reader.counters.l1_clears == before["l1_clears"] + 1
    assert reader.counters.listener_errors == 0
    hits = reader.counters.l1_hits
    assert await reader.get("a") == "new a"
    assert await reader.get("c") == "old c"
    assert reader.counters.l1_hits == hits  # L1 was cleared


async def test_a_restarted_server_wipes_l1_even_when_its_counter_is_ahead(
    server: RedisServer,
    make_cache: CacheFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis restarts (a new run id) and its counter is ahead of the reader's
    last number by the time the listener is back (a restored backup, an
    AOF): the numbers do not describe the same history, so the listener
    clears L1, saying that Redis restarted, rather than trying the log. It
    then knows the new server: a later lost message is replayed, not wiped.
    Kills: subscriber-f73085 (a new server with a counter ahead taken for a
    gap), subscriber-b31a6a (the new server id not kept: every later resync
    wipes)."""
    caplog.set_level(logging.WARNING, logger="twotier")
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await _cached_everywhere(writer, reader, "a")
    last = _listener(reader)._last_seq
    assert last is not None
    tap.connectable.clear()
    server.kill()
    await eventually(lambda: _true(not reader.redis_available))
    server.launch()
    async with aioredis.Redis.from_url(server.url) as fresh:
        await fresh.set(LAYOUT.seq, last + 5)
    clears = reader.counters.l1_clears
    tap.connectable.set()
    await eventually(lambda: _true(reader.redis_available), timeout=15)
    assert reader.counters.l1_clears == clears + 1
    assert _warnings(caplog, "connected; Redis restarted or was flushed")
    assert not _warnings(caplog, "the log does not reach back")
    # The new server is the one it knows now: a gap is replayed from its log.
    await _cached_everywhere(writer, reader, "b", "c")
    async with aioredis.Redis.from_url(server.url) as fresh:
        seq = int(await fresh.get(LAYOUT.seq) or 0)
    tap.drop.add(seq + 1)
    await writer.delete("b")
    await writer.delete("c")
    await eventually(lambda: _in_sync(reader, seq + 2))
    assert reader.counters.l1_clears == clears + 1
    assert await reader.get("b") is None


async def test_nothing_stale_is_served_while_a_resync_is_under_way(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag invalidation is lost; the next change reveals the gap, and the
    replay takes its time (a slow log read). Until the repair lands, L1 is
    suspended and the version mirror untrusted: reads meanwhile get the
    current values from Redis, the key changed since is not served from L1,
    the tagged entry is checked against Redis's tag versions and not served.
    Kills: subscriber-3001ac, subscriber-1b75ee (L1 served during the
    resync: the old value), subscriber-937199, subscriber-abbc98 (the mirror
    trusted during the resync: the invalidated tagged entry served)."""
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=30.0)
    await writer.set("tagged", "old", tags=["t"])
    await _cached_everywhere(writer, reader, "a")
    assert await reader.get("tagged") == "old"
    tier = _listener(reader)._tier
    log_after = tier.log_after
    reading, release = asyncio.Event(), asyncio.Event()

    async def slow_log_after(seq: int) -> list[Message] | None:
        reading.set()
        await release.wait()
        return await log_after(seq)

    monkeypatch.setattr(tier, "log_after", slow_log_after)
    seq = await _counter(raw)
    tap.drop.add(seq + 1)
    await writer.invalidate_tag("t")  # lost
    await writer.set("a", "new a")  # reveals the gap
    await asyncio.wait_for(reading.wait(), 10)
    hits = reader.counters.l1_hits
    assert await reader.get("a") == "new a"
    assert await reader.get("tagged") is None
    assert reader.counters.l1_hits == hits
    release.set()
    await eventually(lambda: _in_sync(reader, seq + 2))
    assert await reader.get("tagged") is None
    assert await reader.get("a") == "new a"


async def test_an_unreadable_message_clears_l1_and_the_listener_goes_on(
    make_cache: CacheFactory,
    raw: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage on the channel (anyone allowed to publish there can send it):
    what it meant is unknown, so L1 is cleared, the message counted and
    logged; it is no failure of the listener (no reconnect, no resync), and
    the next change is applied as usual.
    Kills: subscriber-c37cf7, subscriber-b71d45 (not counted),
    subscriber-e648d4 (not logged), subscriber-bad7aa (L1 kept),
    subscriber-73b49b (the garbage then taken for a message: a listener
    failure)."""
    caplog.set_level(logging.WARNING, logger="twotier")
    writer = await make_cache()
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b")
    before = reader.get_stats()
    await raw.publish(LAYOUT.channel, b"\xff\xfe garbage")
    await eventually(lambda: _true(reader.counters.bad_messages == before["bad_messages"] + 1))
    assert _warnings(caplog, "unreadable invalidation message")
    hits = reader.counters.l1_hits
    assert await reader.get("a") == "old a"  # from L2: L1 was cleared
    assert reader.counters.l1_hits == hits
    await writer.delete("b")
    seq = await _counter(raw)
    await eventually(lambda: _in_sync(reader, seq))
    assert await reader.get("b") is None
    assert reader.counters.listener_errors == 0
    assert reader.counters.resyncs == before["resyncs"]
    assert reader.get_stats()["last_error"] is None


async def test_a_dropped_channel_is_subscribed_again_and_what_came_meanwhile_replayed(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server says the subscription is gone (in a cluster, the channel's
    slot moved to another node; the tap hands the listener that frame in
    place of a change's message). The listener subscribes again, resyncs,
    and the change whose message was lost with the old subscription is
    replayed from the log.
    Kills: subscriber-9e803a, subscriber-7a8c08 (the frame ignored: no new
    subscription, the change never applied)."""
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b")
    tap.inject.append(("unsubscribed", b""))
    await writer.delete("a")  # its message is lost in the frame's place
    seq = await _counter(raw)
    await eventually(lambda: _true(tap.subscriptions == 2))
    await eventually(lambda: _in_sync(reader, seq))
    assert await reader.get("a") is None
    assert await _served_from_l1(reader, "b", "old b")


async def test_a_counter_holding_foreign_data_counts_as_zero_for_the_idle_check(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something overwrote the change counter with a non-number. The listener
    reads it as zero, as `RedisTier.current_seq` does: its next idle check
    (RESP3: the counter read on the subscription) sees the counter went
    back, resyncs and clears L1, as for a flush. After that the counter is
    where the listener left it: later idle checks start no resync.
    Kills: subscriber-a83d13 (foreign data read as no number: a resync at
    every idle check)."""
    tap = Tap()
    tap.install(monkeypatch)
    cache = await make_cache(health_interval=0.1, protocol=3)
    await cache.set("k", "v")
    clears = cache.counters.l1_clears
    await raw.set(LAYOUT.seq, b"not a number")
    await eventually(lambda: _true(cache.counters.l1_clears == clears + 1), timeout=10)
    await eventually(lambda: _in_sync(cache, 0))
    attempts = Attempts(cache, monkeypatch)
    answers = tap.answers
    await eventually(lambda: _true(tap.answers >= answers + 4), timeout=10)
    assert attempts.count == 0
    assert cache.counters.l1_clears == clears + 1


async def test_a_change_made_while_subscribing_is_no_sign_of_a_flush(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change lands between the subscription's confirmation and the first
    resync's counter read: its message arrives with a number the counter
    already covered. On a first connection that is a late copy, not a
    counter that went back: no second resync.
    Kills: subscriber-87f403 (the first connection's floor set to the
    counter: the late copy taken for a flush)."""
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    resyncs_started: list[int] = []
    tier_type = type(_listener(writer)._tier)
    server_id = tier_type.server_id

    async def server_id_after_a_change(tier: Any) -> str:
        resyncs_started.append(1)
        if len(resyncs_started) == 1:  # the new instance's first resync
            await writer.delete("landed meanwhile")
        return await server_id(tier)

    monkeypatch.setattr(tier_type, "server_id", server_id_after_a_change)
    late = await make_cache(health_interval=30.0)
    seq = await _counter(raw)
    await writer.set("after", "x")
    await eventually(lambda: _in_sync(late, seq + 1))
    assert len(resyncs_started) == 1  # the first connection's, no other
    assert late.counters.resyncs == 0
    assert tap.subscriptions == 1


async def test_a_replay_that_reaches_past_the_counter_read_keeps_its_last_number(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change lands between the resync's counter read and its log read:
    the replay applies it too and stays at its number. Its own copy, arriving
    later over pub/sub, is then a late copy: applied once, not twice.
    Kills: subscriber-73b7e5, subscriber-8966e3, subscriber-1bc6fd (the last
    number put back to the counter read after a replay: the change applied
    again when its copy comes)."""
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b", "c", "d")
    before = reader.get_stats()
    tier = _listener(reader)._tier
    log_after = tier.log_after

    async def log_after_a_change(seq: int) -> list[Message] | None:
        await writer.delete("c")  # after the counter read, before the log read
        return await log_after(seq)

    monkeypatch.setattr(tier, "log_after", log_after_a_change)
    seq = await _lose_a_and_reveal_it(writer, raw, tap)
    await eventually(lambda: _in_sync(reader, seq + 3))
    monkeypatch.setattr(tier, "log_after", log_after)
    await writer.delete("d")  # after the late copy of seq + 3
    await eventually(lambda: _in_sync(reader, seq + 4))
    assert reader.counters.invalidations_received == before["invalidations_received"] + 4
    assert reader.counters.resyncs == before["resyncs"] + 1


async def test_a_resync_slower_than_the_health_interval_is_not_cut_short(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's log read takes three health intervals (a long log, a slow
    server). The idle check is off meanwhile: the resync completes, and the
    listener is in sync, L1 served again, without reconnecting.
    Kills: subscriber-67f544 (the idle timer left running: every resync cut
    short at the interval, L1 suspended for good)."""
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=0.2)
    await _cached_everywhere(writer, reader, "a", "b", "c")
    tier = _listener(reader)._tier
    log_after = tier.log_after

    async def slow_log_after(seq: int) -> list[Message] | None:
        await asyncio.sleep(0.6)
        return await log_after(seq)

    monkeypatch.setattr(tier, "log_after", slow_log_after)
    seq = await _lose_a_and_reveal_it(writer, raw, tap)
    await eventually(lambda: _in_sync(reader, seq + 2), timeout=10)
    assert tap.subscriptions == 1
    assert await reader.get("a") is None
    assert await _served_from_l1(reader, "c", "old c")


async def test_a_resync_call_that_times_out_ends_in_a_reconnect_and_a_full_resync(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay's log read times out. The resync is not left half done (L1
    suspended, the change unapplied): the listener reconnects, resyncs
    again, and replays the change.
    Kills: subscriber-29645e (the timeout taken for the idle timer's: the
    resync abandoned, L1 suspended until some later message)."""
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b", "c")
    tier = _listener(reader)._tier
    log_after = tier.log_after
    calls = 0

    async def log_after_timing_out_once(seq: int) -> list[Message] | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("the log read timed out")
        return await log_after(seq)

    monkeypatch.setattr(tier, "log_after", log_after_timing_out_once)
    seq = await _lose_a_and_reveal_it(writer, raw, tap)
    await eventually(lambda: _in_sync(reader, seq + 2), timeout=10)
    assert tap.subscriptions == 2
    assert await reader.get("a") is None
    assert await _served_from_l1(reader, "c", "old c")


async def test_close_ends_the_listener_and_leaves_the_channel(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """close() ends the listener's task and its subscription: the server
    counts no subscriber on the channel afterwards.
    Kills: subscriber-a5b1be (close() returns at once, the listener left
    running and subscribed), subscriber-72d90f (the task never cancelled:
    close() waits for it for ever)."""
    cache = await make_cache(health_interval=30.0)
    task = cache._link._listener_task
    assert task is not None
    [(_, subscribers)] = await raw.pubsub_numsub(LAYOUT.channel)
    assert subscribers == 1
    await cache.close()
    assert task.done()

    async def no_subscriber() -> bool:
        [(_, subscribers)] = await raw.pubsub_numsub(LAYOUT.channel)
        return bool(subscribers == 0)

    await eventually(no_subscriber)


async def test_a_counter_back_at_the_last_replays_floor_is_a_counter_that_went_back(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gaps in a row, each replayed from the log: the second replay's
    floor is the number the first one ended at. Then the counter goes back
    (restored, rolled back by hand) so that the next change carries exactly
    that number: not a late copy of the last replay (those are above its
    floor) but a counter that went back. The listener resyncs at once and
    clears L1.
    Kills: subscriber-a96f3e (a number equal to the floor taken for a late
    copy), subscriber-81fa29 (a replay that leaves the floor where it was)."""
    writer = await make_cache()
    tap, resyncs = Tap(), Resyncs()
    tap.install(monkeypatch)
    reader = await make_cache(observers=[resyncs], health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b", "c", "d", "e")
    seq = await _counter(raw)
    tap.drop.update({seq + 1, seq + 3})
    await writer.delete("a")  # lost
    await writer.delete("b")  # gap: replayed, the floor at seq
    await eventually(lambda: _in_sync(reader, seq + 2))
    await writer.delete("c")  # lost
    await writer.delete("d")  # gap: replayed, the floor at seq + 2
    await eventually(lambda: _in_sync(reader, seq + 4))
    clears = reader.counters.l1_clears
    await raw.set(LAYOUT.seq, seq + 1)
    await writer.set("x", "new x")  # numbered seq + 2 again
    await eventually(lambda: _true(reader.counters.l1_clears == clears + 1))
    assert resyncs.reasons[-1] == f"sequence went back {seq + 4}→{seq + 2}"
    hits = reader.counters.l1_hits
    assert await reader.get("e") == "old e"  # from L2: L1 was cleared
    assert reader.counters.l1_hits == hits


async def _lease_held(raw: aioredis.Redis, key: str) -> bool:
    return bool(await raw.exists(LAYOUT.lease(key)))


async def test_a_waiter_on_another_instances_lease_is_woken_by_its_end(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B waits on A's fill lease; A's loader fails and A gives the lease back,
    announcing it (an unnumbered "f" message). B is woken by that message,
    not by the lease's expiry (30 s), loads for itself; the message starts
    no resync (it carries no number).
    Kills: subscriber-bcadb4 (the lease's end not passed on: B waits it
    out), subscriber-77525b (the unnumbered message then taken for a counter
    that went back: a resync)."""
    a = await make_cache(lease_ttl=30.0)
    b = await make_cache(lease_ttl=30.0, health_interval=30.0)
    attempts = Attempts(b, monkeypatch)
    async with _b_waiting_on_a_failing_load_of_a(a, b, raw) as (gate, waiter):
        gate.set()
        assert await asyncio.wait_for(waiter, 10) == "b's own"
    assert attempts.count == 0


async def test_a_waiter_whose_lease_end_message_was_lost_is_woken_by_the_next_resync(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "f" message that ends A's lease is lost (it is not numbered, so
    no gap shows it, and the log does not keep it). The next resync (here
    for a gap in the numbered changes, the link staying up) wakes every
    waiter: B looks again and loads, instead of waiting out the lease.
    Kills: subscriber-f1db69 (a resync wakes nobody: B waits 30 s)."""
    a = await make_cache(lease_ttl=30.0)
    tap = Tap()
    tap.install(monkeypatch)
    b = await make_cache(lease_ttl=30.0, health_interval=30.0)
    async with _b_waiting_on_a_failing_load_of_a(a, b, raw) as (gate, waiter):
        tap.drop.add(0)  # the unnumbered "f"
        gate.set()
        await eventually(lambda: _true(tap.dropped == [0]), timeout=5)
        assert not waiter.done()
        seq = await _counter(raw)
        tap.drop.add(seq + 1)
        await a.delete("x")  # lost
        await a.delete("y")  # reveals the gap: a resync, the link up all along
        assert await asyncio.wait_for(waiter, 10) == "b's own"
        assert tap.subscriptions == 1


async def test_a_hint_from_another_instance_evicts_what_it_names_and_one_of_its_own_does_not(
    make_cache: CacheFactory, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hint ("h", unnumbered): another instance's change that Redis refused
    for now is on its way. The listener evicts what it names from L1 at once;
    a hint of its own instance (which applied its change itself) is not
    applied again; neither starts a resync (a hint carries no number).
    Kills the hint branch of `_handle`: subscriber-d10964 (not applied),
    subscriber-5f4182 (only its own applied), subscriber-d4c118 (then taken
    for a counter that went back: a resync)."""
    if "h" not in KINDS:
        pytest.skip("this version has no hints")
    writer = await make_cache()
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b")
    attempts = Attempts(reader, monkeypatch)
    own = _listener(reader)._origin
    for origin, key in (("stranger", "a"), (own, "b")):
        hint = Message("h", (key,), origin, 0, ("k",), time.time())  # type: ignore[arg-type,unused-ignore]
        await raw.publish(LAYOUT.channel, hint.encode())
    await writer.set("after", "x")  # a numbered change behind the hints
    seq = await _counter(raw)
    await eventually(lambda: _in_sync(reader, seq))
    assert attempts.count == 0
    assert await _served_from_l1(reader, "b", "old b")
    hits = reader.counters.l1_hits
    await reader.get("a")
    assert reader.counters.l1_hits == hits  # evicted


async def test_an_unexpected_failure_is_counted_reported_and_takes_the_link_down_until_resynced(
    make_cache: CacheFactory,
    raw: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Applying a message fails with an error nobody expected (a bug on the
    way to L1). Until the listener has reconnected and resynced (held back
    here), the instance counts the failure, logs it as an error, reports
    why (`last_error`) and Redis as not available, and serves nothing from
    L1; once back, `last_error` is cleared and changes apply again.
    Kills: subscriber-2e6a67, subscriber-7efde9 (not counted),
    subscriber-c5ba80 (no cause reported), subscriber-1d3fd1 (not logged),
    subscriber-a27c9a (the link still counted as up)."""
    caplog.set_level(logging.WARNING, logger="twotier")
    writer = await make_cache()
    tap = Tap()
    tap.install(monkeypatch)
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a", "b")
    _apply_fails_once(reader, monkeypatch)
    tap.connectable.clear()
    await writer.delete("a")
    await eventually(lambda: _true(reader.counters.listener_errors == 1))
    stats = reader.get_stats()
    assert stats["redis_available"] is False
    assert "unexpected RuntimeError" in stats["last_error"]
    assert [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "listener failed" in r.getMessage()
    ]
    hits = reader.counters.l1_hits
    assert await reader.get("b") == "old b"  # from L2
    assert reader.counters.l1_hits == hits
    tap.connectable.set()
    await eventually(lambda: _true(reader.redis_available), timeout=10)
    assert reader.get_stats()["last_error"] is None
    await writer.delete("b")
    seq = await _counter(raw)
    await eventually(lambda: _in_sync(reader, seq))
    assert await reader.get("b") is None
    assert reader.counters.listener_errors == 1


async def test_a_change_whose_apply_failed_is_not_served_from_l1_after_the_resync(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the test above: a message whose application fails unexpectedly
    was already counted (`_last_seq`), so the resync after the failure found
    nothing missing, and the key it changed stayed in L1 with its old value
    until its TTL. What was applied of it is unknown: the failure wipes L1."""
    writer = await make_cache()
    reader = await make_cache(health_interval=30.0)
    await _cached_everywhere(writer, reader, "a")
    _apply_fails_once(reader, monkeypatch)
    await writer.delete("a")
    await eventually(lambda: _true(reader.counters.listener_errors == 1))
    await eventually(lambda: _true(reader.redis_available), timeout=10)
    assert await reader.get("a") is None


async def test_in_sync_the_version_mirror_answers_for_the_tags_it_knows(
    make_cache: CacheFactory,
) -> None:
    """While the listener is in sync, the version mirror is trusted: a tag's
    version fetched once from Redis judges the next entry carrying that tag
    without another fetch.
    Kills: subscriber-95c710, subscriber-916c45 (the mirror never trusted:
    every tagged read from Redis costs a version fetch)."""
    writer = await make_cache()
    reader = await make_cache(health_interval=30.0)
    await writer.set("one", 1, tags=["t"])
    await writer.set("two", 2, tags=["t"])
    await _cached_everywhere(writer, reader, "plain")
    mirror = _listener(reader)._mirror
    loads = mirror.loads
    assert await reader.get("one") == 1
    assert mirror.loads == loads + 1
    assert await reader.get("two") == 2
    assert mirror.loads == loads + 1


async def test_a_closed_cache_reports_redis_as_not_available(make_cache: CacheFactory) -> None:
    """After close() nothing listens any more: the stats must not say Redis
    is available (they did: the listener's connected flag outlived it)."""
    cache = await make_cache()
    assert cache.get_stats()["redis_available"] is True
    await cache.close()
    assert cache.get_stats()["redis_available"] is False
