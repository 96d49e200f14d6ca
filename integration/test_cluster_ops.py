"""A cluster operated under the cache (issue 21): slot migrations.

While a slot migrates, Redis answers scripts whose keys are split between the
two nodes with TRYAGAIN, and keys already moved with ASK. A change must not be
queued silently for that (no other instance would hear of it until the slot
is assigned), and a control script must not run on the importing node, whose
channel nobody listens to yet. The migrations here are made by hand, with the
cluster commands a resharding tool sends (SETSLOT IMPORTING/MIGRATING,
MIGRATE, SETSLOT NODE).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from twotier._redis import MIGRATION_TIMEOUTS, Layout
from twotier.testing import LocalCluster, RedisServer

from ._chaos_check import Timeline
from ._workers import CHAOS_SETTINGS
from .conftest import FLAVOURS, started_caches
from .test_chaos import (
    LAYOUT,
    PROPAGATION_BOUND,
    READERS,
    _chaos_workers,
    _publish,
    _run_workers,
    _stop_workers,
    check,
)
from .test_read_races import eventually

OPTIONS = {"redis_timeout": 0.5, "health_interval": 0.2}


@pytest.fixture(scope="module", params=FLAVOURS)
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with LocalCluster.start(request.param, replicas=0) as local:
        yield local


class Migration:
    """One slot moving from its owner to another master, step by step."""

    def __init__(self, cluster: LocalCluster, name: str, to: RedisServer | None = None) -> None:
        self.cluster = cluster
        self.source = cluster.owner_of(name)
        self.target = to or next(m for m in cluster.masters() if m is not self.source)
        self._source, self._target = _client(self.source), _client(self.target)
        self.slot = int(self._source.cluster("keyslot", name))

    def begin(self) -> None:
        self._target.cluster("setslot", self.slot, "importing", self.cluster.node_id(self.source))
        self._source.cluster("setslot", self.slot, "migrating", self.cluster.node_id(self.target))

    def move(self, *names: str) -> None:
        port = self.target.port
        self._source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *names)

    def keys(self, count: int = 100) -> list[str]:
        """Keys of the slot still on the source."""
        names = self._source.cluster("getkeysinslot", self.slot, count)
        return [n if isinstance(n, str) else n.decode() for n in names]

    def holds_old_entry(self, name: str) -> bool:
        """Whether the importing node holds *name* (moved there, not yet changed)."""
        with redis.Redis(port=self.target.port, single_connection_client=True) as client:
            client.execute_command("ASKING")  # the slot is not the node's yet
            return bool(client.exists(name))

    def move_all(self) -> None:
        while names := self.keys():
            self.move(*names)

    def finish(self, after: float = 0.0) -> threading.Thread:
        """Assign the slot to the target (in a thread, *after* seconds)."""

        def assign() -> None:
            time.sleep(after)
            target_id = self.cluster.node_id(self.target)
            self._target.cluster("setslot", self.slot, "node", target_id)
            try:
                self._source.cluster("setslot", self.slot, "node", target_id)
            except redis.ResponseError as exc:
                # A master that gave its last slot away has already made itself a
                # replica of the node that took it (cluster-allow-replica-migration)
                if "only with masters" not in str(exc):
                    raise

        thread = threading.Thread(target=assign)
        thread.start()
        return thread


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port)


def _namespace(label: str) -> str:
    return f"ops{label}{time.monotonic_ns() % 10**9}"


async def test_a_change_during_an_entry_slot_migration_is_applied_not_queued(
    cluster: LocalCluster,
) -> None:
    """The entry has moved, its lease name not: the write script's keys are split
    (TRYAGAIN on the importing node, ASK on the source). Before, redis-py
    followed the ASK on two connections until its redirections ran out ("TTL
    exhausted"), and the change was queued: no other instance heard of it
    until the slot was assigned."""
    namespace = _namespace("e")
    async with started_caches(cluster.url, 2, namespace=namespace, **OPTIONS) as (writer, reader):
        await writer.set("k", "v1")
        assert await reader.get("k") == "v1"
        migration = Migration(cluster, Layout(namespace).entry("k"))
        migration.begin()
        migration.move(Layout(namespace).entry("k"))
        assigned = migration.finish(after=0.2)  # well within the migration budget
        await writer.set("k", "v2")
        await asyncio.to_thread(assigned.join)
        stats = writer.get_stats()
        assert stats["queued_ops_pending"] == 0, stats["last_error"]
        await eventually(lambda: _is(reader.get("k"), "v2"))


async def test_a_control_script_waits_out_the_ask_window_and_reaches_every_listener(
    cluster: LocalCluster,
) -> None:
    """Every control key has moved, the slot is not assigned yet: a control
    script that followed the ASK would run on the importing node, and its
    publish reach nobody (every listener is subscribed at the source). It waits
    for the assignment instead, and the other instance drops its entry."""
    namespace = _namespace("c")
    layout = Layout(namespace)
    async with started_caches(cluster.url, 2, namespace=namespace, **OPTIONS) as (writer, reader):

        @reader.cached(ttl=60, tags=["t"])
        async def row() -> int:
            return loads

        loads = 1
        assert await row() == 1
        migration = Migration(cluster, layout.seq)
        migration.begin()
        migration.move_all()  # the control keys, the heartbeats of the instances too
        assigned = migration.finish(after=0.2)
        loads = 2
        await writer.invalidate_tag("t")
        await asyncio.to_thread(assigned.join)
        assert writer.get_stats()["queued_ops_pending"] == 0, writer.get_stats()["last_error"]
        await eventually(lambda: _is(row(), 2))


#: A change's budget of 0.25 s (5 × redis_timeout): the migrations below are
#: slower. No idle check within a test's window (the listener at the control
#: slot's source notices its keys moving at its next one), so only a hint tells.
HINTED = {"redis_timeout": 0.05, "health_interval": 5.0}


async def test_a_change_of_a_key_that_waits_past_its_budget_is_hinted_to_the_others(
    cluster: LocalCluster,
) -> None:
    """Issue 21, item 2: the entry's slot migrates slower than a change's budget,
    so the writer's `set` is queued (TRYAGAIN until the slot is assigned). The
    other instance is told at once by a hint: it drops its L1 copy and does not
    take the old entry, which Redis still holds, until the change lands. Before,
    it served the old value from L1 until the slot was assigned."""
    namespace = _namespace("h")
    entry = Layout(namespace).entry("k")
    async with started_caches(cluster.url, 2, namespace=namespace, **HINTED) as (writer, reader):
        await writer.set("k", "v1")
        assert await reader.get("k") == "v1"
        migration = Migration(cluster, entry)
        migration.begin()
        migration.move(entry)  # the entry moved, its lease name not: TRYAGAIN
        try:
            await writer.set("k", "v2")
            assert writer.get_stats()["queued_ops_pending"] == 1  # past the budget
            assert await writer.get("k") == "v2"  # read-your-writes
            await eventually(lambda: _is(reader.get("k"), None), timeout=3.0)
            assert migration.holds_old_entry(entry)  # Redis still has v1: the test has teeth
            assert await reader.get("k") is None  # and it stays held
        finally:
            migration.move_all()  # what else the slot holds (its lease name), as a tool would
            await asyncio.to_thread(migration.finish().join)

        async def delivered() -> bool:
            return writer.get_stats()["queued_ops_pending"] == 0

        await eventually(delivered, timeout=15.0)  # retried every health interval
        assert await reader.get("k") is None  # delivered as an invalidation of the key


async def test_a_tag_invalidation_that_waits_past_its_budget_is_hinted_to_the_others(
    cluster: LocalCluster,
) -> None:
    """The same for the control slot: its keys have moved and the slot is not
    assigned past the budget, so `invalidate_tag` is queued (a control script
    never runs on the importing node). The hint still reaches the listeners,
    which are subscribed at the source: the other instance reloads instead of
    serving its L1 copy, or the L2 entry still current under the old version."""
    namespace = _namespace("t")
    layout = Layout(namespace)
    async with started_caches(cluster.url, 2, namespace=namespace, **HINTED) as (writer, reader):
        loads = 0

        @reader.cached(ttl=60, tags=["t"])
        async def row() -> int:
            nonlocal loads
            loads += 1
            return loads

        assert await row() == 1
        migration = Migration(cluster, layout.seq)
        migration.begin()
        migration.move_all()
        try:
            await writer.invalidate_tag("t")
            assert writer.get_stats()["queued_ops_pending"] == 1
            await eventually(lambda: _is(row(), 2), timeout=3.0)
            # A load while the change is held reads the truth, which the writer
            # changed first: newer than the change on its way, so it is cached.
            assert await row() == 2
        finally:
            await asyncio.to_thread(migration.finish().join)

        async def delivered() -> bool:
            return writer.get_stats()["queued_ops_pending"] == 0

        await eventually(delivered, timeout=15.0)  # retried every health interval
        await eventually(lambda: _is(row(), 3), timeout=15.0)  # the bump landed and was heard


async def _is(read: object, expected: object) -> bool:
    return await read == expected  # type: ignore[misc]


@pytest.mark.parametrize(
    "what", ["entry slots", "control slot", "control slot past the budget", "scale out and in"]
)
async def test_chaos_slots_migrate_under_load_and_no_read_is_stale(
    cluster: LocalCluster, tmp_path: Path, what: str
) -> None:
    """Readers in three processes and a writer in a fourth (SQLite as the
    truth) while slots move key by key, as a resharding tool moves them: the
    slots holding the namespace's entries, or its control slot, each key a
    pause after the last, each slot within a change's migration budget
    (5 × redis_timeout: 0.25 s here), or the control slot slower than that:
    a change that waits past its budget is queued until the slot is assigned,
    and hinted to the others meanwhile (before, redis-py followed the ASK to
    the importing node, where the change's publish reached no listener: 1 to
    8 reads stale by up to 65 ms). "scale out and in": a fourth master joins, takes the
    control slot and the entry slots, gives them back and leaves (issue 21,
    item 6). No read may be stale at any time, during the migration included
    (the trial before issue 21's fixes: 57 stale reads moving entry slots,
    3,024 moving the control slot), none may fail, and nothing stays queued."""
    await asyncio.to_thread(cluster.flush)  # the source starts anew: so must the cache

    async def scenario(processes: dict[str, asyncio.subprocess.Process]) -> Timeline:
        start = time.monotonic()
        await asyncio.sleep(2.5)
        began = time.monotonic()
        budget = MIGRATION_TIMEOUTS * float(CHAOS_SETTINGS["redis_timeout"])
        if what == "control slot past the budget":  # six keys 50 ms apart: 0.3 s
            moved = await asyncio.to_thread(_migrate, cluster, "control slot", budget / 5)
        elif what == "scale out and in":
            moved = await asyncio.to_thread(_scale_out_and_in, cluster, budget / 10)
        else:
            moved = await asyncio.to_thread(_migrate, cluster, what, budget / 10)
        done = time.monotonic()
        await asyncio.sleep(2.0)
        stop = await _stop_workers(processes, tmp_path)
        # One phase: every read counts, the migration's included.
        return Timeline(
            start,
            stop,
            stop,
            stop,
            stop,
            event_names=("migration", "assigned"),
            events=((f"{what}: {moved} keys moved", began), ("every slot assigned", done)),
        )

    run = await _run_workers(cluster, tmp_path, _chaos_workers(), scenario)  # type: ignore[arg-type]
    report = check(run.reads, run.writes, run.timeline, PROPAGATION_BOUND)
    report.stats = run.stats
    title = f"cluster ({cluster.flavour}), {what} migrated key by key: {READERS} readers, 1 writer"
    _publish(report, title, tmp_path / f"chaos-migration-{what.replace(' ', '-')}.json")
    assert report.phases["connected"].reads > 100, report.phases["connected"]
    assert report.failures() == [], report.format(title)
    assert report.errors == 0, report.format(title)
    for name, stats in run.stats.items():
        assert stats.get("queued_ops_pending", 0) == 0, (name, stats.get("last_error"))


def _scale_out_and_in(cluster: LocalCluster, pause: float) -> int:
    """A new master joins and takes the namespace's slots, the control slot
    included; then they move back and it leaves. How many keys moved."""
    new = cluster.add_master()
    moved = 0
    try:
        for what in ("control slot", "entry slots"):
            moved += _migrate(cluster, what, pause, to=new)
        back = next(m for m in cluster.masters() if m is not new)
        for what in ("control slot", "entry slots"):
            moved += _migrate(cluster, what, pause, to=back, only_from=new)
    finally:
        cluster.remove(new)
    return moved


def _migrate(
    cluster: LocalCluster,
    what: str,
    pause: float,
    to: RedisServer | None = None,
    only_from: RedisServer | None = None,
) -> int:
    """Move *what* to another master (*to*, else any), key by key, only the
    slots *only_from* holds if given; how many keys moved."""
    if what == "control slot":
        names = [LAYOUT.seq]
    else:  # every slot holding one of the namespace's entries
        names = sorted(
            {
                name.decode()
                for master in cluster.masters()
                for name in _client(master).scan_iter(match=LAYOUT.entry_pattern, count=1000)
            }
        )
        assert names, "the readers stored no entry yet"
    moved, slots = 0, set()
    for name in names:
        migration = Migration(cluster, name, to)
        if migration.slot in slots or migration.source is migration.target:
            continue
        if only_from is not None and migration.source is not only_from:
            continue
        slots.add(migration.slot)
        migration.begin()
        while keys := migration.keys():
            migration.move(keys[0])
            moved += 1
            time.sleep(pause)
        migration.finish().join()
    return moved
