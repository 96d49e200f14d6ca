"""What the master pays per invalidation with the listeners on it or on its replicas.

    python -m twotier.cli.bench.fanout --topology sentinel --instances 100 --events 200 --repeat 3

`--instances` receivers in this process listen on the master (the default)
or on its replica (`listen_on_replicas=True`), one mode after the other in
each round, on one local Sentinel set (a master, a replica) or one local
cluster (3 masters, 3 replicas). A writer of its own sends `--events`
`invalidate_tag` calls one after another, and the rows are the CPU the
master and the replica spent per event (`INFO cpu`, user and system; the
fleet's idle traffic is in both modes) and the time until every receiver
had every event. Prints median and spread (min–max) over `--repeat` rounds;
asserts nothing (issue 20, item 5).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid

import redis.asyncio as aioredis

from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.testing import LocalCluster, LocalSentinel, RedisServer, available_servers

from .fleet import server_cpu

SETTLE = 1.0  # seconds for the subscriptions to be confirmed and the fleet idle
DELIVERY_TIMEOUT = 60.0

Local = LocalSentinel | LocalCluster


def _master_and_replica(local: Local, layout: Layout) -> tuple[RedisServer, RedisServer]:
    """The master that carries the namespace's channel, and its replica."""
    if isinstance(local, LocalSentinel):
        master = local.current_master()
        return master, next(server for server in local.servers if server is not master)
    master = local.owner_of(layout.seq)
    return master, local.replica_of(master)


async def _cpu(server: RedisServer) -> float:
    probe = aioredis.Redis(port=server.port)
    try:
        return await server_cpu(probe)
    finally:
        await probe.aclose()


async def measure(local: Local, receivers: int, events: int, replicas: bool) -> dict[str, float]:
    namespace = f"fan{uuid.uuid4().hex[:8]}"
    layout = Layout(namespace)
    master, replica = _master_and_replica(local, layout)
    writer = TwoTierCache(redis_url=local.url, namespace=namespace)
    caches = [
        TwoTierCache(redis_url=local.url, namespace=namespace, listen_on_replicas=replicas)
        for _ in range(receivers)
    ]
    try:
        for cache in (writer, *caches):
            await cache.start()
        await writer.invalidate_tag("warm")  # versions and scripts in place
        await asyncio.sleep(SETTLE)
        on_replica = sum(
            cache._link is not None and cache._link.clients.bus.on_replica for cache in caches
        )
        before = sum(cache.get_stats()["invalidations_received"] for cache in caches)
        master0, replica0 = await _cpu(master), await _cpu(replica)
        start = time.perf_counter()
        for i in range(events):
            await writer.invalidate_tag(f"row:{i}")
        async with asyncio.timeout(DELIVERY_TIMEOUT):
            while (  # noqa: ASYNC110  # polls what it measures, the receivers' own counts
                sum(cache.get_stats()["invalidations_received"] for cache in caches) - before
                < receivers * events
            ):
                await asyncio.sleep(0.001)
        took = time.perf_counter() - start
        master1, replica1 = await _cpu(master), await _cpu(replica)
        return {
            "master CPU per event, µs": (master1 - master0) / events * 1e6,
            "replica CPU per event, µs": (replica1 - replica0) / events * 1e6,
            "all events at all receivers, ms": took * 1000,
            "receivers on the replica": float(on_replica),
        }
    finally:
        for cache in (writer, *caches):
            await cache.close()


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}–{max(values):,.1f})"


async def _main(topology: str, receivers: int, events: int, repeat: int) -> None:
    flavour = available_servers()[0]
    kind = LocalSentinel if topology == "sentinel" else LocalCluster
    with kind.start(flavour) as local:
        rounds: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(repeat):
            for replicas in (False, True):
                rounds[replicas].append(await measure(local, receivers, events, replicas))
    print(
        f"{topology} ({flavour}), {receivers} receivers, {events} invalidate_tag calls "
        f"one after another, {repeat} round(s); median (spread):"
    )
    print(f"  {'':>34}  {'listeners on the master':>26}  {'listen_on_replicas=True':>26}")
    for name in rounds[False][0]:
        cells = [_summary([r[name] for r in rounds[mode]]) for mode in (False, True)]
        print(f"  {name:>34}  {cells[0]:>26}  {cells[1]:>26}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m twotier.cli.bench.fanout")
    parser.add_argument("--topology", choices=["sentinel", "cluster"], default="sentinel")
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.topology, args.instances, args.events, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
