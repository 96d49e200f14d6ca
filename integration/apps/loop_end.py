"""Un-awaited invalidations as the last statement of a loop or of the cache.

    TWOTIER_REDIS_URL=redis://… TWOTIER_NAMESPACE=ns python -m integration.apps.loop_end MODE TAG

MODE:

``async-with``
    ``async with cache:`` whose last statement is ``cache.invalidate_tag(TAG)``
    without ``await`` (the seed's call shape).
``run-started``
    ``asyncio.run(main())``, *main* having used the cache, ends with the
    un-awaited call; no ``close()`` (a Celery task wrapping async code).
``run-cold``
    The same, the un-awaited call the cache's first use in the process (a
    management command).
``runs``
    Ten ``asyncio.run`` one after the other, each ending with an un-awaited
    ``cache.invalidate_tag(f"{TAG}:{i}")``, garbage collection off: prints
    the server's ``connected_clients`` after the first and after the last,
    so a loop's connections left open show.

The cache is `from twotier import cache`, configured by the environment.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys

import redis

from twotier import cache


async def async_with(tag: str) -> None:
    async with cache:
        await cache.get("anything")
        cache.invalidate_tag(tag)  # the last statement inside `async with`


async def started(tag: str) -> None:
    await cache.get("anything")
    cache.invalidate_tag(tag)  # the last statement of the loop


async def cold(tag: str) -> None:
    cache.invalidate_tag(tag)  # the cache's first and last use


def connected_clients() -> int:
    with redis.Redis.from_url(os.environ["TWOTIER_REDIS_URL"]) as client:
        return int(client.info("clients")["connected_clients"])


def main(mode: str, tag: str) -> None:
    if mode == "async-with":
        asyncio.run(async_with(tag))
    elif mode == "run-started":
        asyncio.run(started(tag))
    elif mode == "run-cold":
        asyncio.run(cold(tag))
    elif mode == "runs":
        gc.disable()  # connections a loop left open stay open (issue 18, item 6)
        clients = []
        for i in range(10):
            asyncio.run(started(f"{tag}:{i}"))
            clients.append(connected_clients())
        print(json.dumps({"clients": clients}), flush=True)
        return
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps({"done": mode}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
