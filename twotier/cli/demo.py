"""`twotier demo`: three processes, one shared Redis, one TwoTierCache in each.

The parent starts a throwaway Redis-protocol server (`twotier.testing.RedisServer`)
and three workers (`python -m twotier.cli.demo worker ...`). It drives them with
JSON lines on their stdin and reads JSON lines from their stdout; the workers do
all the measuring, so the numbers are what an application in that process sees.

The "database" is a JSON file of one version number per category, shared by the
workers like a real database would be: instance 1 bumps a category there, then
invalidates its tag, and instances 2 and 3 report when they stopped serving the
old version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO, cast

import redis

from twotier import CachedFunction, TwoTierCache
from twotier.testing import RedisServer

NAMESPACE = "demo"
LOADER_DELAY = 0.020  # the simulated database query
# Generous next to the library's 50 ms default: four busy processes on a small CI
# machine must not trip the circuit breaker and turn the demo into a failure demo.
REDIS_TIMEOUT = 0.5
MISS_SAMPLES = 50  # distinct categories: each is one loader call, then an L2 hit elsewhere
L1_SAMPLES = 200
WATCHED = "news"
WATCH_TIMEOUT = 3.0  # an invalidation slower than this counts as not delivered
POLL_INTERVAL = 0.0005  # a yield, not a spin: spinning watchers slow the machine they measure
REPLY_TIMEOUT = 15.0  # generous: a worker's first answer includes interpreter start-up
# The counters whose changes tell which path a call took, and what reached an instance.
COUNTED = ("l1_hits", "l2_hits", "loads", "invalidations_received", "queued_ops")
STAT_KEYS = (
    "hits",
    "misses",
    "sets",
    "tag_invalidations",
    "hit_rate",
    "entries",
    "tags",
    "l1_hits",
    "l2_hits",
    "invalidations_received",
)

Articles = list[dict[str, Any]]


class DemoError(Exception):
    """The demo could not run as designed (a worker died, hung or failed a step)."""


# -- the worker process ---------------------------------------------------------------


class Database:
    """The shared "database": {category: version} in a JSON file; absent means version 1."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, int]:
        try:
            return cast(dict[str, int], json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}

    def version(self, category: str) -> int:
        return self._read().get(category, 1)

    def bump(self, category: str) -> int:
        data = self._read()
        data[category] = data.get(category, 1) + 1
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(data))
        scratch.replace(self.path)  # atomic: a concurrent reader sees old or new, never half
        return data[category]


def articles_loader(cache: TwoTierCache, db: Database) -> CachedFunction[[str], Articles]:
    """The application's cached query, exactly as the README shows it."""

    @cache.cached(ttl=300, tags=["articles", "category:{category}"])
    async def get_articles_by_category(category: str) -> Articles:
        await asyncio.sleep(LOADER_DELAY)  # the database round trip
        version = await asyncio.to_thread(db.version, category)
        return [
            {"id": f"{category}-{n}", "title": f"{category} story {n}", "version": version}
            for n in range(1, 4)
        ]

    return get_articles_by_category


class Worker:
    """Executes the parent's requests against this process's cache."""

    def __init__(self, cache: TwoTierCache, db: Database) -> None:
        self.cache = cache
        self.db = db
        self.fetch = articles_loader(cache, db)
        self._watch: asyncio.Task[dict[str, Any]] | None = None
        self._ops: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
            "measure": self.measure,
            "get": self.get,
            "watch": self.watch,
            "watch_result": self.watch_result,
            "update": self.update,
            "stats": self.stats,
        }

    async def serve(self, request: dict[str, Any]) -> dict[str, Any]:
        op = self._ops.get(request.pop("op", ""))
        if op is None:
            return {"error": f"unknown request {request!r}"}
        try:
            return await op(**request)
        except Exception as exc:  # reported to the parent, which fails the demo with it
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _counts(self) -> dict[str, int]:
        stats = self.cache.get_stats()
        return {name: int(stats[name]) for name in COUNTED}

    def _since(self, before: dict[str, int]) -> dict[str, Any]:
        """Counter deltas since *before* (which tier answered, what arrived), and Redis health."""
        now = self._counts()
        return {
            **{name: now[name] - before[name] for name in COUNTED},
            "redis": self.cache.get_stats()["redis_available"],
        }

    async def measure(self, categories: list[str]) -> dict[str, Any]:
        """Time each call; the counter deltas tell the parent which tier answered."""
        before = self._counts()
        timings = []
        for category in categories:
            started = time.perf_counter_ns()
            await self.fetch(category)
            timings.append(time.perf_counter_ns() - started)
        return {"ns": timings, **self._since(before)}

    async def get(self, category: str) -> dict[str, Any]:
        before = self._counts()
        articles = await self.fetch(category)
        return {"version": articles[0]["version"], **self._since(before)}

    async def watch(self, category: str, old: int) -> dict[str, Any]:
        """Start polling *category* in the background; answer with the version served now."""
        current = await self.get(category)
        self._watch = asyncio.create_task(self._poll(category, old))
        return current

    async def _poll(self, category: str, old: int) -> dict[str, Any]:
        before = self._counts()
        deadline = time.monotonic() + WATCH_TIMEOUT
        last_old_ns = time.time_ns()
        while time.monotonic() < deadline:
            started = time.time_ns()
            articles = await self.fetch(category)
            if articles[0]["version"] != old:
                # This call missed L1, so the invalidation had arrived by `started`;
                # the previous call (at `last_old_ns`) still hit: it arrived in between.
                return {
                    "reached_ns": started,
                    "last_old_ns": last_old_ns,
                    "new_ns": time.time_ns(),
                    "version": articles[0]["version"],
                    **self._since(before),
                }
            last_old_ns = started
            # An L1 hit never suspends: without this sleep the pub/sub listener
            # would never run and the invalidation could never be seen.
            await asyncio.sleep(POLL_INTERVAL)
        return {"reached_ns": None, "last_old_ns": last_old_ns}

    async def watch_result(self) -> dict[str, Any]:
        if self._watch is None:
            raise RuntimeError("watch_result without watch")
        task, self._watch = self._watch, None
        return await task

    async def update(self, category: str) -> dict[str, Any]:
        """What an application does on a write: the database first, then the invalidation."""
        db_version = await asyncio.to_thread(self.db.bump, category)
        before = self._counts()
        sent_ns = time.time_ns()
        pending = self.cache.invalidate_tag(f"category:{category}")  # our L1: dropped already
        # Now Redis has it (and every subscriber's connection), or, with Redis
        # away, it was queued: `queued_ops` tells which.
        await pending
        confirmed_ns = time.time_ns()
        delivery = self._since(before)
        articles = await self.fetch(category)
        return {
            "db_version": db_version,
            "sent_ns": sent_ns,
            "confirmed_ns": confirmed_ns,
            "version": articles[0]["version"],
            **delivery,
        }

    async def stats(self) -> dict[str, Any]:
        stats = self.cache.get_stats()
        return {name: stats[name] for name in STAT_KEYS}


async def _stdin_reader() -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    return reader, transport


def _reply(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


async def _serve(url: str, db: Database, out: TextIO) -> None:
    """Answer requests until the parent closes our stdin (or dies, which closes it too)."""
    reader, transport = await _stdin_reader()
    try:
        async with TwoTierCache(
            redis_url=url, namespace=NAMESPACE, redis_timeout=REDIS_TIMEOUT
        ) as cache:
            worker = Worker(cache, db)
            _reply(
                out,
                {
                    "pid": os.getpid(),
                    "instance": cache.instance_id,
                    "redis": cache.get_stats()["redis_available"],
                },
            )
            while line := await reader.readline():
                _reply(out, await worker.serve(json.loads(line)))
    finally:
        transport.close()


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twotier.cli.demo", description="internal: one process of `twotier demo`"
    )
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"[instance {args.index}] %(levelname)s %(message)s"
    )
    out = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the reply channel
    try:
        asyncio.run(_serve(args.url, Database(args.db), out))
    except BrokenPipeError:
        # The parent is gone (interrupted, killed): nobody is left to tell. Point
        # the reply channel at /dev/null so the flush at exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 1
    return 0


# -- the parent: processes --------------------------------------------------------------


class WorkerProcess:
    """One worker and its reply channel. Replies are read on a thread so waits can time out."""

    def __init__(self, index: int, url: str, db: Path, started: list[WorkerProcess]) -> None:
        self.index = index
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twotier.cli.demo",
                "worker",
                "--index",
                str(index),
                "--url",
                url,
                "--db",
                str(db),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            # Its own session: a Ctrl-C reaches only the parent, which then shuts
            # the workers down in order instead of racing their tracebacks.
            start_new_session=True,
        )
        # Registered at once: a Ctrl-C from here on must find this process to reap it.
        started.append(self)
        self._stdin = cast(TextIO, self.popen.stdin)
        self._stdout = cast(TextIO, self.popen.stdout)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, name=f"twotier-demo-{index}", daemon=True).start()
        self.hello: dict[str, Any] = {}

    def _pump(self) -> None:
        with self._stdout:
            for line in self._stdout:
                self._lines.put(line)
        self._lines.put(None)

    def send(self, op: str, **args: Any) -> None:
        try:
            self._stdin.write(json.dumps({"op": op, **args}) + "\n")
            self._stdin.flush()
        except (BrokenPipeError, ValueError) as exc:  # ValueError: already closed
            raise DemoError(f"instance {self.index} is gone ({self._status()})") from exc

    def receive(self, what: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise DemoError(
                f"instance {self.index} did not answer {what!r} within {timeout:g} s"
            ) from None
        if line is None:
            raise DemoError(
                f"instance {self.index} ended before answering {what!r} ({self._status()})"
            )
        reply = cast(dict[str, Any], json.loads(line))
        if "error" in reply:
            raise DemoError(f"instance {self.index} failed {what!r}: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.receive(op)

    def close_input(self) -> None:
        """EOF on stdin: the worker's signal to close its cache and exit."""
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):  # a dead worker left a broken pipe behind
                self.popen.stdin.close()

    def _status(self) -> str:
        try:
            return f"exit code {self.popen.wait(timeout=1)}"
        except subprocess.TimeoutExpired:
            return "still running"


def stop_workers(workers: list[WorkerProcess], grace: float = 2.0) -> None:
    """Ask (EOF on stdin: close the cache, exit), then insist (SIGTERM), then force (SIGKILL).

    One grace period per step for all of them, so a Ctrl-C never waits worker by worker.
    """
    for worker in workers:
        worker.close_input()
    steps: tuple[Callable[[subprocess.Popen[str]], None] | None, ...] = (
        None,
        subprocess.Popen.terminate,
        subprocess.Popen.kill,
    )
    for step in steps:
        alive = [worker.popen for worker in workers if worker.popen.poll() is None]
        for popen in alive:
            if step is not None:
                step(popen)
        deadline = time.monotonic() + grace
        for popen in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(0.0, deadline - time.monotonic()))


@contextmanager
def running_workers(url: str, db: Path, count: int = 3) -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    try:
        for index in range(1, count + 1):
            WorkerProcess(index, url, db, workers)
        for worker in workers:  # started together, so their start-ups overlap
            worker.hello = worker.receive("start")
            if not worker.hello["redis"]:
                raise DemoError(f"instance {worker.index} could not reach Redis at {url}")
        yield workers
    finally:
        stop_workers(workers)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI timeout, `kill`) kills Python without cleanup; make it run ours."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; an embedding caller owns them
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the parent: the script ----------------------------------------------------------------


def fmt_ns(ns: float) -> str:
    if ns >= 1_000_000:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1_000:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.0f} ns"


def _server_version(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        info = cast(dict[str, Any], client.info("server"))
    return str(info.get("valkey_version") or info.get("redis_version") or "?")


def _row(label: str, text: str) -> None:
    print(f"  {label:<12} {text}")


def show_setup(server: RedisServer, workers: list[WorkerProcess]) -> None:
    print("twotier demo: three processes, each with its own TwoTierCache, one shared Redis")
    _row(
        "server",
        f"{server.flavour} {_server_version(server.url)} ({server.binary}) "
        f"on 127.0.0.1:{server.port}",
    )
    for worker in workers:
        _row(
            f"instance {worker.index}",
            f"pid {worker.hello['pid']}, cache instance_id {worker.hello['instance']}",
        )
    print()


def _require_redis(worker: WorkerProcess, reply: dict[str, Any]) -> None:
    # Without Redis every instance runs alone: nothing this demo shows would be true.
    if not reply["redis"]:
        raise DemoError(f"instance {worker.index} lost its connection to Redis")


def _measure(workers: list[WorkerProcess], categories: list[str], tier: str) -> tuple[float, str]:
    """Median over all *workers* of timed calls, and a note if a call took another path."""
    timings: list[int] = []
    served = 0
    for worker in workers:
        result = worker.call("measure", categories=categories)
        _require_redis(worker, result)
        timings += result["ns"]
        served += result[tier]
    note = "" if served == len(timings) else f" (only {served} of them took that path)"
    return statistics.median(timings), f"n={len(timings)}{note}"


def show_timings(workers: list[WorkerProcess]) -> None:
    first, others = workers[:1], workers[1:]
    topics = [f"topic-{n:02d}" for n in range(MISS_SAMPLES)]
    loader, loader_n = _measure(first, topics, "loads")
    l2, l2_n = _measure(others, topics, "l2_hits")  # instance 1 filled Redis just now
    _measure(workers, [WATCHED], "loads")  # untimed warm-up; also sets up the invalidation
    l1, l1_n = _measure(workers, [WATCHED] * L1_SAMPLES, "l1_hits")
    print("get_articles_by_category(category): median time per call, measured inside the processes")
    rows = [
        (
            "loader call",
            f"L1 miss, L2 miss, {LOADER_DELAY * 1000:g} ms query",
            loader,
            f"{loader_n}, instance 1",
        ),
        ("L2 hit", "fresh instance: L1 miss, Redis hit", l2, f"{l2_n}, instances 2 and 3"),
        ("L1 hit", "in-process, a decoded copy", l1, f"{l1_n}, instances 1-3"),
    ]
    for name, path, median, where in rows:
        _row(name, f"{path:<36} {fmt_ns(median):>9}   {where}")
    _row("speed-up", f"L2 hit: {loader / l2:,.0f}x faster than the loader")
    _row(
        "",
        f"L1 hit: {l2 / l1:,.0f}x faster than an L2 hit, "
        f"{loader / l1:,.0f}x faster than the loader",
    )
    print()


def _after(start_ns: int, ns: int) -> str:
    return f"{max(ns - start_ns, 0) / 1e6:.2f} ms"  # one unit: these are compared by eye


def _report_watcher(index: int, seen: dict[str, Any], now: int, start_ns: int, old: int) -> bool:
    """Print how the invalidation reached one instance; True if it did, with the new value."""
    label = f"instance {index}"
    if seen["reached_ns"] is None:
        _row(
            label,
            f"invalidation did NOT reach it within {WATCH_TIMEOUT:g} s: still serves version {old}",
        )
        return False
    if not seen["invalidations_received"]:
        _row(
            label,
            f"version {old} stopped being served after "
            f"{_after(start_ns, seen['reached_ns'])}, but the invalidation did NOT "
            "arrive (Redis lost?)",
        )
        return False
    source = "the database" if seen["loads"] else "Redis (L2)" if seen["l2_hits"] else "L1"
    _row(
        label,
        f"invalidation reached after {_after(start_ns, seen['reached_ns'])} at most "
        f"(version {old} was still served at {_after(start_ns, seen['last_old_ns'])})",
    )
    _row(
        "",
        f"returned version {seen['version']} at {_after(start_ns, seen['new_ns'])} "
        f"(from {source}); a re-read returns version {now}",
    )
    return bool(now == seen["version"] != old)


def _arm_watchers(watchers: list[WorkerProcess], old: int) -> None:
    """Each watcher must serve the old version from L1, then poll until it changes."""
    for worker in watchers:
        ack = worker.call("watch", category=WATCHED, old=old)
        _require_redis(worker, ack)
        if (ack["version"], ack["l1_hits"]) != (old, 1):
            raise DemoError(
                f"instance {worker.index} does not serve version {old} of {WATCHED!r} from its L1"
            )


def show_invalidation(workers: list[WorkerProcess]) -> bool:
    """Instance 1 updates and invalidates; True if instances 2 and 3 both got the news."""
    writer, watchers = workers[0], workers[1:]
    old = 1
    _arm_watchers(watchers, old)
    update = writer.call("update", category=WATCHED)
    for worker in watchers:  # both at once: they have been polling in parallel all along
        worker.send("watch_result")
    seen = [worker.receive("watch_result", WATCH_TIMEOUT + REPLY_TIMEOUT) for worker in watchers]
    start = update["sent_ns"]
    print(
        f"Tag invalidation: instance 1 writes {WATCHED!r} version {update['db_version']} "
        "to the database,"
    )
    print(f'then calls invalidate_tag("category:{WATCHED}"); times are wall-clock, from that call.')
    _row("before", f"instances 2 and 3 serve version {old} from their L1")
    if update["queued_ops"] or not update["redis"]:
        _row("instance 1", "Redis did NOT take the invalidation: it is queued, Redis is away")
        return False
    _row(
        "instance 1",
        f"dropped from its own L1 in the call; Redis confirmed after "
        f"{_after(start, update['confirmed_ns'])}; "
        f"now returns version {update['version']}",
    )
    reached = [
        _report_watcher(
            worker.index, result, worker.call("get", category=WATCHED)["version"], start, old
        )
        for worker, result in zip(watchers, seen, strict=True)
    ]
    print()
    return all(reached) and bool(update["version"] == update["db_version"])


def show_stats(workers: list[WorkerProcess]) -> None:
    stats = [worker.call("stats") for worker in workers]
    print("get_stats()".ljust(26) + "".join(f"instance {w.index}".rjust(13) for w in workers))
    for name in STAT_KEYS:
        print(f"  {name:<24}" + "".join(f"{s[name]!s:>13}" for s in stats))
    print()


def run(flavour: str | None = None) -> int:
    """The whole demo; 0 if the invalidation reached every instance, 1 if not, 130 on Ctrl-C."""
    began = time.monotonic()
    try:
        with (
            sigterm_as_interrupt(),
            RedisServer.start(flavour) as server,
            tempfile.TemporaryDirectory(prefix="twotier-demo-") as scratch,
            running_workers(server.url, Path(scratch) / "db.json") as workers,
        ):
            show_setup(server, workers)
            show_timings(workers)
            reached = show_invalidation(workers)
            show_stats(workers)
    except KeyboardInterrupt:
        print("\ninterrupted: workers and server stopped", file=sys.stderr)
        return 130
    except (DemoError, RuntimeError, redis.RedisError) as exc:
        print(f"twotier demo failed: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - began
    if not reached:
        print(f"FAILED in {took:.1f} s: the invalidation did not reach every instance")
        return 1
    print(
        f"OK in {took:.1f} s: the invalidation reached every instance, "
        "and every instance returns the new value"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
