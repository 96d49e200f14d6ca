"""The seed's HTTP figures, measured: compose/erp under wrk (docs/performance.md, "HTTP").

    python -m integration.bench_http            # about 2.5 minutes
    python -m integration.bench_http --quick    # a smoke run of seconds per configuration

Three uvicorn instances of compose/erp behind nginx (integration/erp_topology.py's
Fleet), one SQLite file, and for the two-tier runs a throwaway Redis
(twotier.testing.RedisServer, never the machine's own). wrk drives nginx with
the mix of integration/bench_http.lua: 90 % reads, 10 % writes, Zipf ids. Four
configurations, each a fresh fleet and database, a short warmup, then
`--repeats` runs of `--duration` seconds:

* no cache (`ERP_CACHE=off`: the decorators pass through),
* memory only (no `TWOTIER_REDIS_URL`: L1 per instance),
* two tiers (L1 + Redis),
* two tiers, clear-all (`ERP_INVALIDATION=clear`: every write clears the cache).

Response times and requests/s come from wrk; misses from each instance's
/metrics (`twotier_lookups_total`), read before and after every run. It prints
one table, side by side with the seed's figures. No numbers are asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from twotier.testing import RedisServer

from .erp_topology import Fleet, fleet

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "bench_http.lua"
LOOKUP = re.compile(r"^twotier_lookups_total\{([^}]*)\}\s+([0-9.e+]+)$", re.MULTILINE)


@dataclass(frozen=True)
class Config:
    name: str
    env: dict[str, str]
    redis: bool
    seed: str  # the seed's figure this row stands beside


CONFIGS = [
    Config("no cache", {"ERP_CACHE": "off"}, redis=False, seed="(baseline)"),
    Config("memory only (L1)", {}, redis=False, seed="-78 % avg"),
    Config("two tiers (L1+Redis)", {}, redis=True, seed="-72 % avg"),
    Config("two tiers, clear-all", {"ERP_INVALIDATION": "clear"}, redis=True, seed="-"),
]


@dataclass
class Run:
    requests: int
    rps: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    errors: int
    lookups: float
    misses: float
    xcache: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    config: Config
    runs: list[Run] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        return [float(getattr(run, name)) for run in self.runs]

    def median(self, name: str) -> float:
        return statistics.median(self.values(name))

    def misses_per_1000(self) -> list[float]:
        return [1000 * r.misses / r.requests for r in self.runs if r.requests]

    def miss_answers(self) -> list[float]:
        """Per cent of the answers with an X-Cache header that were a MISS."""
        counts = [(r.xcache.get("MISS", 0), sum(r.xcache.values())) for r in self.runs]
        return [100 * miss / total for miss, total in counts if total]


def lookups(group: Fleet) -> tuple[float, float]:
    """(lookups, misses of both tiers) summed over the instances' /metrics."""
    total = misses = 0.0
    for instance in group.instances:
        text = httpx.get(instance.url + "/metrics", timeout=10).text
        for labels, value in LOOKUP.findall(text):
            total += float(value)
            if 'outcome="miss"' in labels:
                misses += float(value)
    return total, misses


def wrk(url: str, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    out = subprocess.run(
        [binary, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
         "--timeout", "10s", "-s", str(SCRIPT), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
        env={**os.environ, "BENCH_WRITES": str(args.writes), "BENCH_ZIPF_S": str(args.zipf)},
    )  # fmt: skip
    result: dict[str, Any] = {}
    for line in out.stdout.splitlines():
        if line.startswith("BENCH "):
            result.update(json.loads(line.removeprefix("BENCH ")))
        elif line.startswith("XCACHE "):
            result["xcache"] = json.loads(line.removeprefix("XCACHE "))
    if "requests" not in result:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    return result


@contextlib.contextmanager
def maybe_redis(wanted: bool) -> Iterator[RedisServer | None]:
    if not wanted:
        yield None
        return
    with RedisServer.start() as server:
        yield server


def measure(config: Config, args: argparse.Namespace, redis: RedisServer | None) -> Result:
    env = {**config.env, "TWOTIER_NAMESPACE": f"bench{uuid.uuid4().hex[:6]}"}
    if redis is not None:
        env["TWOTIER_REDIS_URL"] = redis.url
    result = Result(config)
    with fleet(env, 3, nginx=True) as group:
        if args.warmup > 0:
            wrk(group.lb, args.warmup, args)
        for _ in range(args.repeats):
            before = lookups(group)
            out = wrk(group.lb, args.duration, args)
            after = lookups(group)
            result.runs.append(
                Run(
                    requests=out["requests"],
                    rps=out["rps"],
                    mean_ms=out["mean_us"] / 1000,
                    p50_ms=out["p50_us"] / 1000,
                    p99_ms=out["p99_us"] / 1000,
                    errors=out["status_errors"] + out["socket_errors"],
                    lookups=after[0] - before[0],
                    misses=after[1] - before[1],
                    xcache=out.get("xcache", {}),
                )
            )
            print(f"  {config.name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return result


def spread(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def change(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.0f} %" if base else "-"


def table(results: list[Result], args: argparse.Namespace) -> str:
    base = results[0]
    lines = [
        f"compose/erp, 3 uvicorn instances behind nginx, SQLite; wrk -t{args.threads} "
        f"-c{args.connections}, {args.repeats} x {args.duration:g} s per configuration "
        f"(median, min-max over the runs); {args.writes:g} % writes, Zipf ids (s={args.zipf:g})",
        "",
        f"{'configuration':<22} {'median ms':>19} {'p99 ms':>21} {'mean ms':>8} "
        f"{'req/s':>21} {'errors':>6}  {'mean':>6} {'median':>6} {'req/s':>6}  seed",
    ]
    for r in results:
        lines.append(
            f"{r.config.name:<22} {spread(r.values('p50_ms'), 2):>19} "
            f"{spread(r.values('p99_ms')):>21} {r.median('mean_ms'):>8.2f} "
            f"{spread(r.values('rps'), 0):>21} {sum(r.values('errors')):>6.0f}  "
            + (
                f"{change(r.median('mean_ms'), base.median('mean_ms')):>6} "
                f"{change(r.median('p50_ms'), base.median('p50_ms')):>6} "
                f"{change(r.median('rps'), base.median('rps')):>6}"
                if r is not base
                else f"{'':>6} {'':>6} {'':>6}"
            )
            + f"  {r.config.seed}"
        )
    tags = next(r for r in results if r.config.name == "two tiers (L1+Redis)")
    clear = next(r for r in results if r.config.name == "two tiers, clear-all")

    def row(name: str, r: Result, base: Result | None) -> str:
        answers, per_1000 = r.miss_answers(), r.misses_per_1000()
        text = f"{name:<22} {spread(answers):>19} {spread(per_1000):>21}"
        if base is None or not answers or not base.miss_answers():
            return text
        now, then = statistics.median(answers), statistics.median(base.miss_answers())
        return text + f"  {change(now, then):>6}  -35 %"

    lines += [
        "",
        f"{'invalidation':<22} {'MISS answers %':>19} {'misses/1000 req':>21}  change  seed",
        row("clear-all on write", clear, None),
        row("tags", tags, clear),
        "(MISS answers: X-Cache of the cached GET endpoints, counted by wrk; misses/1000 req:",
        " twotier_lookups_total{outcome=miss} of the instances' /metrics, 2 per missed request:",
        " the lookup and the re-check under the fill lease)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of wrk per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of wrk, not counted")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4, help="2 per core is plenty")
    parser.add_argument("--writes", type=float, default=10, help="per cent of requests")
    parser.add_argument("--zipf", type=float, default=1.1, help="the ids' Zipf exponent")
    parser.add_argument("--quick", action="store_true", help="1 run of 2 s, 1 s warmup")
    parser.add_argument("--json", type=Path, help="write the runs here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.warmup = 2, 1, 1
    started = time.monotonic()
    results = []
    for config in CONFIGS:
        with maybe_redis(config.redis) as redis:
            results.append(measure(config, args, redis))
    print(table(results, args))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n(total {time.monotonic() - started:.0f} s; load average at the end {load}")
    print(f" on {os.cpu_count()} cores: other processes share them and move the figures)")
    if args.json is not None:
        args.json.write_text(
            json.dumps({r.config.name: [vars(run) for run in r.runs] for r in results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
