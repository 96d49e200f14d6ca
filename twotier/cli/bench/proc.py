"""`twotier bench` across processes: invalidation latency and the stampede.

The parent drives child processes (`python -m twotier.cli.bench.proc ...`) over
stdin/stdout lines. Latencies compare `time.monotonic_ns()` stamps taken in
different processes: CLOCK_MONOTONIC is one clock for the whole machine.
A child exits when its stdin closes, so nothing outlives the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from .core import Context, Series, percentile, python_exe

READY_TIMEOUT = 30.0
LINE_TIMEOUT = 10.0


# --- children ---------------------------------------------------------------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def _receiver(url: str, namespace: str) -> None:
    """One twotier instance and one raw subscriber (channel `<namespace>:raw`) in one
    process, so the floor and twotier are measured on the same process, alternately."""
    from twotier import TwoTierCache

    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{namespace}:raw")
    while (await pubsub.get_message(timeout=1.0)) is None:
        pass  # the subscribe confirmation

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] in ("message", b"message"):
                now = time.monotonic_ns()
                data = message["data"]
                _say(f"got {data.decode() if isinstance(data, bytes) else data} {now}")

    task = asyncio.get_running_loop().create_task(listen())
    try:
        async with TwoTierCache(redis_url=url, namespace=namespace) as cache:
            local = cache.local
            apply = local.evict_tags

            def stamped(tags: Any) -> None:
                # The moment the invalidation has been applied to this process's L1.
                apply(tags)
                now = time.monotonic_ns()
                _say(f"got {next(iter(tags))} {now}")

            local.evict_tags = stamped  # type: ignore[method-assign]  # instrument this instance
            _say("ready")
            await _until_stdin_closes()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated before redis 8.2
        await client.aclose()


async def _stampede_child(
    lib: str, url: str, namespace: str, callers: int, loader_ms: float
) -> None:
    from twotier import TwoTierCache

    from . import peers

    counter = [0]
    delay = loader_ms / 1000
    cache: TwoTierCache | None = None
    subject: peers.Subject | None = None
    if lib == "twotier":
        cache = TwoTierCache(redis_url=url, namespace=namespace, redis_timeout=1.0)
        await cache.start()
        call: Any = peers.user_function(cache, counter=counter, delay=delay)
    else:
        subject = peers.cashews_subject(
            url, namespace, tags=False, lock=True, counter=counter, delay=delay
        )
        if subject is None:
            raise SystemExit("cashews is not installed")
        call = subject.call
    _say("ready")
    try:
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).split()
            if line and line[0] == "inv" and cache is not None:
                await cache.invalidate_tag(f"user:{int(line[1])}")
                _say("invalidated")
                continue
            if not line or line[0] != "go":
                break
            key = int(line[1])
            before = counter[0]
            t0 = time.perf_counter()
            await asyncio.gather(*(call(key) for _ in range(callers)))
            _say(f"done {counter[0] - before} {(time.perf_counter() - t0) * 1000:.1f}")
    finally:
        if cache is not None:
            await cache.close()
        if subject is not None:
            await subject.close()


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m twotier.cli.bench.proc")
    parser.add_argument("role", choices=["receiver", "stampede"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True, help="namespace or channel")
    parser.add_argument("--lib", default="twotier")
    parser.add_argument("--callers", type=int, default=25)
    parser.add_argument("--loader-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    if args.role == "receiver":
        asyncio.run(_receiver(args.url, args.name))
    else:
        asyncio.run(_stampede_child(args.lib, args.url, args.name, args.callers, args.loader_ms))
    return 0


# --- the parent side ----------------------------------------------------------------------


class Children:
    """Child processes speaking lines; stopped by closing their stdin (then killed)."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, argvs: list[list[str]]) -> None:
        for argv in argvs:
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    python_exe(),
                    "-m",
                    "twotier.cli.bench.proc",
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        for proc in self.procs:
            line = await self.readline(proc, READY_TIMEOUT)
            if line != "ready":
                raise RuntimeError(f"bench child did not start: {line!r}")

    async def readline(self, proc: asyncio.subprocess.Process, wait: float = LINE_TIMEOUT) -> str:
        assert proc.stdout is not None
        async with asyncio.timeout(wait):
            raw = await proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"bench child {proc.pid} exited (code {await proc.wait()})")
        return raw.decode().strip()

    def send(self, line: str, procs: list[asyncio.subprocess.Process] | None = None) -> None:
        for proc in self.procs if procs is None else procs:
            assert proc.stdin is not None
            proc.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self.procs:
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


Latencies = dict[str, tuple[list[float], list[float]]]


async def invalidation(ctx: Context, receivers: int, events: int) -> Latencies:
    """Per mode ("raw", "twotier"): seconds from the sender's call to each receiver (all
    samples), and to the last receiver of each event. The modes alternate event by event
    on the same receiver processes, so machine noise hits both alike."""
    from twotier import TwoTierCache

    name = ctx.ns(f"i{receivers}x{secrets.token_hex(2)}")
    children = Children()
    sender = TwoTierCache(redis_url=ctx.url, namespace=name)
    client = ctx.client()
    out: Latencies = {"raw": ([], []), "twotier": ([], [])}
    try:
        await children.start([["receiver", "--url", ctx.url, "--name", name]] * receivers)
        await sender.start()
        warm = 10
        for e in range(2 * (warm + events)):
            mode = "raw" if e % 2 == 0 else "twotier"
            event = f"e{e}"
            t0 = time.monotonic_ns()
            if mode == "raw":
                await client.publish(f"{name}:raw", event)
            else:
                await sender.invalidate_tag(event)
            stamps = []
            for proc in children.procs:
                _kind, got, stamp = (await children.readline(proc)).split()
                if got != event:
                    raise RuntimeError(f"receiver got {got!r}, expected {event!r}")
                stamps.append((int(stamp) - t0) / 1e9)
            if e >= 2 * warm:
                out[mode][0].extend(stamps)
                out[mode][1].append(max(stamps))
    finally:
        await children.stop()
        await sender.close()
        await client.aclose()
    return out


async def invalidation_cached(ctx: Context, receivers: int, events: int) -> Latencies:
    key = f"inv:{receivers}"
    if key not in ctx.memo:
        ctx.memo[key] = await invalidation(ctx, receivers, events)
    result: Latencies = ctx.memo[key]
    return result


async def invalidation_rows(ctx: Context) -> list[Series]:
    events = ctx.size(100, 300) * max(1, ctx.repeat // 2)
    out: list[Series] = []
    for receivers, scen in ((1, "inv"), (8, "inv8")):
        result = await invalidation_cached(ctx, receivers, events)
        (raw_each, raw_last), (tt_each, tt_last) = result["raw"], result["twotier"]
        label = "1 other process" if receivers == 1 else f"{receivers} processes, each"
        out += [
            Series(
                scen,
                f"redis-py PUBLISH → subscriber, {label}",
                "floor",
                "s",
                raw_each,
                spread="p99",
            ),
            Series(
                scen,
                f"twotier invalidate_tag → L1 applied, {label}",
                "twotier",
                "s",
                tt_each,
                spread="p99",
            ),
        ]
        if receivers > 1:
            out += [
                Series(
                    scen,
                    f"redis-py PUBLISH → last of {receivers}",
                    "diag",
                    "s",
                    raw_last,
                    spread="p99",
                ),
                Series(
                    scen,
                    f"twotier → last of {receivers} instances",
                    "diag",
                    "s",
                    tt_last,
                    spread="p99",
                ),
            ]
    return out


# --- the stampede -------------------------------------------------------------------------------


async def _monitor_until(
    client: aioredis.Redis, marker: str, started: asyncio.Event, seen: list[dict[str, Any]]
) -> None:
    async with client.monitor() as monitor:
        started.set()
        while True:
            info = await monitor.next_command()
            if marker in str(info.get("command", "")):
                return
            seen.append(dict(info))


async def _client_names(client: aioredis.Redis) -> dict[str, str]:
    """address → client name, for the connections open now."""
    listing = await client.client_list()
    return {str(c["addr"]): str(c.get("name") or "") for c in listing}


class Stampedes(NamedTuple):
    """What the stampede rounds measured, per round."""

    loads: list[float]  # loader runs, all instances
    waiting: list[float]  # commands of each instance that waited (ran no loader)
    loading: list[float]  # commands of the instance that ran the loader
    detail: str  # the commands per stampede, by verb


async def stampede(
    ctx: Context,
    lib: str,
    rounds: int,
    instances: int = 4,
    callers: int = 100,
    loader_ms: float = 100.0,
) -> Stampedes:
    """Loader runs per stampede, and per-instance client commands (MONITOR, by client name).

    twotier: a hot key, stampeded again after each invalidation of its tag (the
    ERP's case: an update, then every instance's callers miss at once). Round 0
    warms the instances (connections, the tag's version in each mirror) and is
    not counted. cashews has no tag versions to warm: a new key each round.
    """
    name = ctx.ns(f"s{lib[0]}{secrets.token_hex(2)}")
    per_instance = callers // instances
    children = Children()
    argvs = [
        [
            "stampede",
            "--url",
            f"{ctx.url}?client_name={name}i{j}",
            "--name",
            name,
            "--lib",
            lib,
            "--callers",
            str(per_instance),
            "--loader-ms",
            str(loader_ms),
        ]
        for j in range(instances)
    ]
    watcher = ctx.client()
    out = Stampedes([], [], [], "")
    breakdown: dict[str, int] = {}
    try:
        await children.start(argvs)
        for r in range(rounds + 1):
            key = 1000 if lib == "twotier" else 1000 + r
            if lib == "twotier" and r > 0:
                first = children.procs[:1]
                children.send(f"inv {key}", first)  # the others hear it on the bus
                await children.readline(first[0])
                await asyncio.sleep(0.1)
            marker = f"{name}-end-{r}"
            seen: list[dict[str, Any]] = []
            started = asyncio.Event()
            monitor_client = ctx.client()
            task = asyncio.get_running_loop().create_task(
                _monitor_until(monitor_client, marker, started, seen)
            )
            await started.wait()
            await asyncio.sleep(0.05)
            children.send(f"go {key}")
            ran = [int((await children.readline(proc)).split()[1]) for proc in children.procs]
            names = await _client_names(watcher)
            await watcher.echo(marker)
            async with asyncio.timeout(LINE_TIMEOUT):
                await task
            await monitor_client.aclose()
            if r == 0:
                continue
            counts = dict.fromkeys(range(instances), 0)
            for info in seen:
                who = names.get(f"{info.get('client_address')}:{info.get('client_port')}", "")
                if who.startswith(name):
                    counts[int(who[len(name) + 1 :])] += 1
                    verb = str(info.get("command", "")).split(" ", 1)[0].upper()
                    breakdown[verb] = breakdown.get(verb, 0) + 1
            out.loads.append(float(sum(ran)))
            for i, count in counts.items():
                (out.loading if ran[i] else out.waiting).append(float(count))
    finally:
        await children.stop()
        await watcher.aclose()
    detail = ", ".join(
        f"{verb} {n / rounds:.0f}" for verb, n in sorted(breakdown.items(), key=lambda kv: -kv[1])
    )
    return out._replace(detail=f"per stampede (all instances): {detail or 'none'}")


async def stampede_rows(ctx: Context) -> list[Series]:
    from .peers import available

    rounds = ctx.repeat
    out: list[Series] = []
    libs = ["twotier"] + (["cashews"] if available("cashews") else [])
    for lib in libs:
        measured = await stampede(ctx, lib, rounds)
        role = "twotier" if lib == "twotier" else "peer"
        label = "twotier @cached" if lib == "twotier" else "cashews @cache(lock=True)"
        out += [
            Series("stampede", f"{label}: loader runs per stampede", role, "runs", measured.loads),
            Series(
                "stampede",
                f"{label}: commands per waiting instance",
                role,
                "cmds/inst",
                measured.waiting,
                note=measured.detail,
            ),
            Series(
                "stampede",
                f"{label}: commands of the loading instance",
                "diag",
                "cmds/inst",
                measured.loading,
            ),
        ]
    return out


def median_of(values: list[float]) -> float:
    return percentile(values, 50)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
