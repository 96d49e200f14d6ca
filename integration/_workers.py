"""Worker processes for the multi-process and chaos tests.

Run as a script (``python integration/_workers.py MODE ...``); every worker holds
its own `TwoTierCache` on the server given by ``--url``:

``peer``
    A command server for `test_multiprocess.py`: JSON requests on stdin, one per
    line (``{"id": 1, "op": "set", "args": {...}}``), JSON replies on stdout
    (``{"id": 1, "ok": true, "result": {...}}``). Requests run concurrently, so a
    slow load can be in progress while other requests are answered. Line 0 says
    the cache is started. EOF on stdin closes the cache and ends the process.
    The same `PeerHandler` serves the test process's own instance, in-process.

``reader`` / ``writer``
    The chaos test's load: readers call a cached loader over a SQLite table in
    a loop, the writer bumps row versions and invalidates the row's tag. Each
    logs every operation to its own JSONL file (see `_chaos_check.py` for the
    fields) and stops when the ``--stop`` file appears (or after
    ``--max-seconds``, so an orphan never outlives its test for long).
    With ``--key-slot S --key-lag L`` a reader reads rolling keys instead:
    ``row-<row>-<slot>``, the slot the current one of the shared clock, less
    L seconds, cut in S-second slots. A reader without lag reads keys no tier
    holds yet (its loaders run, its L2 reads take fill leases); readers with
    lags read the same keys L seconds later, each key for the first time (L1
    misses that L2 normally answers). While the ``--halt-file`` exists the
    writer does not write (it still runs until ``--stop``). ``--lease-ttl``
    overrides the chaos settings' fill lease lifetime, ``--listen-on-replicas``
    turns `listen_on_replicas` on.

Times are `time.monotonic()`: CLOCK_MONOTONIC, one clock for every process of
the machine (Linux, macOS), so the checker may compare them across processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from twotier import MISS, TwoTierCache

Json = dict[str, Any]

# The chaos readers' cache settings (the brief's "short timeouts"): also what the
# checker's settle bound is computed from.
CHAOS_SETTINGS: Json = {
    "redis_timeout": 0.05,
    "max_stale": 1.0,
    "health_interval": 0.2,
    "default_ttl": 60,
}
# A safety net only, above the default lease_ttl: a slow read is logged with its real duration.
READ_HANG_LIMIT = 15.0


def _found(value: Any) -> Json:
    return {"found": False} if value is MISS else {"found": True, "value": value}


class PeerHandler:
    """The operations one instance performs for `test_multiprocess.py`.

    ``item(item_id, source)`` is the cached loader: it returns the text of the
    file *source*. When `hold` is set (``slow_start``), it reads the file, then
    blocks until ``slow_finish`` and returns what it read: a slow loader whose
    result may be outdated by the time it returns.
    """

    def __init__(self, cache: TwoTierCache) -> None:
        self.cache = cache
        self._hold = False
        self._loader_started = asyncio.Event()
        self._release = asyncio.Event()
        self._slow: asyncio.Task[str] | None = None
        self._slow_read: str | None = None
        self._watches: dict[int, asyncio.Task[float]] = {}
        self._watch_ids = itertools.count(1)

        @cache.cached(ttl=300, key="item-{item_id}", tags=["item:{item_id}"])
        async def item(item_id: int, source: str) -> str:
            value = Path(source).read_text()
            if self._hold:
                self._slow_read = value
                self._loader_started.set()
                await self._release.wait()
            return value

        self.item = item

    async def handle(self, op: str, args: Json) -> Json:
        method: Callable[..., Awaitable[Json]] | None = getattr(self, f"op_{op}", None)
        if method is None:
            raise ValueError(f"unknown operation {op!r}")
        return await method(**args)

    # -- reads --------------------------------------------------------------------

    async def op_info(self) -> Json:
        return {"instance": self.cache.instance_id}

    async def op_get(self, key: str) -> Json:
        """L1, then L2 (what a user of `get` sees)."""
        return _found(await self.cache.get(key, MISS))

    async def op_peek(self, key: str) -> Json:
        """L1 only."""
        return _found(self.cache.local.get(key))

    async def op_load(self, item_id: int, source: str) -> Json:
        return {"value": await self.item(item_id, source)}

    async def op_stats(self) -> Json:
        return self.cache.get_stats()

    async def op_wait_received(self, at_least: int, timeout: float = 5.0) -> Json:
        """Wait until this instance has applied *at_least* invalidations from others."""
        async with asyncio.timeout(timeout):
            while self.cache.get_stats()["invalidations_received"] < at_least:
                await asyncio.sleep(0.001)
        return {}

    # -- changes (each returns when it started and ended) ---------------------------

    async def _timed(self, change: Awaitable[object]) -> Json:
        start = time.monotonic()
        await change
        return {"start": start, "end": time.monotonic()}

    async def op_set(self, key: str, value: Any, tags: list[str]) -> Json:
        return await self._timed(self.cache.set(key, value, tags=tags))

    async def op_delete(self, key: str) -> Json:
        return await self._timed(self.cache.delete(key))

    async def op_invalidate_tag(self, tag: str) -> Json:
        # Not `_timed`: the local part of an invalidation happens in the call itself.
        start = time.monotonic()
        await self.cache.invalidate_tag(tag)
        return {"start": start, "end": time.monotonic()}

    async def op_clear(self) -> Json:
        return await self._timed(self.cache.clear())

    # -- watching for a change ------------------------------------------------------

    async def op_arm(self, key: str, until: Json) -> Json:
        """Start polling `get(key)` until it answers *until*; report what L1 holds now."""
        in_l1 = _found(self.cache.local.get(key))
        watch = next(self._watch_ids)
        self._watches[watch] = asyncio.get_running_loop().create_task(self._watch(key, until))
        return {"watch": watch, "l1": in_l1}

    async def _watch(self, key: str, until: Json) -> float:
        while _found(await self.cache.get(key, MISS)) != until:
            await asyncio.sleep(0.0002)
        return time.monotonic()

    async def op_seen(self, watch: int, timeout: float) -> Json:
        """When the armed watch saw its answer; an error after *timeout*."""
        task = self._watches.pop(watch)
        try:
            seen_at = await asyncio.wait_for(task, timeout)
        except TimeoutError:
            raise TimeoutError(f"watch {watch} not satisfied within {timeout}s") from None
        return {"seen_at": seen_at}

    # -- the slow loader --------------------------------------------------------------

    async def op_slow_start(self, item_id: int, source: str, timeout: float = 5.0) -> Json:
        """Call the loader in the background; return once it has read *source* and blocks."""
        self._hold = True
        self._loader_started.clear()
        self._release.clear()
        self._slow = asyncio.get_running_loop().create_task(self.item(item_id, source))
        async with asyncio.timeout(timeout):
            await self._loader_started.wait()
        return {"read": self._slow_read}

    async def op_slow_finish(self, timeout: float = 5.0) -> Json:
        """Let the blocked loader return (its old result); report what the call returned."""
        assert self._slow is not None, "slow_start first"
        self._hold = False
        self._release.set()
        async with asyncio.timeout(timeout):
            value = await self._slow
        return {"value": value}

    async def aclose(self) -> None:
        pending = [*self._watches.values(), *([self._slow] if self._slow else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# -- the peer process -----------------------------------------------------------------


def _emit(reply: Json) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


async def _answer(handler: PeerHandler, request: Json) -> None:
    try:
        result = await handler.handle(request["op"], request.get("args", {}))
    except Exception as exc:
        _emit({"id": request["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    else:
        _emit({"id": request["id"], "ok": True, "result": result})


async def serve_peer(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    cache = TwoTierCache(redis_url=args.url, namespace=args.namespace, redis_timeout=0.5)
    async with cache:
        handler = PeerHandler(cache)
        _emit({"id": 0, "ok": True, "result": await handler.op_info()})
        running: set[asyncio.Task[None]] = set()
        while line := await stdin.readline():
            task = loop.create_task(_answer(handler, json.loads(line)))
            running.add(task)
            task.add_done_callback(running.discard)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await handler.aclose()


# -- the chaos load ---------------------------------------------------------------------


def _chaos_cache(args: argparse.Namespace) -> TwoTierCache:
    settings = dict(CHAOS_SETTINGS)
    if args.lease_ttl is not None:
        settings["lease_ttl"] = args.lease_ttl
    if args.listen_on_replicas:
        settings["listen_on_replicas"] = True
    return TwoTierCache(redis_url=args.url, namespace=args.namespace, **settings)


def _should_stop(args: argparse.Namespace, deadline: float) -> bool:
    return Path(args.stop).exists() or time.monotonic() > deadline


def _halted(args: argparse.Namespace) -> bool:
    return bool(args.halt_file) and Path(args.halt_file).exists()


def _log(out: TextIO, record: Json) -> None:
    out.write(json.dumps(record) + "\n")


async def run_reader(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.max_seconds
    rng = random.Random(args.seed)
    # Autocommit: every SELECT is its own read transaction and sees the latest commit.
    db = sqlite3.connect(args.db, isolation_level=None)
    cache = _chaos_cache(args)

    def select(row_id: int) -> int:
        (version,) = db.execute("SELECT version FROM rows WHERE id = ?", (row_id,)).fetchone()
        return int(version)

    @cache.cached(ttl=CHAOS_SETTINGS["default_ttl"], key="row-{row_id}", tags=["row:{row_id}"])
    async def row_version(row_id: int) -> int:
        return select(row_id)

    @cache.cached(
        ttl=CHAOS_SETTINGS["default_ttl"], key="row-{row_id}-{slot}", tags=["row:{row_id}"]
    )
    async def rolling_row_version(row_id: int, slot: int) -> int:
        return select(row_id)

    def read(row: int) -> Awaitable[int]:
        if not args.key_slot:
            return row_version(row)
        slot = int((time.monotonic() - args.key_lag) / args.key_slot)
        return rolling_row_version(row, slot)

    async with cache:
        _emit({"ready": args.name})
        with open(args.log, "w") as out:
            while not _should_stop(args, deadline):
                row = rng.randint(1, args.rows)
                start = time.monotonic()
                version: int | None = None
                error: str | None = None
                try:
                    async with asyncio.timeout(READ_HANG_LIMIT):
                        version = await read(row)
                except Exception as exc:  # the checker counts it; the chaos goes on
                    error = f"{type(exc).__name__}: {exc}"
                _log(
                    out,
                    {
                        "kind": "read",
                        "reader": args.name,
                        "row": row,
                        "start": start,
                        "end": time.monotonic(),
                        "version": version,
                        "error": error,
                    },
                )
                await asyncio.sleep(args.pause)
            _log(out, {"kind": "stats", "process": args.name, **cache.get_stats()})
    db.close()


async def run_writer(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.max_seconds
    rng = random.Random(args.seed)
    db = sqlite3.connect(args.db, isolation_level=None)
    async with _chaos_cache(args) as cache:
        _emit({"ready": args.name})
        with open(args.log, "w") as out:
            while not _should_stop(args, deadline):
                if _halted(args):
                    await asyncio.sleep(0.005)
                    continue
                row = rng.randint(1, args.rows)
                begin = time.monotonic()
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE rows SET version = version + 1 WHERE id = ?", (row,))
                (version,) = db.execute("SELECT version FROM rows WHERE id = ?", (row,)).fetchone()
                db.execute("COMMIT")
                commit = time.monotonic()
                error: str | None = None
                try:
                    await cache.invalidate_tag(f"row:{row}")
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                _log(
                    out,
                    {
                        "kind": "write",
                        "row": row,
                        "version": int(version),
                        "begin": begin,
                        "commit": commit,
                        "ack": time.monotonic(),
                        "error": error,
                        "redis_available": cache.get_stats()["redis_available"],
                    },
                )
                await asyncio.sleep(args.pause)
            _log(out, {"kind": "stats", "process": args.name, **cache.get_stats()})
    db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["peer", "reader", "writer"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--db")
    parser.add_argument("--log")
    parser.add_argument("--stop")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.001)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--key-slot", type=float, default=0.0, help="reader: rolling keys")
    parser.add_argument("--key-lag", type=float, default=0.0, help="reader: rolling keys' lag")
    parser.add_argument("--halt-file", help="writer: no writes while this file exists")
    parser.add_argument("--lease-ttl", type=float, help="the caches' lease_ttl")
    parser.add_argument(
        "--listen-on-replicas", action="store_true", help="the caches' listen_on_replicas"
    )
    args = parser.parse_args(argv)
    run = {"peer": serve_peer, "reader": run_reader, "writer": run_writer}[args.mode]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
