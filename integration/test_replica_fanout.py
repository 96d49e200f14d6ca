"""Issue 20, item 5: listeners on replicas (`listen_on_replicas=True`).

The master sends each change to its replicas, and each replica to the
listeners subscribed on it: the fan-out leaves the master. These tests run a
real Sentinel set (a master, a replica) and a real cluster (3 masters, 3
replicas), and check that the listeners are where the option says, that
every change still reaches every instance, and that a replica which stops
following its master — cut off, promoted or killed — is left within a
health interval or two, with nothing missed, and taken back when it
returns; under load too (the chaos run), and with the reply reader twotier
uses when hiredis is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.contract import eventually
from twotier import MISS, TwoTierCache, _batch, _channel
from twotier._redis import Layout
from twotier._topology import Bus
from twotier.cli.bench.fanout import measure
from twotier.testing import LocalCluster, LocalSentinel
from twotier.testing._server import free_port

from ._chaos_check import Timeline
from .conftest import FLAVOURS, started_caches, subscribers
from .test_chaos import (
    _chaos_workers,
    _run_workers,
    assert_no_stale_read_outside_the_trouble,
    settled_timeline,
)

OPTIONS = {"listen_on_replicas": True, "health_interval": 0.2, "redis_timeout": 0.5}
HEARD = 3.0  # seconds: "at once" with room for a loaded CI machine


@pytest.fixture(scope="module", params=FLAVOURS)
def sentinel(request: pytest.FixtureRequest) -> Iterator[LocalSentinel]:
    with LocalSentinel.start(request.param) as local:
        yield local


def _namespace() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


async def _replica_listed(cluster: LocalCluster, layout: Layout) -> None:
    """Until every node lists the control slot's replica (`CLUSTER SLOTS`
    leaves out a replica that has replicated nothing yet: a new cluster's;
    each node learns of its progress by gossip)."""
    owner = cluster.owner_of(layout.seq)
    clients = [aioredis.Redis(port=server.port) for server in (owner, *cluster.live())]
    await clients[0].set(f"{layout.seq}-probe", 0)  # the same slot: the same hash tag
    slot = await clients[0].execute_command("CLUSTER", "KEYSLOT", layout.seq)

    async def listed() -> bool:
        for client in clients:
            ranges = await client.execute_command("CLUSTER", "SLOTS")
            if not any(low <= slot <= high and len(nodes) > 1 for low, high, *nodes in ranges):
                return False
        return True

    try:
        await eventually(listed, timeout=10.0)
    finally:
        for client in clients:
            await client.aclose()


async def _heard(writer: TwoTierCache, reader: TwoTierCache, key: str, value: str) -> None:
    """*writer* sets *key*; *reader*, which holds the old value in L1, drops it."""
    await writer.set(key, value, ttl=60)

    async def dropped() -> bool:
        return reader.local.get(key) is MISS

    await eventually(dropped, timeout=HEARD)
    assert await reader.get(key) == value


async def _fans_out(caches: list[TwoTierCache], key: str) -> None:
    """Each cache in turn changes *key*; every other one hears of it."""
    for round_, writer in enumerate(caches):
        for reader in caches:
            await reader.get(key)  # into L1
        for reader in caches:
            if reader is not writer:
                await _heard(writer, reader, key, f"v{round_}")


async def test_sentinel_listeners_are_on_the_replica_and_hear_every_change(
    sentinel: LocalSentinel,
) -> None:
    namespace = _namespace()
    channel = Layout(namespace).channel
    async with started_caches(sentinel.url, 3, namespace=namespace, **OPTIONS) as caches:
        master = sentinel.current_master()
        replica = next(server for server in sentinel.servers if server is not master)
        assert await subscribers(replica, channel, sharded=False) == 3
        assert await subscribers(master, channel, sharded=False) == 0
        await _fans_out(caches, "k")
        assert all(cache.get_stats()["redis_available"] for cache in caches)


async def test_the_replica_check_reads_without_hiredis(
    sentinel: LocalSentinel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`INFO` answers over RESP3 with a verbatim string, a type the
    hand-written reply reader (twotier's when hiredis is not installed)
    refused: every idle check failed, and the listener went back and forth
    between the replica and the master. Several idle checks pass here, the
    listeners stay on the replica, and none reports an error."""
    monkeypatch.setattr(_channel, "new_reader", _batch.Reader)
    namespace = _namespace()
    channel = Layout(namespace).channel
    master = sentinel.current_master()
    replica = next(server for server in sentinel.servers if server is not master)
    async with started_caches(sentinel.url, 2, namespace=namespace, **OPTIONS) as caches:
        await asyncio.sleep(5 * float(OPTIONS["health_interval"]))  # five idle checks
        assert await subscribers(replica, channel, sharded=False) == 2
        for cache in caches:
            assert cache._link is not None
            assert cache._link.listener.last_error is None
        await _fans_out(caches, "k")


async def test_a_replica_cut_off_from_its_master_is_left(sentinel: LocalSentinel) -> None:
    """The replica follows a master that does not answer: it hears no more
    changes, and its counter stops with them, so the counter read alone
    finds nothing missed. The listener's idle check asks the replica whether
    it still follows its master, and subscribes elsewhere: at the master,
    the only other node here."""
    namespace = _namespace()
    channel = Layout(namespace).channel
    master = sentinel.current_master()
    replica = next(server for server in sentinel.servers if server is not master)
    async with started_caches(sentinel.url, 2, namespace=namespace, **OPTIONS) as (a, b):
        raw = aioredis.Redis(port=replica.port)
        try:
            await raw.execute_command("REPLICAOF", "127.0.0.1", free_port())
            await a.set("k", "before", ttl=60)
            assert await b.get("k") == "before"  # in b's L1 now
            await _heard(a, b, "k", "after")  # only through the master

            async def both_left() -> bool:
                return await subscribers(master, channel, sharded=False) == 2

            await eventually(both_left, timeout=HEARD)
        finally:
            await raw.execute_command("REPLICAOF", "127.0.0.1", master.port)
            await raw.aclose()
        await asyncio.to_thread(sentinel.wait_demoted, replica)


async def test_a_replica_cut_off_before_the_listener_comes_is_never_trusted(
    sentinel: LocalSentinel,
) -> None:
    """The same replica, cut off before the instances start. The sentinels
    still offer it (its process is up), and its counter looks in sync with
    nothing ever arriving: checked only when idle, it would be trusted for a
    whole health interval (30 s here). The subscription asks it first, with
    the SUBSCRIBE, and goes to the master at once."""
    namespace = _namespace()
    channel = Layout(namespace).channel
    master = sentinel.current_master()
    replica = next(server for server in sentinel.servers if server is not master)
    raw = aioredis.Redis(port=replica.port)
    await raw.execute_command("REPLICAOF", "127.0.0.1", free_port())
    options = {**OPTIONS, "health_interval": 30.0}
    try:
        async with started_caches(sentinel.url, 2, namespace=namespace, **options) as (a, b):

            async def at_the_master() -> bool:
                return await subscribers(master, channel, sharded=False) == 2

            await eventually(at_the_master, timeout=HEARD)
            assert await subscribers(replica, channel, sharded=False) == 0
            await a.set("k", "before", ttl=60)
            assert await b.get("k") == "before"
            await _heard(a, b, "k", "after")
    finally:
        await raw.execute_command("REPLICAOF", "127.0.0.1", master.port)
        await raw.aclose()
    await asyncio.to_thread(sentinel.wait_demoted, replica)


async def test_listeners_wait_at_the_master_for_a_killed_replica_and_move_back(
    sentinel: LocalSentinel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica is killed: the listeners subscribe at the master, and look
    for a replica every 10 health intervals (asking the sentinels, who soon
    leave the dead one out), not at every interval. Started again, it is
    taken back at the next look: a planned move, logged as such, with L1
    suspended from the old subscription's end until the new one has
    resynced (else a change made in between could be missed for good)."""
    namespace = _namespace()
    channel = Layout(namespace).channel
    master = sentinel.current_master()
    replica = next(server for server in sentinel.servers if server is not master)
    looks = 0
    ready = Bus.replica_ready

    async def counted(bus: Bus, channel: str) -> bool:
        nonlocal looks
        looks += 1
        return await ready(bus, channel)

    monkeypatch.setattr(Bus, "replica_ready", counted)
    async with started_caches(sentinel.url, 2, namespace=namespace, **OPTIONS) as caches:
        losses = [0, 0]
        for index, cache in enumerate(caches):
            assert cache._link is not None
            link_lost = cache._link.listener._on_link_lost

            def lost(index: int = index, link_lost: Callable[[], None] = link_lost) -> None:
                losses[index] += 1
                link_lost()

            cache._link.listener._on_link_lost = lost
        try:
            await asyncio.to_thread(replica.kill)

            async def at_the_master() -> bool:
                return await subscribers(master, channel, sharded=False) == 2

            await eventually(at_the_master, timeout=HEARD)
            before, lost_before = looks, list(losses)
            await asyncio.sleep(30 * float(OPTIONS["health_interval"]))
            # 3 looks each in 30 intervals (one per 10), the first at most 1 early
            assert looks - before <= 2 * 4, looks - before
        finally:
            await asyncio.to_thread(replica.launch)
        with caplog.at_level(logging.INFO, logger="twotier"):

            async def back() -> bool:
                return await subscribers(replica, channel, sharded=False) == 2

            await eventually(back, timeout=HEARD * 4)
        assert caplog.text.count("moving the invalidation channel back to a replica") == 2
        assert [after - was for after, was in zip(losses, lost_before, strict=True)] == [1, 1]
        await _fans_out(caches, "k")
    await asyncio.to_thread(sentinel.wait_demoted, replica)


async def test_cluster_listeners_are_on_the_control_slots_replica(cluster: LocalCluster) -> None:
    namespace = _namespace()
    layout = Layout(namespace)
    await _replica_listed(cluster, layout)
    async with started_caches(cluster.url, 3, namespace=namespace, **OPTIONS) as caches:
        master = cluster.owner_of(layout.seq)
        replica = cluster.replica_of(master)

        async def on_the_replica() -> bool:  # a listener displaced at start looks again
            return await subscribers(replica, layout.channel, sharded=True) == 3

        await eventually(on_the_replica, timeout=HEARD * 2)
        assert await subscribers(master, layout.channel, sharded=True) == 0
        await _fans_out(caches, "k")


async def test_a_promoted_replica_is_left_for_a_replica_of_it(cluster: LocalCluster) -> None:
    """`CLUSTER FAILOVER` promotes the replica the listeners are on. The
    shard channel stays subscribed there (a promotion gains the slot, it
    does not always drop its subscribers), so their idle check tells them:
    the node is a master now. They move to its replica, the old master once
    demoted; one that still resyncs then (it answers MOVED) sends them to
    the master for ten health intervals. Every change is heard on the way."""
    namespace = _namespace()
    layout = Layout(namespace)
    await _replica_listed(cluster, layout)
    async with started_caches(cluster.url, 2, namespace=namespace, **OPTIONS) as (a, b):
        demoted = cluster.owner_of(layout.seq)
        await asyncio.to_thread(cluster.failover, demoted)

        async def moved() -> bool:
            return await subscribers(demoted, layout.channel, sharded=True) == 2

        await eventually(moved, timeout=HEARD * 4)
        await _fans_out([a, b], "k")


async def test_the_fanout_bench_runs_both_modes(sentinel: LocalSentinel) -> None:
    """`python -m twotier.cli.bench.fanout` end to end on a small fleet: every
    event reaches every receiver, where the mode says. No figure is
    compared: docs/scale.md has the measured ones."""
    for replicas in (False, True):
        row = await measure(sentinel, 5, 20, replicas)
        assert row["receivers on the replica"] == (5 if replicas else 0)
        assert row["master CPU per event, µs"] > 0
        assert row["all events at all receivers, ms"] > 0


async def test_chaos_the_replica_killed_and_back_under_load(
    sentinel: LocalSentinel, tmp_path: Path
) -> None:
    """Readers and a writer in separate processes, every instance listening
    on the replica, with SQLite as the truth. The replica is SIGKILLed under
    load and started again two seconds later. The master never stopped:
    every change was acknowledged by it, and no read may be stale at any
    time, the trouble included (each listener sees its connection end,
    suspends L1 and subscribes at the master; later it moves back)."""
    master = sentinel.current_master()
    replica = next(server for server in sentinel.servers if server is not master)
    flag = ("--listen-on-replicas",)

    async def scenario(processes: dict[str, asyncio.subprocess.Process]) -> Timeline:
        start = time.monotonic()
        await asyncio.sleep(2.5)
        on_the_replica = await subscribers(replica, Layout("chaos").channel, sharded=False)
        assert on_the_replica == len(workers), "the listeners are not on the replica"
        began = time.monotonic()
        await asyncio.to_thread(replica.kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(replica.launch)
        return await settled_timeline(
            processes,
            tmp_path,
            start=start,
            trouble=began,
            recovered=time.monotonic(),
            names=("replica killed", "replica back"),
        )

    workers = _chaos_workers(reader_args=lambda i: flag, writer_args=flag)
    try:
        run = await _run_workers(sentinel, tmp_path, workers, scenario)  # type: ignore[arg-type]
    finally:
        if replica.process is None or replica.process.poll() is not None:
            await asyncio.to_thread(replica.launch)
        await asyncio.to_thread(sentinel.wait_demoted, replica)
    title = f"Sentinel ({sentinel.flavour}), listeners on the replica, replica killed and back"
    report = assert_no_stale_read_outside_the_trouble(
        run, title, tmp_path / f"chaos-replica-{sentinel.flavour}.json"
    )
    assert report.stale_outage == 0, report.format(title)
