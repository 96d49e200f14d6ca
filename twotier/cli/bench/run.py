"""`twotier bench`: measure twotier against the physical floors and its peers.

    twotier bench                       # embedded server, every scenario (~5 min)
    twotier bench --quick               # small sizes, a smoke test (< 1 min)
    twotier bench --redis-url redis://… --json out.json --plots docs/img
    twotier bench --cluster             # the cluster rows, on a local 3+3 cluster

Each scenario runs `--repeat` rounds with the subjects interleaved; the table
shows the median, the spread (p10–p90, or p99 for latency tails) and the cost
ratios to the floor and, for peers, to twotier. cashews and aiocache are
measured when importable (`pip install twotier[bench]`). Figures are printed,
never asserted: a missed target reads MISSED and the command still exits 0.

The scenarios live in `hits` (hit paths, memory, warmup), `proc`
(across processes: invalidation, stampede) and `growth` (cost growth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import cluster, fleet, growth, hits, proc
from .core import (
    Context,
    Growth,
    Series,
    Target,
    cleanup,
    machine_info,
    render_growth,
    render_machine,
    render_table,
    render_targets,
)
from .peers import available

TITLES = {
    "l1": "L1 hit through @cache.cached (async fn, one int arg, two tags) "
    "— target ≤ 0.8 µs and ≥ 30× faster than cashews",
    "l1-rows": "L1 hit of what an API returns (a dict of 10 fields; a list of 20 such rows), "
    "copy on read — target ≤ 1.0 µs for the dict and ≥ 30× faster than cashews",
    "l2": "L2 hit (L1 miss, Redis hit), one caller — target ≤ 1.15× raw GET",
    "l2c": "L2 hits, 50 concurrent tasks (throughput) — target ≥ 2× raw concurrent GET",
    "inv": "invalidation reaching another process — target p50 ≤ 1.3× raw publish→receive",
    "inv8": "invalidation with 8 instances (8 processes) — target p99 ≤ 2 ms",
    "stampede": "100 concurrent misses on 4 instances (processes, 25 callers each, "
    "100 ms loader) — target 1 loader run, ≤ 3 commands per waiting instance",
    "memory": "L1 memory per entry with two tags, on top of key and value — target ≤ 250 B",
    "warmup": "warmup of 10,000 keys — target ≥ 0.8× pipelined GET keys/s",
    **{
        f"fleet{n}": f"propagation to all {n} instances (processes of 100), event by event "
        "— target p99 ≤ 1.3× the raw pub/sub fleet's"
        for n in (10, 100, 300, 1000)
    },
    **{
        f"fleet{n}-cpu": f"Redis CPU per event at {n} instances — target ≤ 1.3× a raw PUBLISH"
        for n in (10, 100, 300, 1000)
    },
    **{
        f"fleet{n}-storm": f"resync storm: every connection of the {n} instances cut at once "
        "(CLIENT KILL), then the server killed and started again (embedded server only) "
        "— target every instance trusted again within 2 s of Redis answering"
        for n in (10, 100, 300, 1000)
    },
}

RowScenario = Callable[[Context], Awaitable[list[Series]]]
GrowthScenario = Callable[[Context], Awaitable[list[Growth]]]

ROWS: dict[str, RowScenario] = {
    "l1": hits.l1_hit,
    "l1-rows": hits.l1_rows,
    "l2": hits.l2_hit,
    "l2-concurrent": hits.l2_concurrent,
    "invalidation": proc.invalidation_rows,
    "stampede": proc.stampede_rows,
    "memory": hits.l1_memory,
    "warmup": hits.warmup,
}
GROWTH: dict[str, GrowthScenario] = {
    "growth-entries": growth.entries,
    "growth-tags": growth.tags,
    "growth-instances": growth.instances,
    "growth-size": growth.value_size,
}


def _parse(argv: list[str]) -> argparse.Namespace:
    names = [*ROWS, "growth", *GROWTH]
    parser = argparse.ArgumentParser(
        prog="twotier bench",
        description="Benchmark twotier against raw redis-py, in-process floors, cashews "
        "and aiocache. Measures; never asserts.",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="server to measure on (default: start an embedded server on a "
        "free loopback port); keys written are deleted at the end",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run the cluster rows (L2 hit, 50 tasks, invalidation, warmup) on a local "
        "Redis Cluster of 3 masters and 3 replicas, or on --redis-url's cluster",
    )
    parser.add_argument(
        "--fleet",
        metavar="N",
        help="run only the fleet rows: N instances (comma-separated sizes, e.g. 10,100) "
        "over processes of 100, against a raw pub/sub fleet of the same size",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write results as JSON")
    parser.add_argument(
        "--repeat", metavar="N", type=int, help="rounds per scenario (default 5, --quick 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and few rounds: a smoke test (under a minute)",
    )
    parser.add_argument(
        "--plots",
        metavar="DIR",
        type=Path,
        help="write the cost-growth PNGs here (needs matplotlib)",
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIO",
        action="append",
        help=f"run only these (repeatable or comma-separated): {', '.join(names)}",
    )
    args = parser.parse_args(argv)
    chosen: list[str] = []
    for item in args.only or []:
        for name in item.split(","):
            name = name.strip()
            if name == "growth":
                chosen += list(GROWTH)
            elif name in ROWS or name in GROWTH:
                chosen.append(name)
            elif name:
                parser.error(f"unknown scenario {name!r}; choose from {', '.join(names)}")
    args.scenarios = list(dict.fromkeys(chosen)) or [*ROWS, *GROWTH]
    if args.cluster:
        args.scenarios = list(cluster.ROWS)
    if args.fleet:
        try:
            args.fleet_sizes = [int(n) for n in args.fleet.split(",")]
        except ValueError:
            parser.error("--fleet takes instance counts, e.g. 10,100")
        if min(args.fleet_sizes) < 1:
            parser.error("--fleet sizes must be at least 1")
        args.scenarios = ["fleet"]
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.plots is not None and not available("matplotlib"):
        print(
            "note: matplotlib is not installed; --plots ignored (pip install twotier[bench])",
            file=sys.stderr,
        )
        args.plots = None
    return args


def main(argv: list[str]) -> int:
    """Entry point of `twotier bench`. Returns the process exit code."""
    args = _parse(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    if args.redis_url:
        ctx = Context(url=args.redis_url, quick=args.quick, repeat=repeat)
        return asyncio.run(_run(ctx, args))
    from twotier.testing import LocalCluster, RedisServer

    if args.cluster:
        with LocalCluster.start() as local:
            ctx = Context(url=local.url, quick=args.quick, repeat=repeat, flavour=local.flavour)
            return asyncio.run(_run(ctx, args))
    try:
        with RedisServer.start() as server:
            ctx = Context(
                url=server.url,
                quick=args.quick,
                repeat=repeat,
                flavour=server.flavour,
                restart=server.restart,
            )
            return asyncio.run(_run(ctx, args))
    except RuntimeError as exc:
        if "server" not in str(exc):
            raise
        print(f"twotier bench: {exc}; or pass --redis-url", file=sys.stderr)
        return 2


class _Warnings(logging.Handler):
    """Counts twotier's own warnings per scenario (a circuit opening is a finding)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.scenario = ""
        self.seen: dict[str, dict[str, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        bucket = self.seen.setdefault(self.scenario, {})
        text = record.getMessage()[:90]
        bucket[text] = bucket.get(text, 0) + 1

    def render(self) -> str:
        if not self.seen:
            return "\n== twotier logged no warnings during the run"
        out = ["", "== twotier's own warnings during the run (each is a finding)"]
        for scenario, messages in self.seen.items():
            for text, count in messages.items():
                out.append(f"  {scenario}: {count} × {text}")
        return "\n".join(out)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _run(ctx: Context, args: argparse.Namespace) -> int:
    ctx.log = _log
    started = time.perf_counter()
    info = await machine_info(ctx)
    print("twotier bench" + (" --quick" if ctx.quick else "") + f" (repeat {ctx.repeat})")
    print(render_machine(info))
    series: list[Series] = []
    growths: list[Growth] = []
    timings: dict[str, float] = {}
    failures: dict[str, str] = {}
    warnings = _Warnings()
    twotier_logger = logging.getLogger("twotier")
    twotier_logger.addHandler(warnings)
    try:
        for name in args.scenarios:
            warnings.scenario = name
            _log(f"[{time.perf_counter() - started:6.1f}s] {name} …")
            t0 = time.perf_counter()
            try:
                if name == "fleet":
                    series += await fleet.fleet_rows(ctx, args.fleet_sizes)
                elif name in ROWS:
                    series += await ROWS[name](ctx)
                elif name in cluster.ROWS:
                    series += await cluster.ROWS[name](ctx)
                else:
                    growths += await GROWTH[name](ctx)
            except Exception as exc:  # one broken scenario must not lose the others' figures
                failures[name] = f"{type(exc).__name__}: {exc}"
                _log(f"  {name} FAILED: {failures[name]}")
            timings[name] = round(time.perf_counter() - t0, 2)
    finally:
        twotier_logger.removeHandler(warnings)
        if ctx.flavour == "external":
            deleted = await cleanup(ctx)
            _log(f"deleted {deleted} bench key(s) from {ctx.url}")
    print(render_table(series, {**TITLES, **cluster.TITLES}))
    for g in growths:
        print(render_growth(g))
    for name, why in failures.items():
        print(f"\n!! scenario {name} failed: {why}")
    print(warnings.render())
    targets = evaluate(series)
    if targets:
        print(render_targets(targets))
    elapsed = time.perf_counter() - started
    print(
        f"\ntotal {elapsed:.0f} s; per scenario: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    )
    if args.plots is not None and growths:
        for path in growth.plot(growths, args.plots):
            print(f"wrote {path}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "config": {
                        "quick": ctx.quick,
                        "repeat": ctx.repeat,
                        "scenarios": args.scenarios,
                        "seconds": round(elapsed, 1),
                        "timings": timings,
                    },
                    "series": [{**s.summary(), "samples": s.samples} for s in series],
                    "growth": [g.summary() for g in growths],
                    "targets": [vars(t) for t in targets],
                    "twotier_warnings": warnings.seen,
                    "failures": failures,
                },
                indent=1,
                default=_json_default,
            )
        )
        print(f"wrote {args.json}")
    return 1 if failures else 0


def _json_default(value: object) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


# --- targets (issue 8) ------------------------------------------------------------------------


def _find(
    series: list[Series], scenario: str, role: str, unit: str | None = None, contains: str = ""
) -> Series | None:
    for s in series:
        if (
            s.scenario == scenario
            and s.role == role
            and contains in s.subject
            and (unit is None or s.unit == unit)
        ):
            return s
    return None


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs" if seconds < 1e-4 else f"{seconds * 1e3:.3f} ms"


def evaluate(series: list[Series]) -> list[Target]:
    out: list[Target] = []
    tt = _find(series, "l1", "twotier")
    if tt is not None:
        cashews = [s for s in series if s.scenario == "l1" and s.subject.startswith("cashews")]
        best = min(cashews, key=lambda s: s.median, default=None)
        speedup = best.median / tt.median if best else math.nan
        holds = tt.median <= 0.8e-6 and (best is None or speedup >= 30)
        out.append(
            Target(
                "L1 hit",
                "≤ 0.8 µs median and ≥ 30× faster than cashews' fastest decorator hit",
                f"{_us(tt.median)}; fastest cashews variant {_us(best.median)} → {speedup:.1f}×"
                if best
                else f"{_us(tt.median)}; cashews not installed",
                holds,
            )
        )
    tt = _find(series, "l1-rows", "twotier", contains="10-field")
    if tt is not None:
        peer = _find(series, "l1-rows", "peer", contains="10-field")
        speedup = peer.median / tt.median if peer else math.nan
        out.append(
            Target(
                "L1 hit, 10-field dict",
                "≤ 1.0 µs median with copy on read, ≥ 30× faster than cashews' hit of it",
                f"{_us(tt.median)}; cashews {_us(peer.median)} → {speedup:.1f}×"
                if peer
                else f"{_us(tt.median)}; cashews not installed",
                tt.median <= 1.0e-6 and (peer is None or speedup >= 30),
            )
        )
    tt, floor = _find(series, "l2", "twotier"), _find(series, "l2", "floor")
    if tt is not None and floor is not None:
        via_get = _find(series, "l2", "twotier", contains="get")
        r = tt.median / floor.median
        extra = f"; cache.get {via_get.median / floor.median:.2f}×" if via_get else ""
        out.append(
            Target(
                "L2 hit",
                "≤ 1.15× raw redis-py GET, one caller",
                f"@cached {_us(tt.median)} vs GET {_us(floor.median)} → {r:.2f}×{extra}",
                r <= 1.15,
            )
        )
    tt, floor = _find(series, "l2c", "twotier"), _find(series, "l2c", "floor")
    if tt is not None and floor is not None:
        r = tt.median / floor.median
        out.append(
            Target(
                "L2 hits, 50 tasks",
                "≥ 2× raw concurrent GET throughput",
                f"{tt.median:,.0f} vs {floor.median:,.0f} ops/s → {r:.2f}×",
                r >= 2,
            )
        )
    tt, floor = _find(series, "inv", "twotier"), _find(series, "inv", "floor")
    if tt is not None and floor is not None:
        r50, r99 = tt.median / floor.median, tt.pct(99) / floor.pct(99)
        out.append(
            Target(
                "invalidation",
                "p50 ≤ 1.3× raw publish→receive",
                f"p50 {_us(tt.median)} vs {_us(floor.median)} ({r50:.2f}×), "
                f"p99 {_us(tt.pct(99))} vs {_us(floor.pct(99))} ({r99:.2f}×)",
                r50 <= 1.3,
            )
        )
    tt = _find(series, "inv8", "twotier")
    if tt is not None:
        last = _find(series, "inv8", "diag", contains="twotier")
        extra = f"; slowest of the 8 per event: p99 {_us(last.pct(99))}" if last else ""
        out.append(
            Target(
                "invalidation, 8 instances",
                "p99 ≤ 2 ms",
                f"p99 {_us(tt.pct(99))} to each instance{extra}",
                tt.pct(99) <= 2e-3,
            )
        )
    runs = _find(series, "stampede", "twotier", unit="runs")
    cmds = _find(series, "stampede", "twotier", unit="cmds/inst")
    loader = _find(series, "stampede", "diag", unit="cmds/inst", contains="twotier")
    if runs is not None and cmds is not None:
        busiest = max(cmds.samples)
        extra = f"; the loading instance {loader.median:.0f}" if loader else ""
        out.append(
            Target(
                "stampede",
                "1 loader run; ≤ 3 Redis commands per waiting instance",
                f"{max(runs.samples):.0f} loader run(s) per stampede at most; waiting "
                f"instances {cmds.median:.0f} commands (median), {busiest:.0f} at most{extra}",
                max(runs.samples) <= 1 and busiest <= 3,
            )
        )
    tt = _find(series, "memory", "twotier")
    if tt is not None:
        out.append(
            Target(
                "L1 memory",
                "≤ 250 B per entry with two tags, on top of key and value",
                f"{tt.median:.0f} B/entry ({tt.subject})",
                tt.median <= 250,
            )
        )
    tt, floor = _find(series, "warmup", "twotier"), _find(series, "warmup", "floor")
    if tt is not None and floor is not None:
        r = tt.median / floor.median
        out.append(
            Target(
                "warmup",
                "≥ 0.8× pipelined GET keys/s (into Redis), same run",
                f"{tt.median:,.0f} vs {floor.median:,.0f} keys/s → {r:.2f}×",
                r >= 0.8,
            )
        )
    return out
