"""`twotier bench --fleet N`: N instances over several processes against a raw
pub/sub fleet of the same size (issue 20, item 2).

Each child process runs its share of the N twotier instances and as many raw
redis-py subscribers. The parent alternates, event by event, a raw `PUBLISH`
and an `invalidate_tag` from a writer instance of its own, and waits until
every subscriber (or every instance) has it: each child reports when its
last one applied the event (`time.monotonic_ns()`, one clock for the whole
machine), so a row is the propagation to *all* N. Then two blocks of the same
events, one of each kind, measure the server's CPU per event (`INFO cpu`).
Connections per instance are counted with `CLIENT LIST` while the fleet is
idle. Last, a resync storm: every client connection is cut at once (`CLIENT
KILL`), and the row is the time until every instance has resynced and serves
L1 again. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from .core import Context, Series, percentile, python_exe

READY_TIMEOUT = 120.0
EVENT_TIMEOUT = 10.0


# --- the child: its share of both fleets ----------------------------------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _child(url: str, namespace: str, count: int) -> None:
    from twotier import TwoTierCache

    seen: dict[str, list[int]] = {}  # event → stamps, one per receiver that applied it
    wanted: dict[str, int] = {}  # event → how many must apply it before it is reported

    def stamp(event: str) -> None:
        stamps = seen.setdefault(event, [])
        stamps.append(time.monotonic_ns())
        if len(stamps) == wanted.get(event, count):
            _say(f"all {event} {max(stamps)}")
            del seen[event]

    clients: list[aioredis.Redis] = []
    listeners: list[asyncio.Task[None]] = []
    raw_messages = 0  # what the raw subscribers received, for the parent's "stats"

    async def raw_subscriber() -> None:
        nonlocal raw_messages
        client = aioredis.Redis.from_url(url)
        clients.append(client)
        pubsub = client.pubsub()
        await pubsub.subscribe(f"{namespace}:raw")
        async for message in pubsub.listen():
            if message["type"] == "message":
                raw_messages += 1
                stamp(message["data"].decode())

    caches = [TwoTierCache(redis_url=url, namespace=namespace) for _ in range(count)]
    for cache in caches:
        await cache.start()
        apply = cache.local.evict_tags

        def stamped(tags: Any, apply: Any = apply) -> None:
            apply(tags)
            for tag in tags:
                if tag.startswith("ev"):
                    stamp(tag)

        cache.local.evict_tags = stamped  # type: ignore[method-assign]  # instrument
    recovery = _Recovery(count)
    for index, cache in enumerate(caches):
        _watched(cache.local, index, recovery)
    loop = asyncio.get_running_loop()
    listeners = [loop.create_task(raw_subscriber()) for _ in range(count)]
    await asyncio.sleep(0.5)  # the subscriptions confirmed
    _say("ready")
    try:
        # Commands from the parent, one a line, until it closes our stdin.
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip() == "watch":
                await recovery.watch()
            elif line.strip() == "watch-restart":
                await _trusted_again(caches)
            elif line.strip() == "stats":
                # Totals over this child's receivers: raw messages, then the
                # instances' invalidations received, resyncs and L1 clears.
                stats = [cache.get_stats() for cache in caches]
                totals = [
                    sum(s[name] for s in stats)
                    for name in ("invalidations_received", "resyncs", "l1_clears")
                ]
                _say(" ".join(["stats", str(raw_messages), *map(str, totals)]))
    finally:
        for task in listeners:
            task.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        for client in clients:
            await client.aclose()
        for cache in caches:
            await cache.close()


class _Recovery:
    """When each instance's L1 was suspended (its link lost) and served again
    (resynced), after the parent cut every connection: the local tiers of the
    child's instances report their `suspended` flag here (`_watched`)."""

    def __init__(self, count: int) -> None:
        self.watching = False
        self.done = asyncio.Event()
        self.cut = [False] * count
        self.back: list[int | None] = [None] * count

    def changed(self, index: int, suspended: bool) -> None:
        if not self.watching:
            return
        if suspended:
            self.cut[index] = True
        elif self.cut[index] and self.back[index] is None:
            self.back[index] = time.monotonic_ns()
            if None not in self.back:
                self.done.set()

    async def watch(self) -> None:
        """Report "watching", then "trusted <ns>" when every instance here has
        been cut and serves again (the last one's moment), or "stuck <n>"
        after 30 s."""
        self.cut = [False] * len(self.cut)
        self.back = [None] * len(self.back)
        self.watching = True
        _say("watching")
        self.done = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await self.done.wait()
        self.watching = False
        stuck = self.back.count(None)
        _say(f"stuck {stuck}" if stuck else f"trusted {max(b for b in self.back if b)}")


async def _trusted_again(caches: list[Any]) -> None:
    """Report "watching", then, once the server went away and came back,
    "trusted <ns>" when every instance here is subscribed and in sync again
    (polled every 10 ms: a restart opens the breaker, and L1 is then served
    within `max_stale` though nothing is trusted), or "stuck <n>" after 30 s."""

    def trusted(cache: Any) -> bool:
        link = cache._link
        return bool(link and link.listener.connected.is_set() and link.mirror.trusted)

    _say("watching")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while all(trusted(cache) for cache in caches) and loop.time() < deadline:  # noqa: ASYNC110  # no event to wait on
        await asyncio.sleep(0.01)
    waiting = set(range(len(caches)))
    last = 0
    while waiting and loop.time() < deadline:
        await asyncio.sleep(0.01)
        back = {index for index in waiting if trusted(caches[index])}
        if back:
            waiting -= back
            last = time.monotonic_ns()
    _say(f"stuck {len(waiting)}" if waiting else f"trusted {last}")


def _watched(local: Any, index: int, recovery: _Recovery) -> None:
    """Instrument one instance's L1: its `suspended` flag reports to *recovery*
    (a property on a subclass made for it; the hit path reads it as before)."""

    class Watched(type(local)):  # type: ignore[misc]  # a subclass of the instance's own class
        @property
        def suspended(self) -> bool:
            return self._watched_suspended

        @suspended.setter
        def suspended(self, value: bool) -> None:
            self._watched_suspended = value
            recovery.changed(index, value)

    current = local.suspended
    local.__class__ = Watched
    local._watched_suspended = current


def child_main(argv: list[str]) -> int:
    url, namespace, count = argv[0], argv[1], int(argv[2])
    asyncio.run(_child(url, namespace, count))
    return 0


# --- the parent ------------------------------------------------------------------------


def shares(size: int, per_process: int = 100) -> list[int]:
    """*size* receivers of each kind split over child processes of *per_process*."""
    out = [per_process] * (size // per_process)
    if size % per_process:
        out.append(size % per_process)
    return out


class Fleet:
    """The child processes of a fleet, and the lines they report."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, url: str, namespace: str, shares: list[int]) -> None:
        for share in shares:
            proc = await asyncio.create_subprocess_exec(
                python_exe(),
                "-m",
                "twotier.cli.bench.fleet",
                url,
                namespace,
                str(share),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs.append(proc)
            self._readers.append(asyncio.get_running_loop().create_task(self._read(proc)))
        async with asyncio.timeout(READY_TIMEOUT):
            for _ in shares:
                while (await self._lines.get()) != "ready":
                    pass

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            await self._lines.put(line.decode().strip())

    async def line(self) -> str:
        """The next line any child reported."""
        return await self._lines.get()

    async def arrived(self, event: str) -> int:
        """When the last receiver of every child applied *event* (monotonic ns)."""
        last, pending = 0, len(self.procs)
        async with asyncio.timeout(EVENT_TIMEOUT):
            while pending:
                parts = (await self._lines.get()).split()
                if len(parts) == 3 and parts[0] == "all" and parts[1] == event:
                    last, pending = max(last, int(parts[2])), pending - 1
        return last

    def send(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")

    async def expect(self, word: str) -> list[str]:
        """The next line starting with *word*, or "stuck", from every child."""
        got: list[str] = []
        async with asyncio.timeout(READY_TIMEOUT):
            while len(got) < len(self.procs):
                line = await self._lines.get()
                if line.split()[0] in (word, "stuck"):
                    got.append(line)
        return got

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
        for task in self._readers:
            task.cancel()


async def server_cpu(probe: aioredis.Redis) -> float:
    """The server's CPU seconds so far, user and system."""
    info = await probe.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _storm(probe: aioredis.Redis, fleet: Fleet) -> tuple[float, int]:
    """Every client connection cut at once (what a failover or a restart does
    to the fleet, minus the lost data): seconds until every instance is
    trusted again, and how many were not within 30 s."""
    fleet.send("watch")
    await fleet.expect("watching")
    t0 = time.monotonic_ns()
    for kind in ("normal", "pubsub"):
        await probe.execute_command("CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes")  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
    replies = await fleet.expect("trusted")
    stuck = sum(int(line.split()[1]) for line in replies if line.startswith("stuck"))
    last = max((int(line.split()[1]) for line in replies if line.startswith("trusted")), default=t0)
    return (last - t0) / 1e9, stuck


async def _restart_storm(ctx: Context, fleet: Fleet) -> tuple[float, int]:
    """The server killed (SIGKILL) and started again on its port, empty, with
    a new run id: seconds from its answering again until every instance is
    subscribed and in sync, and how many were not within 30 s."""
    assert ctx.restart is not None
    fleet.send("watch-restart")
    await fleet.expect("watching")
    await asyncio.to_thread(ctx.restart)
    t0 = time.monotonic_ns()
    replies = await fleet.expect("trusted")
    stuck = sum(int(line.split()[1]) for line in replies if line.startswith("stuck"))
    last = max((int(line.split()[1]) for line in replies if line.startswith("trusted")), default=t0)
    return max(0.0, (last - t0) / 1e9), stuck


async def _one_size(ctx: Context, size: int, events: int) -> list[Series]:
    from twotier import TwoTierCache

    namespace = ctx.ns(f"fleet{size}")
    probe = ctx.client()
    fleet = Fleet()
    writer = TwoTierCache(redis_url=ctx.url, namespace=namespace)
    try:
        before = len(await probe.client_list())
        await fleet.start(ctx.url, namespace, shares(size))
        await writer.start()
        await asyncio.sleep(1.0)
        # the fleet's connections: minus this probe's, the writer's 2, and one per raw subscriber
        connections = (len(await probe.client_list()) - before - 2 - size) / size
        raw_s: list[float] = []
        twotier_s: list[float] = []
        for i in range(events):
            event = f"ev{i}r"
            t0 = time.monotonic_ns()
            await probe.publish(f"{namespace}:raw", event)
            raw_s.append((await fleet.arrived(event) - t0) / 1e9)
            event = f"ev{i}t"
            t0 = time.monotonic_ns()
            await writer.invalidate_tag(event)
            twotier_s.append((await fleet.arrived(event) - t0) / 1e9)
        cpu: dict[str, float] = {}
        for kind in ("r", "t"):
            start = await server_cpu(probe)
            for i in range(events):
                event = f"ev{i}{kind}cpu"
                if kind == "r":
                    await probe.publish(f"{namespace}:raw", event)
                else:
                    await writer.invalidate_tag(event)
                await fleet.arrived(event)
            cpu[kind] = (await server_cpu(probe) - start) / events
        recovery, stuck = await _storm(probe, fleet)
        restarted = await _restart_storm(ctx, fleet) if ctx.restart is not None else None
    finally:
        await writer.close()
        await fleet.stop()
        await probe.aclose()
    title = f"fleet{size}"
    out = [
        Series(title, f"raw PUBLISH → {size} subscribers, all", "floor", "s", raw_s, spread="p99"),
        Series(
            title,
            f"invalidate_tag → {size} instances, all",
            "twotier",
            "s",
            twotier_s,
            "lower",
            "p99",
        ),
        Series(f"{title}-cpu", "Redis CPU per raw PUBLISH", "floor", "s", [cpu["r"]]),
        Series(f"{title}-cpu", "Redis CPU per invalidate_tag", "twotier", "s", [cpu["t"]]),
        Series(f"{title}-cpu", "connections per idle instance", "diag", "conns", [connections]),
        Series(f"{title}-storm", "all cut: trusted again", "diag", "s", [recovery]),
    ]
    if restarted is not None:
        out.append(
            Series(f"{title}-storm", "server restarted: trusted again", "diag", "s", [restarted[0]])
        )
    ctx.log(
        f"  fleet {size}: p50 {percentile(raw_s, 50) * 1e3:.2f} / "
        f"{percentile(twotier_s, 50) * 1e3:.2f} ms, p99 {percentile(raw_s, 99) * 1e3:.2f} / "
        f"{percentile(twotier_s, 99) * 1e3:.2f} ms (raw / twotier); "
        f"CPU {cpu['r'] * 1e6:.0f} / {cpu['t'] * 1e6:.0f} µs per event; "
        f"{connections:.2f} connections per instance; every connection cut: all trusted "
        f"again after {recovery * 1e3:.0f} ms"
        + (f", {stuck} not within 30 s" if stuck else "")
        + (
            f"; server restarted: all trusted again {restarted[0] * 1e3:.0f} ms after it answered"
            + (f", {restarted[1]} not within 30 s" if restarted[1] else "")
            if restarted is not None
            else ""
        )
    )
    return out


async def fleet_rows(ctx: Context, sizes: list[int]) -> list[Series]:
    events = ctx.size(30, 100)
    out: list[Series] = []
    for size in sizes:
        out += await _one_size(ctx, size, events)
    return out


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
