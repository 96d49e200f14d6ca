"""The fleet under a rising invalidation rate, up to saturation (issue 20).

    python -m twotier.cli.bench.rates --instances 100 --rates 10,30,100,300,1000,3000 --seconds 3

The fleet of `twotier bench --fleet` (`fleet.py`: child processes of 100,
each running its share of the N twotier instances and as many raw redis-py
subscribers) on a fresh embedded server. For each rate R, each subject in
turn sends R events per second for `--seconds`, open loop: every event has
its scheduled send time and is sent then, as a task, whatever the earlier
ones are doing. The floor `PUBLISH`es to the raw subscribers; twotier calls
`invalidate_tag` on a writer instance of its own (calls that overlap go out
as one message: the instances apply each tag of it, and the child stamps
each tag as its own event). A row:

- sent/s: the events over the time from the first scheduled send until the
  last send call returned (plus one interval), so a sender that keeps up
  shows R;
- propagation to all N, per event: from its send until the last receiver
  applied it (`time.monotonic_ns()`, one clock for the machine), p50, p99,
  max over the events that arrived;
- lost: events that had not reached all N receivers `--timeout` seconds
  after the last send (or whose send failed);
- Redis CPU: `used_cpu_user + used_cpu_sys` (`INFO cpu`) over the window
  from the first send until every event arrived, per second of it (1.0 is
  one core);
- messages per receiver: what each raw subscriber received, or each
  instance's `invalidations_received`, the mean over the fleet: fewer than
  the events where twotier coalesced overlapping calls.

Saturation, per subject: the first rate whose sent/s falls short of R by
more than 10 %, whose p99 exceeds 10× the p99 at the lowest rate, or that
lost an event. A subject's sweep stops one rate after its saturation.
`--repeat` runs each rate several times: the table shows the median, and
the spread (min–max) of p99. Prints figures, asserts nothing; `--json`
and `--plot` (p99 against rate, log-log, matplotlib) write them out.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import statistics
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .core import percentile
from .fleet import Fleet, server_cpu, shares

SUBJECTS = ("raw", "twotier")
LABELS = {"raw": "raw PUBLISH (floor)", "twotier": "twotier invalidate_tag"}
SHORTFALL = 0.10  # sent/s this far below the target: saturated
P99_GROWTH = 10.0  # p99 this many times the lowest rate's: saturated
SETTLE = 0.3  # seconds between runs, and before the counters are read
DRAIN = 60.0  # after a run that lost events: how long its backlog may take to clear


@dataclass
class Run:
    """One subject at one rate, one round."""

    subject: str
    rate: float
    events: int
    sent_per_s: float
    p50: float  # seconds; nan when no event arrived
    p99: float
    max: float
    lost: int
    failed: int  # send calls that raised
    cpu: float  # server CPU seconds per second of the window
    per_receiver: float  # messages each receiver got, mean over the fleet
    resyncs: int  # twotier instances' resyncs during the run (0 for raw)
    backlog: int = 0  # lost events still not everywhere when the next run began


@dataclass
class Sweep:
    """Every run of one fleet size, and where each subject saturated."""

    instances: int
    seconds: float
    runs: list[Run] = field(default_factory=list)
    saturation: dict[str, float | None] = field(default_factory=dict)

    def rounds(self, subject: str, rate: float) -> list[Run]:
        return [r for r in self.runs if r.subject == subject and r.rate == rate]

    def rates(self) -> list[float]:
        return sorted({r.rate for r in self.runs})


def median(runs: list[Run], name: str) -> float:
    values = [float(getattr(r, name)) for r in runs]
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


class _Collector:
    """Reads every line the fleet's children report: when each child's
    receivers all applied an event, and the totals each child counts."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.children = len(fleet.procs)
        self.partial: dict[str, list[int]] = {}
        self.done: dict[str, int] = {}  # event → when its last receiver applied it (ns)
        self.changed = asyncio.Event()
        self._stats: asyncio.Queue[list[int]] = asyncio.Queue()

    async def run(self) -> None:
        while True:
            parts = (await self.fleet.line()).split()
            if len(parts) == 3 and parts[0] == "all":
                stamps = self.partial.setdefault(parts[1], [])
                stamps.append(int(parts[2]))
                if len(stamps) == self.children:
                    self.done[parts[1]] = max(stamps)
                    del self.partial[parts[1]]
                    self.changed.set()
            elif parts and parts[0] == "stats":
                await self._stats.put([int(p) for p in parts[1:]])

    async def totals(self) -> list[int]:
        """Over every child: raw messages, invalidations received, resyncs, L1 clears."""
        self.fleet.send("stats")
        rows = [await self._stats.get() for _ in range(self.children)]
        return [sum(column) for column in zip(*rows, strict=True)]

    async def wait_for(self, events: list[str], grace: float) -> None:
        """Until every one of *events* has arrived everywhere, or *grace* s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while not all(event in self.done for event in events):
                    self.changed.clear()
                    await self.changed.wait()


class _Publisher:
    """The floor's sender: `PUBLISH` written straight to one connection, the
    replies read by a task of their own, so that a send costs the sender no
    more than a write (redis-py's per-call work capped it near 1,000/s on
    this machine, below what the server and the receivers take)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel.encode()
        self.pending: collections.deque[asyncio.Future[int]] = collections.deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        reader, self._writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
        self._reader = asyncio.get_running_loop().create_task(self._replies(reader))

    async def _replies(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            future = self.pending.popleft()
            if line.startswith(b":"):
                future.set_result(int(line[1:]))
            else:
                future.set_exception(RuntimeError(line.decode(errors="replace").strip()))

    def publish(self, event: str) -> asyncio.Future[int]:
        assert self._writer is not None
        data = event.encode()
        self._writer.write(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(self.channel), self.channel, len(data), data)
        )
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


async def _run(
    subject: str,
    rate: float,
    seconds: float,
    name: str,
    send: Callable[[str], Awaitable[object]],
    collector: _Collector,
    probe: aioredis.Redis,
    instances: int,
    grace: float,
) -> Run:
    count = max(1, round(rate * seconds))
    events = [f"ev{name}-{i}" for i in range(count)]
    sent: dict[str, int] = {}
    before = await collector.totals()
    cpu0 = await server_cpu(probe)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[object]] = []

    async def one(event: str) -> object:
        return await send(event)

    start = time.monotonic_ns()
    for i, event in enumerate(events):
        due = start + round(i * 1e9 / rate)
        delay = (due - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        sent[event] = time.monotonic_ns()
        tasks.append(loop.create_task(one(event)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    finished = time.monotonic_ns()
    await collector.wait_for(events, grace)
    window = (time.monotonic_ns() - start) / 1e9
    cpu = (await server_cpu(probe) - cpu0) / window
    await asyncio.sleep(SETTLE)  # stragglers of the last message reach the counters
    after = await collector.totals()
    delta = [a - b for a, b in zip(after, before, strict=True)]
    propagation = [(collector.done[e] - sent[e]) / 1e9 for e in events if e in collector.done]
    backlog = 0
    if len(propagation) < count:  # counted lost; their backlog must not slow the next run
        await collector.wait_for(events, DRAIN)
        backlog = sum(e not in collector.done for e in events)
    received = delta[0] if subject == "raw" else delta[1]
    return Run(
        subject=subject,
        rate=rate,
        events=count,
        sent_per_s=count / ((finished - start) / 1e9 + 1 / rate),
        p50=percentile(propagation, 50) if propagation else math.nan,
        p99=percentile(propagation, 99) if propagation else math.nan,
        max=max(propagation, default=math.nan),
        lost=count - len(propagation),
        failed=sum(isinstance(r, BaseException) for r in results),
        cpu=cpu,
        per_receiver=received / instances,
        resyncs=0 if subject == "raw" else delta[2],
        backlog=backlog,
    )


def saturated(runs: list[Run], base_p99: float) -> bool:
    """Whether these rounds of one rate show the subject saturated."""
    rate = runs[0].rate
    return (
        median(runs, "sent_per_s") < (1 - SHORTFALL) * rate
        or median(runs, "p99") > P99_GROWTH * base_p99
        or math.isnan(median(runs, "p99"))
        or median(runs, "lost") > 0
    )


async def sweep(
    url: str,
    instances: int,
    rates: list[float],
    seconds: float,
    repeat: int = 1,
    grace: float = 5.0,
    log: Callable[[str], None] = print,
) -> Sweep:
    """The rate sweep of one fleet of *instances* against the server at *url*."""
    from twotier import TwoTierCache

    namespace = f"rates{instances}"
    probe = aioredis.Redis.from_url(url)
    sender = _Publisher(f"{namespace}:raw")
    writer = TwoTierCache(redis_url=url, namespace=namespace)
    fleet = Fleet()
    collector: _Collector | None = None
    reader: asyncio.Task[None] | None = None
    result = Sweep(instances, seconds)

    send: dict[str, Callable[[str], Awaitable[object]]] = {
        "raw": sender.publish,
        "twotier": writer.invalidate_tag,
    }
    try:
        await sender.start(url)
        await fleet.start(url, namespace, shares(instances))
        await writer.start()
        collector = _Collector(fleet)
        reader = asyncio.get_running_loop().create_task(collector.run())
        for subject in SUBJECTS:  # connections, scripts and versions in place
            await send[subject](f"warm{subject}")
        await asyncio.sleep(1.0)
        active = list(SUBJECTS)
        base: dict[str, float] = {}
        for step, rate in enumerate(rates):
            for subject in list(active):
                rounds: list[Run] = []
                for r in range(repeat):
                    name = f"{step}{subject[0]}{r}"
                    run = await _run(
                        subject,
                        rate,
                        seconds,
                        name,
                        send[subject],
                        collector,
                        probe,
                        instances,
                        grace,
                    )
                    rounds.append(run)
                    log(_line(instances, run))
                    await asyncio.sleep(SETTLE)
                result.runs += rounds
                if subject not in base:
                    base[subject] = median(rounds, "p99")
                if subject in result.saturation:
                    active.remove(subject)  # one rate after saturation: done
                elif saturated(rounds, base[subject]):
                    result.saturation[subject] = rate
            if not active:
                break
        for subject in SUBJECTS:
            result.saturation.setdefault(subject, None)
    finally:
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await writer.close()
        await fleet.stop()
        await sender.close()
        await probe.aclose()
    return result


# --- output ---------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "—"
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def _line(instances: int, run: Run) -> str:
    return (
        f"  N={instances} {run.rate:g}/s {run.subject}: sent {run.sent_per_s:,.0f}/s, "
        f"p50 {_ms(run.p50)} p99 {_ms(run.p99)} max {_ms(run.max)} ms, lost {run.lost}, "
        f"Redis CPU {run.cpu * 100:.0f} %, {run.per_receiver:,.1f} messages per receiver"
        + (f", {run.resyncs} resyncs" if run.resyncs else "")
        + (f", {run.failed} sends failed" if run.failed else "")
        + (f", {run.backlog} still not everywhere {DRAIN:.0f} s later" if run.backlog else "")
    )


def _pair(result: Sweep, rate: float, render: Callable[[list[Run]], str]) -> str:
    cells = []
    for subject in SUBJECTS:
        rounds = result.rounds(subject, rate)
        cells.append(render(rounds) if rounds else "—")
    return " / ".join(cells)


def table(result: Sweep) -> str:
    """The sweep as a Markdown table, raw / twotier in each cell."""

    def p99(rounds: list[Run]) -> str:
        text = _ms(median(rounds, "p99"))
        if len(rounds) > 1:
            values = [r.p99 for r in rounds]
            text += f" ({_ms(min(values))}–{_ms(max(values))})"
        return text

    def mark(rate: float) -> str:
        hit = [s for s in SUBJECTS if result.saturation.get(s) == rate]
        return f"{rate:g}" + (" ‹" + ", ".join(hit) + " saturated›" if hit else "")

    rows = [
        "| rate/s | sent/s | p50 ms | p99 ms | max ms | lost | Redis CPU | messages per receiver |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate in result.rates():
        rows.append(
            "| "
            + " | ".join(
                [
                    mark(rate),
                    _pair(result, rate, lambda r: f"{median(r, 'sent_per_s'):,.0f}"),
                    _pair(result, rate, lambda r: _ms(median(r, "p50"))),
                    _pair(result, rate, p99),
                    _pair(result, rate, lambda r: _ms(median(r, "max"))),
                    _pair(result, rate, lambda r: f"{median(r, 'lost'):g}"),
                    _pair(result, rate, lambda r: f"{median(r, 'cpu') * 100:.0f} %"),
                    _pair(result, rate, lambda r: f"{median(r, 'per_receiver'):,.0f}"),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def plot(results: list[Sweep], path: str, title: str) -> None:
    """p99 (and p50, thin) propagation to all against the target rate, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"raw": "tab:gray", "twotier": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    for index, result in enumerate(results):
        style = styles[index % len(styles)]
        for subject in SUBJECTS:
            xs = [r for r in result.rates() if result.rounds(subject, r)]
            p99 = [median(result.rounds(subject, r), "p99") * 1e3 for r in xs]
            p50 = [median(result.rounds(subject, r), "p50") * 1e3 for r in xs]
            label = f"{LABELS[subject]}, N={result.instances}"
            ax.plot(xs, p99, style, marker="o", color=colours[subject], label=f"{label}: p99")
            ax.plot(xs, p50, style, marker=".", color=colours[subject], alpha=0.4, lw=1)
            at = result.saturation.get(subject)
            if at is not None:
                y = median(result.rounds(subject, at), "p99") * 1e3
                if not math.isnan(y):
                    ax.plot([at], [y], "x", color="tab:red", ms=11, mew=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("invalidation rate sent, events/s (target)")
    ax.set_ylabel("propagation to all N, ms")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.plot([], [], "x", color="tab:red", label="saturation (first rate)")
    ax.plot([], [], ".", color="black", alpha=0.4, label="faint: p50")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------


def _loaded(data: dict[str, Any]) -> Sweep:
    runs = [Run(**run) for run in data.pop("runs")]
    return Sweep(**data, runs=runs)


def _server_version(url: str) -> str:
    async def ask() -> str:
        probe = aioredis.Redis.from_url(url)
        try:
            info = await probe.info("server")
        finally:
            await probe.aclose()
        return str(info.get("redis_version", "?"))

    return asyncio.run(ask())


def main(argv: list[str]) -> int:
    from twotier.testing import RedisServer, available_servers

    parser = argparse.ArgumentParser(prog="python -m twotier.cli.bench.rates")
    parser.add_argument("--instances", default="100", help="fleet sizes, comma-separated")
    parser.add_argument("--rates", default="10,30,100,300,1000,3000", help="events/s, ascending")
    parser.add_argument("--seconds", type=float, default=3.0, help="sending time per rate")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per rate")
    parser.add_argument("--timeout", type=float, default=5.0, help="lost after this, s")
    parser.add_argument("--flavour", default=None, help="redis or valkey (the first found)")
    parser.add_argument("--json", default=None, metavar="PATH")
    parser.add_argument("--plot", default=None, metavar="PATH")
    parser.add_argument(
        "--from-json", default=None, metavar="PATH[,PATH]", help="no run: print and plot these"
    )
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.instances.split(",")]
    rates = sorted(float(r) for r in args.rates.split(","))
    if min(sizes) < 1 or min(rates) <= 0 or args.seconds <= 0 or args.repeat < 1:
        parser.error("sizes, rates, --seconds and --repeat must be positive")
    results: list[Sweep] = []
    if args.from_json:  # print and plot earlier runs, e.g. one file per fleet size
        server = "?"
        for path in args.from_json.split(","):
            with open(path) as source:
                data = json.load(source)
            server = data["server"]
            results += [_loaded(sweep) for sweep in data["sweeps"]]
    else:
        flavour = args.flavour or available_servers()[0]
        for size in sizes:
            with RedisServer.start(flavour) as embedded:
                server = f"{flavour} {_server_version(embedded.url)}"
                print(f"N={size}: {server}, {args.seconds:g} s per rate")
                results.append(
                    asyncio.run(
                        sweep(embedded.url, size, rates, args.seconds, args.repeat, args.timeout)
                    )
                )
    for result in results:
        rounds = max(len(result.rounds(r.subject, r.rate)) for r in result.runs)
        print()
        print(
            f"N={result.instances}, {server}, {result.seconds:g} s per rate, "
            f"{rounds} round(s); each cell raw / twotier"
        )
        print(table(result))
        for subject in SUBJECTS:
            at = result.saturation[subject]
            print(f"  {LABELS[subject]}: " + (f"saturated at {at:g}/s" if at else "not saturated"))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"server": server, "sweeps": [asdict(r) for r in results]}, out, indent=1)
    if args.plot:
        sizes_text = ", ".join(str(r.instances) for r in results)
        plot(results, args.plot, f"Propagation to all of N={sizes_text} instances ({server})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
