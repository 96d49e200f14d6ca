"""A seeded, model-based coherence checker (in the spirit of Jepsen's checkers).

A driver runs random operations — every public path: `get`, `set`, `delete`,
`clear`, `invalidate_tag`, `@cached` calls and `fn.invalidate`, `warmup`,
`cache.sync` from threads — from several clients on several cache instances
against one real server. Each instance talks to the server through a proxy of
its own that holds every chunk for a random short time, in both directions
(replies and pub/sub messages arrive late, in order, as over a slow network).
Faults are injected meanwhile: callers cancelled at random points (a request
timeout), subscription connections cut (message loss, then a resync), hostile
messages published on the namespace's channel, the server paused.

Every operation's invocation and completion go into a history, which is
judged afterwards against the model of the guarantees (docs/coherence.md):

* **no stale read**: a read must not return a value that a change of its key
  had outdated before the read began — on the writing instance at once
  (read-your-writes, guarantee 1), on the others once `window` has passed
  (guarantee 2);
* **nothing lost** (guarantee 5): once the run has quiesced, every instance
  reads every key's last value;
* **no hang** past `HANG` seconds, and **no exception** outside the documented
  ones;
* **no error against a healthy server**: while the server is neither paused
  nor restarted, no Redis error is counted and the breaker never opens (a
  cancelled caller must not cost the other callers their reads).

Values are unique: each key has one writer (a client of one instance), which
numbers its writes, so "older" is well defined. Two families of keys:

* *direct* keys, changed by `set`/`delete`/`clear` and read by `get`;
* *loader* keys, whose truth is a dict (the database): a writer updates it,
  then invalidates (a tag, or `fn.invalidate`); readers call the `@cached`
  function, `get` its key, or `warmup` it.

A failure prints the seed and the history of the key concerned (the minimal
history: the operations that explain the verdict). Run by hand for longer::

    python -m integration._model_check --seeds 1-200 --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

from ._proxy import ChaosProxy

HANG = 5.0  # seconds: an operation slower than this hangs
TOMBSTONE = -1  # the "value" a delete writes


# -- the history --------------------------------------------------------------------


@dataclass
class Op:
    """One operation of the history. `end` is None while running, or when cancelled."""

    instance: int
    kind: str  # set, delete, clear, update, get, call, warmup, sync-get
    key: str | None
    start: float
    value: int | None = None  # written (a version, TOMBSTONE) or read (None: a miss)
    end: float | None = None
    outcome: str = "running"  # ok, cancelled, error: ...

    def __str__(self) -> str:
        end = f"{self.end:9.4f}" if self.end is not None else "        -"
        return (
            f"{self.start:9.4f} → {end}  i{self.instance} {self.kind:8} "
            f"{self.key or '*':6} {self.value!s:>5}  {self.outcome}"
        )


@dataclass
class History:
    t0: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def begin(self, instance: int, kind: str, key: str | None, value: int | None = None) -> Op:
        op = Op(instance, kind, key, self.now(), value)
        self.ops.append(op)
        return op

    def note(self, text: str) -> None:
        self.notes.append(f"{self.now():9.4f}  {text}")


# -- the model ------------------------------------------------------------------------

WRITES = frozenset({"set", "delete", "update"})
READS = frozenset({"get", "call", "warmup", "sync-get"})


def check(history: History, window: float) -> list[str]:
    """The violations of the model in *history* (empty: it holds)."""
    problems: list[str] = []
    writes: dict[str, list[Op]] = {}
    clears = [op for op in history.ops if op.kind == "clear" and op.outcome == "ok"]
    for op in history.ops:
        if op.kind in WRITES:
            assert op.key is not None
            writes.setdefault(op.key, []).append(op)
        if op.outcome.startswith("error"):
            problems.append(f"an exception outside the documented ones: {op}")
        if op.end is not None and op.end - op.start > HANG:
            problems.append(f"hung for {op.end - op.start:.1f} s: {op}")
        if op.outcome == "running":
            problems.append(f"never completed: {op}")
    for op in history.ops:
        if op.kind not in READS or op.outcome != "ok" or op.value is None:
            continue
        assert op.key is not None
        superseding = _superseding(op, writes.get(op.key, []), clears, window)
        if superseding is not None:
            problems.append(
                f"stale read: {op}\n    outdated by {superseding}\n"
                + _story(history, op.key, superseding.start - 0.05, op.end or op.start)
            )
    return problems


def _superseding(read: Op, writes: list[Op], clears: list[Op], window: float) -> Op | None:
    """A change that had outdated *read*'s value before the read began, if any.

    A change outdates a value when it was invoked after the value's write
    completed (one writer per key: it is a later write). It must have completed
    before the read began — on the same instance — or `window` before it, on
    another one.
    """
    written = [w for w in writes if w.value == read.value]
    if not written:
        return None  # a value not in the history (cannot happen: values are unique)
    source = written[0]
    if source.end is None:
        return None  # a cancelled write: when it took effect is unknown
    loader_key = source.kind == "update"
    candidates = [w for w in writes if w.value is not None and w.value > (source.value or 0)]
    if not loader_key:  # a clear outdates a direct key's values, not the database's
        candidates += clears
    for change in candidates:
        if change.outcome != "ok" or change.end is None or change.start <= source.end:
            continue
        allowance = 0.0 if change.instance == read.instance else window
        if change.end + allowance < read.start:
            return change
    return None


def _story(history: History, key: str, since: float, until: float) -> str:
    lines = [
        f"    {op}"
        for op in history.ops
        if (op.key == key or op.kind == "clear") and since <= op.start <= until
    ]
    lines += [f"    note {n}" for n in history.notes if since <= float(n.split()[0]) <= until]
    return "\n".join(lines)


# -- the driver -----------------------------------------------------------------------


@dataclass
class Config:
    instances: int = 3
    clients: int = 4  # per instance
    direct_keys: int = 4
    loader_keys: int = 4
    seconds: float = 4.0
    max_delay: float = 0.004  # proxy hold per chunk, seconds
    cancel_rate: float = 0.15  # share of operations run under a short timeout
    # Clears are rare in production; a storm of them (one during each of three
    # version loads in a row) makes a read give up and count a Redis error, a
    # miss by design (`_mirror.py`): the healthy profile does not clear.
    clear_share: float = 0.001  # share of operations that clear the namespace
    cut_rate: float = 0.3  # subscription cuts per second per instance
    hostile_rate: float = 0.5  # hostile messages per second
    pause_rate: float = 0.0  # server pauses per second (then Redis errors are allowed)
    window: float = 1.5  # cross-instance propagation allowance, seconds
    max_stale: float = 0.5


@dataclass
class Run:
    seed: int
    history: History
    problems: list[str]
    stats: list[dict[str, Any]]


class Database:
    """The loader keys' truth, and the numbering of every write: in this process."""

    def __init__(self) -> None:
        self._rows: dict[str, int] = {}
        self._versions = itertools.count(1)

    async def next_version(self) -> int:
        return next(self._versions)

    async def read(self, key: str) -> int:
        return self._rows[key]

    async def write(self, key: str, version: int) -> None:
        self._rows[key] = version

    async def close(self) -> None:
        pass


class SharedDatabase(Database):
    """The same on the server itself (not through any proxy), for instances in
    separate processes: one numbering and one truth for all of them."""

    def __init__(self, port: int, seed: int) -> None:
        self._client = aioredis.Redis(port=port)
        self._prefix = f"mcdb{seed}:"

    async def next_version(self) -> int:
        return int(await self._client.incr(self._prefix + "versions"))

    async def read(self, key: str) -> int:
        return int(await self._client.get(self._prefix + key) or 0)

    async def write(self, key: str, version: int) -> None:
        await self._client.set(self._prefix + key, version)

    async def close(self) -> None:
        await self._client.aclose()


class Driver:
    """Runs *local* instances (all of them by default) and their clients.

    In process mode (`run_processes`) each instance is a child process running
    a driver of its own for that one instance; the parent injects the
    server-wide faults and judges the merged history.
    """

    def __init__(
        self,
        server: Any,  # a RedisServer, or anything with its `port` (a child process)
        seed: int,
        config: Config,
        *,
        local: list[int] | None = None,
        db: Database | None = None,
        t0: float | None = None,
    ) -> None:
        self.server = server
        self.seed = seed
        self.config = config
        self.local = list(range(config.instances)) if local is None else local
        self.rng = random.Random(seed * 7 + (self.local[0] if local else 0))
        self.history = History() if t0 is None else History(t0)
        self.db = db or Database()
        self.proxies: dict[int, ChaosProxy] = {}
        self.caches: dict[int, TwoTierCache] = {}
        self.functions: dict[int, Any] = {}
        self.debug = False  # print the stacks of hung clients
        self.healthy = True  # no pause or restart so far: Redis errors are failures

    # The writer of a key: one client of one instance.
    def owner(self, key: str) -> tuple[int, int]:
        n = int(key[1:])
        return n % self.config.instances, n % self.config.clients

    async def run(self) -> Run:
        """Every instance in this process: run, quiesce, judge."""
        for key in self.loader_keys():
            await self.db.write(key, await self.db.next_version())
        stats, stuck = await self._run_local(quiesce=None)
        problems = check(self.history, self.config.window)
        if not stuck:
            problems += self._errors_against_a_healthy_server(stats)
        return Run(self.seed, self.history, problems, stats)

    async def _run_local(
        self, quiesce: Callable[[], Awaitable[None]] | None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Start the local instances, run their clients (and the faults), then,
        once *quiesce* returns (at once in process), the final reads."""
        config = self.config
        for i in self.local:
            proxy = ChaosProxy(
                self.server.port, jitter=config.max_delay, rng=random.Random(self.seed * 100 + i)
            )
            await proxy.start()
            cache = TwoTierCache(
                redis_url=proxy.url,
                namespace=f"mc{self.seed}",
                redis_timeout=1.0,  # delays stay far below it: a timeout is a finding
                connect_timeout=1.0,
                health_interval=0.2,
                max_stale=config.max_stale,
                lease_ttl=2.0,
            )
            self.proxies[i], self.caches[i] = proxy, cache
            self.functions[i] = self._cached_function(cache)
            await cache.start()
        try:
            tasks = [
                asyncio.create_task(self._client(i, c))
                for i in self.local
                for c in range(config.clients)
            ]
            tasks.append(asyncio.create_task(self._faults(server_wide=quiesce is None)))
            _, stuck = await asyncio.wait(tasks, timeout=config.seconds + HANG)
            for task in stuck:  # their running operations are reported as hung
                if self.debug:
                    _print_awaits(task)
                task.cancel()
            await asyncio.wait(tasks)
            if quiesce is not None:
                await quiesce()
            if not stuck:
                await self._quiesce()
        finally:
            stats = [self.caches[i].get_stats() for i in self.local]
            for cache in self.caches.values():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cache.close(), HANG)
            for proxy in self.proxies.values():
                await proxy.close()
            await self.db.close()
        return stats, bool(stuck)

    def _errors_against_a_healthy_server(self, stats: list[dict[str, Any]]) -> list[str]:
        if not self.healthy:
            return []
        return [
            f"instance {i} counted {s['l2_errors']} Redis error(s) against a healthy "
            "server (a cancelled caller must cost nobody else a read)"
            for i, s in enumerate(stats)
            if s["l2_errors"]
        ]

    # -- process mode -----------------------------------------------------------------

    async def run_processes(self, workdir: Path) -> Run:
        """Each instance in a child process of its own (`python -m
        integration._model_check --child`), on one shared database; the
        parent publishes hostile messages and pauses the server, then judges
        the merged history. The children quiesce together: each reads every
        key's last value only once all of them have stopped writing."""
        db = SharedDatabase(self.server.port, self.seed)
        for key in self.loader_keys():
            await db.write(key, await db.next_version())
        await db.close()
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "integration._model_check",
                "--child",
                json.dumps(
                    {
                        "seed": self.seed,
                        "port": self.server.port,
                        "instance": i,
                        "t0": self.history.t0,
                        "dir": str(workdir),
                        "config": asdict(self.config),
                    }
                ),
                cwd=Path(__file__).resolve().parent.parent,
            )
            for i in range(self.config.instances)
        ]
        await self._faults(server_wide=True)
        written = [workdir / f"written-{i}" for i in range(self.config.instances)]
        deadline = time.monotonic() + 3 * HANG
        while not all(path.exists() for path in written) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        (workdir / "quiesce").touch()
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 3 * HANG)
            except TimeoutError:
                child.kill()
                await child.wait()
        stats: list[dict[str, Any]] = []
        for i in range(self.config.instances):
            path = workdir / f"history-{i}.json"
            if not path.exists():
                self.history.note(f"instance {i}'s process left no history")
                continue
            record = json.loads(path.read_text())
            self.history.ops += [Op(**op) for op in record["ops"]]
            self.history.notes += record["notes"]
            self.healthy = self.healthy and record["healthy"]
            stats.append(record["stats"])
        self.history.ops.sort(key=lambda op: op.start)
        problems = check(self.history, self.config.window)
        if len(stats) < self.config.instances:
            problems.append(f"only {len(stats)} of {self.config.instances} processes reported")
        return Run(
            self.seed, self.history, problems + self._errors_against_a_healthy_server(stats), stats
        )

    async def run_child(self, workdir: Path) -> None:
        """One instance of a process-mode run (see `run_processes`)."""
        (instance,) = self.local

        async def quiesce() -> None:
            (workdir / f"written-{instance}").touch()
            deadline = time.monotonic() + 3 * HANG
            while not (workdir / "quiesce").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

        stats, _ = await self._run_local(quiesce)
        record = {
            "ops": [asdict(op) for op in self.history.ops],
            "notes": self.history.notes,
            "healthy": self.healthy,
            "stats": {k: v for k, v in stats[0].items() if _plain(v)},
        }
        (workdir / f"history-{instance}.json").write_text(json.dumps(record))

    # -- operations ---------------------------------------------------------------------

    def direct_keys(self) -> list[str]:
        return [f"d{n}" for n in range(self.config.direct_keys)]

    def loader_keys(self) -> list[str]:
        return [f"l{n}" for n in range(self.config.loader_keys)]

    def _cached_function(self, cache: TwoTierCache) -> Any:
        db = self.db

        @cache.cached(ttl=30, tags=["row:{key}"])
        async def row(key: str) -> int:
            return await db.read(key)  # (a load takes a turn at least, as a query does)

        return row

    async def _timed(self, op: Op, action: Callable[[], Awaitable[Any]], read: bool) -> None:
        """Run *action* for *op*, maybe under a short timeout (a cancelled caller)."""
        cancel = self.rng.random() < self.config.cancel_rate
        timeout = self.rng.uniform(0, 0.003) if cancel else None
        try:
            async with asyncio.timeout(timeout):
                result = await action()
        except TimeoutError:
            op.outcome = "cancelled"
            return
        except asyncio.CancelledError:
            op.end = None  # the driver gave up on it: "never completed"
            raise
        except Exception as exc:  # judged by `check`: none is documented for these calls
            op.outcome = f"error: {exc!r}"
            op.end = self.history.now()
            return
        op.end = self.history.now()
        op.outcome = "ok"
        if read:
            op.value = _version(result)

    async def _client(self, instance: int, client: int) -> None:
        rng = random.Random(self.seed * 1000 + instance * 10 + client)
        deadline = time.monotonic() + self.config.seconds
        cache, fn = self.caches[instance], self.functions[instance]
        mine = [
            k
            for k in self.direct_keys() + self.loader_keys()
            if self.owner(k) == (instance, client)
        ]
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.3:
                if mine:
                    await self._write(instance, rng.choice(mine), rng)
            elif roll < 0.3 + self.config.clear_share:
                op = self.history.begin(instance, "clear", None)
                await self._timed(op, cache.clear, read=False)
            else:
                await self._read(instance, cache, fn, rng)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0, 0.003))

    async def _write(self, instance: int, key: str, rng: random.Random) -> None:
        cache, fn = self.caches[instance], self.functions[instance]
        version = await self.db.next_version()
        if key.startswith("d"):
            if rng.random() < 0.7:
                op = self.history.begin(instance, "set", key, version)
                await self._timed(op, lambda: cache.set(key, f"{key}:{version}"), read=False)
            else:
                op = self.history.begin(instance, "delete", key, version)
                await self._timed(op, lambda: cache.delete(key), read=False)
            return
        op = self.history.begin(instance, "update", key, version)
        await self.db.write(key, version)  # the database write, then the invalidation
        if rng.random() < 0.5:
            await self._timed(op, lambda: fn.invalidate(key), read=False)
        else:
            await self._timed(op, lambda: cache.invalidate_tag(f"row:{key}"), read=False)

    async def _read(self, instance: int, cache: TwoTierCache, fn: Any, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.4:
            key = rng.choice(self.direct_keys())
            if rng.random() < 0.1:
                op = self.history.begin(instance, "sync-get", key)
                await self._timed(op, lambda: asyncio.to_thread(cache.sync.get, key), read=True)
            else:
                op = self.history.begin(instance, "get", key)
                await self._timed(op, lambda: cache.get(key), read=True)
            return
        key = rng.choice(self.loader_keys())
        if roll < 0.8:
            op = self.history.begin(instance, "call", key)
            await self._timed(op, lambda: fn(key), read=True)
        elif roll < 0.93:
            op = self.history.begin(instance, "get", key)
            await self._timed(op, lambda: cache.get(fn.key(key)), read=True)
        else:
            op = self.history.begin(instance, "warmup", key)
            db = self.db

            async def load(_: str) -> int:
                return await db.read(key)

            async def warm() -> Any:
                await cache.warmup([fn.key(key)], load, tags=[f"row:{key}"], ttl=30)
                return await cache.get(fn.key(key))

            await self._timed(op, warm, read=True)

    async def _faults(self, *, server_wide: bool) -> None:
        """Cuts of the local instances' connections; with *server_wide*, hostile
        messages on the channel and pauses of the server as well."""
        config, rng = self.config, self.rng
        deadline = time.monotonic() + config.seconds
        raw = aioredis.Redis(port=self.server.port)
        channel = Layout(f"mc{self.seed}").channel
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                for i, proxy in self.proxies.items():
                    if rng.random() < config.cut_rate * 0.05:
                        self.healthy = False  # reads in flight on the cut connections fail
                        self.history.note(f"cut the connections of instance {i}")
                        proxy.reset()
                if not server_wide:
                    continue
                if rng.random() < config.hostile_rate * 0.05:
                    frame = rng.choice(HOSTILE_MESSAGES)
                    self.history.note(f"hostile message {frame[:40]!r}")
                    await raw.publish(channel, frame)
                if rng.random() < config.pause_rate * 0.05:
                    self.healthy = False
                    self.history.note("server paused")
                    self.server.pause()
                    await asyncio.sleep(rng.uniform(0.05, 0.3))
                    self.server.resume()
                    self.history.note("server resumed")
        finally:
            await raw.aclose()

    async def _quiesce(self) -> None:
        """After the run: every local instance reads every key's last value (nothing lost)."""
        await asyncio.sleep(self.config.window)
        for i in self.local:
            cache, fn = self.caches[i], self.functions[i]
            for key in self.direct_keys():
                op = self.history.begin(i, "get", key)
                await self._final(op, cache.get(key))
            for key in self.loader_keys():
                op = self.history.begin(i, "call", key)
                await self._final(op, fn(key))

    async def _final(self, op: Op, read: Awaitable[Any]) -> None:
        try:
            result = await asyncio.wait_for(read, HANG)
        except Exception as exc:
            op.outcome = f"error: {exc!r}"
        else:
            op.outcome, op.value = "ok", _version(result)
        op.end = self.history.now()


def _plain(value: object) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _print_awaits(task: asyncio.Task[Any]) -> None:
    """The chain of coroutines a hung task waits in (`Task.print_stack` shows one frame)."""
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            print(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    print("  waiting for", task._fut_waiter)  # type: ignore[attr-defined]


def _version(result: Any) -> int | None:
    if result is None:
        return None
    if isinstance(result, int):
        return result
    return int(str(result).rsplit(":", 1)[1])


#: Messages nobody should be able to stop an instance with: bytes published on
#: the namespace's channel by anyone with access to the server.
HOSTILE_MESSAGES = [
    b"2\x1fk\x1f1\x1fstranger\x1f" + b"9" * 400 + b"\x1fd0",  # `sent` overflows a float
    b"2\x1ft\x1f1\x1fstranger\x1f0\x1frow:l0\x1f" + b"9" * 5000,  # a huge version
    b"\xff\xfe not utf-8",
    b"",
    b"2\x1fq",
    b"2\x1fk\x1fx\x1fstranger\x1f0\x1fd1",  # a sequence number that is no number
]


# -- by hand ----------------------------------------------------------------------------


def _seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


async def _main(args: argparse.Namespace) -> int:
    if args.child:
        spec = json.loads(args.child)
        config = Config(**spec["config"])
        endpoint = argparse.Namespace(port=spec["port"])
        driver = Driver(
            endpoint,
            spec["seed"],
            config,
            local=[spec["instance"]],
            db=SharedDatabase(spec["port"], spec["seed"]),
            t0=spec["t0"],
        )
        await driver.run_child(Path(spec["dir"]))
        return 0
    config = Config(seconds=args.seconds, pause_rate=args.pause_rate)
    deadline = time.monotonic() + 60 * args.minutes
    failed = 0
    with RedisServer.start(args.flavour) as server:
        for seed in _seeds(args.seeds):
            if time.monotonic() > deadline:
                break
            driver = Driver(server, seed, config)
            if args.processes:
                with tempfile.TemporaryDirectory() as workdir:
                    run = await driver.run_processes(Path(workdir))
            else:
                run = await driver.run()
            status = "ok" if not run.problems else f"{len(run.problems)} violation(s)"
            print(f"seed {seed}: {len(run.history.ops)} operations, {status}", flush=True)
            if run.problems:
                failed += 1
                print("\n".join(run.problems[:3]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1-20", help="e.g. 1-200 or 3,7,11")
    parser.add_argument("--minutes", type=float, default=5.0, help="stop after this long")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one run")
    parser.add_argument("--pause-rate", type=float, default=0.0, help="server pauses per second")
    parser.add_argument("--processes", action="store_true", help="each instance in a process")
    parser.add_argument("--flavour", default=None, help="redis or valkey")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    sys.exit(asyncio.run(_main(parser.parse_args())))
