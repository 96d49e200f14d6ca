"""`twotier bench --cluster`: the rows of issue 9 on a local Redis Cluster
(3 masters, 3 replicas), against the cluster's own floors.

    l2 on a cluster        one caller: redis-py RedisCluster GET vs cache.get, @cached
    l2 on a cluster, 50    50 tasks of L2 hits vs 50 tasks of RedisCluster GETs
    invalidation           to another instance (another shard's data), vs SPUBLISH → SSUBSCRIBE
    warmup                 keys/s that reach Redis vs a pipelined RedisCluster GET

Both instances of the invalidation row live in this process: the figure is
the path through Redis and the listener, not a process boundary (the
standalone rows measure that).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from twotier import TwoTierCache
from twotier._events import BaseObserver
from twotier._redis import Layout

from . import peers
from .core import Context, Series
from .hits import (
    PAYLOAD,
    Subjects,
    filled_twotier,
    latency_rounds,
    rows,
    seeded,
    throughput_rounds,
)

TITLES = {
    "cluster-l2": "Cluster: L2 hit, one caller — target ≤ 1.15× raw RedisCluster GET",
    "cluster-l2c": "Cluster: L2 hits, 50 concurrent tasks — target ≥ 2× raw RedisCluster GET",
    "cluster-inv": "Cluster: invalidation to another instance — vs raw SPUBLISH → SSUBSCRIBE",
    "cluster-warmup": "Cluster: warmup — target ≥ 0.8× pipelined RedisCluster GET keys/s",
}


def _client(ctx: Context) -> RedisCluster:
    return RedisCluster.from_url(ctx.url)


async def l2_hit(ctx: Context) -> list[Series]:
    keys = list(range(200))
    ns = ctx.ns("cl2")
    await filled_twotier(ctx, ns, keys)
    raw = _client(ctx)
    try:
        raw_keys = await seeded(raw, ctx.ns("cr"), keys)
        reader = TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1)
        getter = TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1)
        async with reader, getter:
            key_of = {i: peers.user_function(getter).key(i) for i in keys}

            async def raw_get(i: int) -> object:
                return await raw.get(raw_keys[i])

            async def by_get(i: int) -> object:
                return await getter.get(key_of[i])

            subjects: Subjects = {
                "redis-py RedisCluster GET": ("floor", raw_get),
                "twotier @cached, L1 miss → Redis hit": ("twotier", peers.user_function(reader)),
                "twotier cache.get, L1 miss → Redis hit": ("twotier", by_get),
            }
            samples = await latency_rounds(subjects, keys, ctx.size(300, 1000), ctx.repeat)
            stats = reader.get_stats()
    finally:
        await raw.aclose()
    out = rows("cluster-l2", subjects, samples, "s")
    out[1].note = f"L2 hits {stats['l2_hits']:,}, loads {stats['loads']}"
    return out


async def l2_concurrent(ctx: Context) -> list[Series]:
    tasks, per_key = 50, 4
    keys = list(range(tasks * per_key))
    ns = ctx.ns("cl2c")
    await filled_twotier(ctx, ns, keys)
    raw = _client(ctx)
    try:
        raw_keys = await seeded(raw, ctx.ns("crc"), keys)
        async with TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1) as reader:

            async def raw_get(i: int) -> object:
                return await raw.get(raw_keys[i])

            subjects: Subjects = {
                "redis-py RedisCluster GET, 50 tasks": ("floor", raw_get),
                "twotier @cached, 50 tasks": ("twotier", peers.user_function(reader)),
            }
            per_task = ctx.size(40, 200)
            samples = await throughput_rounds(subjects, tasks, per_task, per_key, ctx.repeat)
            stats = reader.get_stats()
    finally:
        await raw.aclose()
    out = rows("cluster-l2c", subjects, samples, "ops/s")
    out[1].note = f"L2 hits {stats['l2_hits']:,}, loads {stats['loads']}"
    return out


class _Arrivals(BaseObserver):
    """Sets an event when a tag invalidation from another instance arrives."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()

    def invalidation_received(self, kind: str, lag: float | None) -> None:
        if kind == "t":
            self.arrived.set()


async def invalidation(ctx: Context) -> list[Series]:
    n = ctx.size(100, 300)
    ns = ctx.ns("cinv")
    arrivals = _Arrivals()
    raw = _client(ctx)
    channel = Layout(ns).channel
    # the floor's own channel: same slot and node as the cache's, but the
    # instances do not hear its messages
    probe = channel.replace(":inv", ":probe")
    try:
        sender = TwoTierCache(redis_url=ctx.url, namespace=ns)
        receiver = TwoTierCache(redis_url=ctx.url, namespace=ns, observers=[arrivals])
        async with sender, receiver:
            # subscribed at the channel's node, as the cache's listener is
            await raw.initialize()
            node = raw.get_node_from_key(probe)
            assert node is not None
            subscriber = aioredis.Redis(host=node.host, port=int(node.port))
            listener = subscriber.pubsub()
            await listener.ssubscribe(probe)
            await _drain(listener)

            async def raw_publish(i: int) -> object:
                await raw.execute_command("SPUBLISH", probe, b"x")
                while True:
                    message = await listener.get_message(timeout=1.0)
                    if message is not None and message["type"] == "smessage":
                        return message

            async def invalidate(i: int) -> object:
                arrivals.arrived.clear()
                await sender.invalidate_tag(f"t{i % 10}")
                return await asyncio.wait_for(arrivals.arrived.wait(), timeout=2.0)

            subjects: Subjects = {
                "SPUBLISH → SSUBSCRIBE (same shard channel)": ("floor", raw_publish),
                "twotier invalidate_tag → other instance": ("twotier", invalidate),
            }
            samples = await latency_rounds(subjects, list(range(10)), n, ctx.repeat)
            await listener.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
            await subscriber.aclose()
    finally:
        await raw.aclose()
    return rows("cluster-inv", subjects, samples, "s")


async def _drain(listener: Any) -> None:
    while await listener.get_message(timeout=0.05) is not None:
        pass


async def warmup(ctx: Context) -> list[Series]:
    n = ctx.size(2_000, 10_000)
    keys = [f"item:{i}" for i in range(n)]
    raw = _client(ctx)
    payload = PAYLOAD.dumps(12345)
    samples: dict[str, list[float]] = {"get": [], "tt": []}

    async def loader(key: str) -> int:
        return len(key)

    try:
        for r in range(min(ctx.repeat, 3)):
            prefix = ctx.ns(f"cw{r}") + ":"
            for start in range(0, n, 1000):
                async with raw.pipeline(transaction=False) as pipe:
                    for k in keys[start : start + 1000]:
                        pipe.set(prefix + k, payload, ex=300)
                    await pipe.execute()
            gc.collect()
            t0 = time.perf_counter()
            for start in range(0, n, 1000):
                async with raw.pipeline(transaction=False) as pipe:
                    for k in keys[start : start + 1000]:
                        pipe.get(prefix + k)
                    await pipe.execute()
            samples["get"].append(n / (time.perf_counter() - t0))
            async with TwoTierCache(
                redis_url=ctx.url, namespace=ctx.ns(f"cwt{r}"), l1_maxsize=n
            ) as cache:
                gc.collect()
                t0 = time.perf_counter()
                await cache.warmup(keys, loader)
                elapsed = time.perf_counter() - t0
                errors = cache.get_stats()["l2_errors"]
            samples["tt"].append(n / elapsed)
    finally:
        await raw.aclose()
    return [
        Series(
            "cluster-warmup",
            "redis-py RedisCluster pipeline GET",
            "floor",
            "keys/s",
            samples["get"],
            better="higher",
        ),
        Series(
            "cluster-warmup",
            f"twotier warmup ({errors} L2 errors)",
            "twotier",
            "keys/s",
            samples["tt"],
            better="higher",
        ),
    ]


ROWS = {
    "cluster-l2": l2_hit,
    "cluster-l2c": l2_concurrent,
    "cluster-inv": invalidation,
    "cluster-warmup": warmup,
}
