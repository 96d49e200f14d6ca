"""What an idle instance costs the server: connections, script loads, commands/s.

    python -m twotier.cli.bench.idle --instances 1,50 --repeat 3

For each fleet size N: a fresh embedded server, N instances started in this
process (the connection budget is per instance, so one process shows it as
well as many), then an idle wait. Counted on the server, not in the client:
`CLIENT LIST` (this probe's own connection excluded), `SCRIPT LOAD`s from
`INFO commandstats`, the commands processed over the idle window
(`total_commands_processed`, the probe's own few subtracted), and the
server's memory growth over an empty server (`used_memory`: connection
buffers, heartbeat keys, the namespace's control keys). Prints the
median and the spread (min–max) over `--repeat` rounds; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

import redis.asyncio as aioredis

from twotier import TwoTierCache
from twotier.testing import RedisServer, available_servers


async def _stat(probe: aioredis.Redis, section: str) -> dict[str, Any]:
    return dict(await probe.info(section))


async def _round(flavour: str, count: int, idle: float) -> dict[str, float]:
    with RedisServer.start(flavour) as server:
        probe = aioredis.Redis.from_url(server.url)
        caches = [TwoTierCache(redis_url=server.url, namespace="idle") for _ in range(count)]
        try:
            empty = (await _stat(probe, "memory"))["used_memory"]
            for cache in caches:
                await cache.start()
            await asyncio.sleep(1.0)  # start-up's own traffic settles
            loads = (await _stat(probe, "commandstats")).get("cmdstat_script|load", {})
            before = (await _stat(probe, "stats"))["total_commands_processed"]
            await asyncio.sleep(idle)
            after = (await _stat(probe, "stats"))["total_commands_processed"]
            clients = await probe.client_list()
            memory = (await _stat(probe, "memory"))["used_memory"] - empty
            return {
                "connections": (len(clients) - 1) / count,
                "script_loads": float(loads.get("calls", 0)) / count,
                # minus the probe's own INFO and CLIENT LIST
                "idle_cmds_s": (after - before - 1) / idle / count,
                # connections' buffers, heartbeat keys, the namespace's control keys
                "server_bytes": memory / count,
            }
        finally:
            for cache in caches:
                await cache.close()
            await probe.aclose()


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.2f} (spread {min(values):,.2f}–{max(values):,.2f})"


async def _main(sizes: list[int], repeat: int, idle: float) -> None:
    flavour = available_servers()[0]
    for count in sizes:
        rounds = [await _round(flavour, count, idle) for _ in range(repeat)]
        print(f"{count} instance(s), {repeat} round(s), idle {idle:.0f} s:")
        for name in rounds[0]:
            print(f"  {name:>14} per instance: {_summary([r[name] for r in rounds])}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m twotier.cli.bench.idle")
    parser.add_argument("--instances", default="1,50", help="fleet sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="idle window, seconds")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.instances.split(",")]
    asyncio.run(_main(sizes, args.repeat, args.idle))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
