"""What a burst of invalidations from one writer costs every other instance.

    python -m twotier.cli.bench.burst --receivers 10 --burst 1000 --repeat 3

A writer fires `--burst` `invalidate_tag` calls at once (gathered, as a bulk
update or an import does); `--receivers` other instances in this process
count what reached them (`invalidations_received`), and the server counts
the script calls (`INFO commandstats`, evalsha) and the bytes it sent to
subscribers. Prints median and spread (min–max) over `--repeat` rounds, each
on a fresh embedded server; asserts nothing (issue 20, item 4).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from twotier import TwoTierCache
from twotier.testing import RedisServer, available_servers


async def _round(flavour: str, receivers: int, burst: int) -> dict[str, float]:
    with RedisServer.start(flavour) as server:
        probe = aioredis.Redis.from_url(server.url)
        count = receivers + 1
        caches = [TwoTierCache(redis_url=server.url, namespace="burst") for _ in range(count)]
        try:
            for cache in caches:
                await cache.start()
            writer, others = caches[0], caches[1:]
            await writer.invalidate_tag("warm")  # versions and scripts in place
            await asyncio.sleep(0.2)
            before = [c.get_stats()["invalidations_received"] for c in others]
            stats: dict[str, Any] = dict(await probe.info("commandstats"))
            calls0 = stats.get("cmdstat_evalsha", {}).get("calls", 0)
            out0 = dict(await probe.info("stats")).get("total_net_output_bytes", 0)
            t0 = time.perf_counter()
            await asyncio.gather(*(writer.invalidate_tag(f"row:{i}") for i in range(burst)))
            sent = time.perf_counter() - t0
            await asyncio.sleep(0.5)  # the last deliveries
            stats = dict(await probe.info("commandstats"))
            calls = stats.get("cmdstat_evalsha", {}).get("calls", 0) - calls0
            out = dict(await probe.info("stats")).get("total_net_output_bytes", 0) - out0
            got = [
                c.get_stats()["invalidations_received"] - b
                for c, b in zip(others, before, strict=True)
            ]
            return {
                "deliveries per receiver": statistics.median(got),
                "script calls": float(calls),
                "server bytes out per receiver": out / receivers,
                "burst sent in ms": sent * 1000,
            }
        finally:
            for cache in caches:
                await cache.close()
            await probe.aclose()


async def _main(receivers: int, burst: int, repeat: int) -> None:
    flavour = available_servers()[0]
    rounds = [await _round(flavour, receivers, burst) for _ in range(repeat)]
    print(f"burst of {burst} invalidate_tag calls, {receivers} receivers, {repeat} round(s):")
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        print(
            f"  {name:>30}: {statistics.median(values):,.1f} "
            f"(spread {min(values):,.1f}–{max(values):,.1f})"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m twotier.cli.bench.burst")
    parser.add_argument("--receivers", type=int, default=10)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(_main(args.receivers, args.burst, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
