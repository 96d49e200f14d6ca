"""A cluster entry shard that loses an acknowledged change in a failover
(issue 21, case 2), made on purpose: the shard's replica is paused and its
replication link cut, the change is acknowledged by the master alone, the
master is killed and the replica taken over, without the change."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis

from twotier._redis import Layout
from twotier.testing import LocalCluster, RedisServer


def key_off_the_control_shard(cluster: LocalCluster, layout: Layout) -> str:
    """A key whose entry lives on another master than the namespace's control
    slot (whose own losses a new generation covers)."""
    control = cluster.owner_of(layout.seq)
    return next(
        key
        for key in (f"row{i}" for i in range(1000))
        if cluster.owner_of(layout.entry(key)) is not control
    )


async def lose_a_change(
    cluster: LocalCluster, entry: str, change: Callable[[], Awaitable[None]]
) -> tuple[RedisServer, RedisServer]:
    """Make *change* (of the key whose entry is *entry*) reach only its shard's
    master, then kill that master and take its replica over: (the dead
    master, the promoted replica, which lacks the change)."""
    master = cluster.owner_of(entry)
    replica = cluster.replica_of(master)
    async with aioredis.Redis(port=master.port) as on_master:
        assert await on_master.wait(1, 2000) == 1  # what came before is on the replica
        replica.pause()
        try:
            # Cut the replication link: the paused replica reconnects only
            # after it resumes, and then the master is dead. (A pause alone is
            # not enough: the kernel would keep the change for it.)
            await on_master.client_kill_filter(_type="replica")
            await change()  # acknowledged by the master alone
            master.kill()
        finally:
            replica.resume()
    await asyncio.to_thread(_take_over, cluster, replica)
    return master, replica


def _take_over(cluster: LocalCluster, replica: RedisServer, timeout: float = 20.0) -> None:
    """Promote *replica* of a dead master at once (`CLUSTER FAILOVER TAKEOVER`),
    unless the cluster's own failover was quicker."""
    deadline = time.monotonic() + timeout
    with redis.Redis(port=replica.port, decode_responses=True) as client:
        while client.info("replication")["role"] != "master":
            assert time.monotonic() < deadline, "the replica was never promoted"
            with contextlib.suppress(redis.ResponseError):
                client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            time.sleep(0.1)
    cluster.wait_healthy(timeout)
