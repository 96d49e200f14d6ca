"""`twotier bench`, shared parts: the run context, series of samples, timing helpers,
the table, and the machine description.

Performance is measured here, never asserted: a missed target is printed as
MISSED, and the command still exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import platform
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import redis.asyncio as aioredis

AsyncCall = Callable[[int], Awaitable[object]]


@dataclass
class Context:
    """What every scenario needs: the server, the sizes, and a unique key prefix."""

    url: str
    quick: bool
    repeat: int
    flavour: str = "external"
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    log: Callable[[str], None] = print
    memo: dict[str, Any] = field(default_factory=dict)  # results shared between scenarios
    #: Kill the server and start it again on the same port (an embedded one only).
    restart: Callable[[], None] | None = None

    def ns(self, name: str) -> str:
        """A namespace/prefix unique to this run (everything we write starts with it)."""
        return f"tb{self.run_id}{name}"

    @property
    def prefix(self) -> str:
        return f"tb{self.run_id}"

    def client(self, url: str | None = None, **kwargs: Any) -> aioredis.Redis:
        return aioredis.Redis.from_url(url or self.url, **kwargs)

    def size(self, quick: int, full: int) -> int:
        return quick if self.quick else full


@dataclass
class Series:
    """The samples of one subject in one scenario (one table row)."""

    scenario: str
    subject: str
    role: str  # "twotier", "floor", "peer" or "diag"
    unit: str
    samples: list[float]
    better: str = "lower"  # or "higher"
    spread: str = "p10–p90"  # or "p99" (latency tails)
    note: str = ""

    def pct(self, q: float) -> float:
        return percentile(self.samples, q)

    @property
    def median(self) -> float:
        return self.pct(50)

    def cost(self) -> float:
        """Lower is better, whatever the unit (a throughput becomes time per op)."""
        m = self.median
        if self.better == "lower":
            return m
        return 1.0 / m if m > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "subject": self.subject,
            "role": self.role,
            "unit": self.unit,
            "better": self.better,
            "n": len(self.samples),
            "median": self.median,
            "p10": self.pct(10),
            "p90": self.pct(90),
            "p99": self.pct(99),
            "min": min(self.samples, default=math.nan),
            "max": max(self.samples, default=math.nan),
            "note": self.note,
        }


@dataclass
class Growth:
    """One cost-growth curve family: y per subject over the same x values."""

    name: str
    title: str
    xlabel: str
    ylabel: str
    xs: list[float]
    lines: dict[str, list[float | None]]
    xfmt: Callable[[float], str] = lambda x: f"{x:g}"
    logx: bool = True
    logy: bool = False
    figure: str = ""
    note: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "xlabel": self.xlabel,
            "ylabel": self.ylabel,
            "xs": self.xs,
            "lines": self.lines,
            "note": self.note,
        }


@dataclass
class Target:
    scenario: str
    text: str
    measured: str
    holds: bool | None  # None: not measured in this run


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


# --- timing --------------------------------------------------------------------


async def per_call_batch(call: AsyncCall, args: Sequence[int]) -> float:
    """Mean seconds per call over *args*, awaited back to back in one task.

    For sub-microsecond paths: a clock read per call would cost as much as the
    call, so the batch is timed as a whole (the loop's own cost is included,
    as it is in every subject's figure, floors too).
    """
    gc.collect()
    t0 = time.perf_counter_ns()
    for a in args:
        await call(a)
    return (time.perf_counter_ns() - t0) / len(args) / 1e9


async def calibrated_batches(
    subjects: dict[str, AsyncCall], keys: Sequence[int], repeat: int, budget: float
) -> dict[str, list[float]]:
    """Per-call seconds, one sample per batch, subjects interleaved in each round.

    Each subject's batch length is chosen so that one batch takes about *budget*.
    """
    sizes: dict[str, list[int]] = {}
    for name, call in subjects.items():
        probe = list(keys[: min(len(keys), 500)])
        await per_call_batch(call, probe)  # warm
        t = await per_call_batch(call, probe)
        n = int(min(300_000, max(200, budget / max(t, 1e-9))))
        sizes[name] = [keys[i % len(keys)] for i in range(n)]
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(repeat):
        for name, call in subjects.items():
            samples[name].append(await per_call_batch(call, sizes[name]))
    return samples


async def per_call_latencies(call: AsyncCall, args: Iterable[int]) -> list[float]:
    """Seconds per call, each call timed on its own (for paths of tens of µs and up)."""
    out: list[float] = []
    clock = time.perf_counter_ns
    for a in args:
        t0 = clock()
        await call(a)
        out.append((clock() - t0) / 1e9)
    return out


async def throughput(call: AsyncCall, tasks: int, per_task: int, keys_per_task: int) -> float:
    """Operations per second with *tasks* concurrent tasks, each on its own keys."""

    async def worker(t: int) -> None:
        base = t * keys_per_task
        for i in range(per_task):
            await call(base + i % keys_per_task)

    gc.collect()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(tasks)))
    return tasks * per_task / (time.perf_counter() - t0)


# --- presentation ----------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if unit in ("ops/s", "keys/s"):
        return f"{value / 1000:,.1f}k" if value >= 10_000 else f"{value:,.0f}"
    if unit in ("B/entry", "runs", "cmds", "cmds/inst"):
        return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def scale(series: Series) -> tuple[str, float]:
    """Display unit and factor: samples are stored in SI (seconds), shown in µs or ms."""
    if series.unit == "s":
        m = series.median
        if m < 1e-3:
            return "µs", 1e6
        return "ms", 1e3
    return series.unit, 1.0


def ratio_text(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return "–"
    return f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def render_table(series: list[Series], titles: dict[str, str]) -> str:
    """The main table: per scenario its floors, twotier and peers, with ratios.

    `×floor` is cost relative to the scenario's first floor (time, or time per
    operation for throughputs); `×twotier` is a peer's cost over twotier's first
    row, i.e. how many times faster twotier is.
    """
    lines: list[str] = []
    header = (
        f"{'subject':<54} {'median':>9} {'spread':>17} {'unit':>9} {'×floor':>8} {'×twotier':>9}"
    )
    order: list[str] = []
    for s in series:
        if s.scenario not in order:
            order.append(s.scenario)
    for scen in order:
        rows = [s for s in series if s.scenario == scen]
        lines.append("")
        lines.append(f"== {titles.get(scen, scen)}")
        lines.append(header)
        for s in rows:
            floor = next((r for r in rows if r.role == "floor" and r.unit == s.unit), None)
            mine = next((r for r in rows if r.role == "twotier" and r.unit == s.unit), None)
            unit, k = scale(s)
            if s.spread == "p99":
                spread = f"p99 {fmt(s.pct(99) * k, unit)}"
            else:
                spread = f"{fmt(s.pct(10) * k, unit)}–{fmt(s.pct(90) * k, unit)}"
            rf = ratio_text(s.cost() / floor.cost()) if floor is not None else ""
            rt = ""
            if s.role == "peer" and mine is not None:
                rt = ratio_text(s.cost() / mine.cost())
            tag = {"floor": " [floor]", "peer": " [peer]", "diag": " [diag]"}.get(s.role, "")
            name = (s.subject + tag)[:54]
            lines.append(
                f"{name:<54} {fmt(s.median * k, unit):>9} {spread:>17} {unit:>9} {rf:>8} {rt:>9}"
            )
            if s.note:
                lines.append(f"{'':<6}↳ {s.note}")
    return "\n".join(lines)


def render_growth(g: Growth) -> str:
    width = max(10, *(len(g.xfmt(x)) + 2 for x in g.xs))
    head = f"{g.ylabel:<34}" + "".join(f"{g.xfmt(x):>{width}}" for x in g.xs)
    out = ["", f"== cost growth: {g.title}", f"{g.xlabel} →", head]
    for name, ys in g.lines.items():
        cells = "".join(f"{'–' if y is None else fmt(y, ''):>{width}}" for y in ys)
        out.append(f"{name[:34]:<34}{cells}")
    if g.note:
        out.append(f"  ↳ {g.note}")
    return "\n".join(out)


def render_targets(targets: list[Target]) -> str:
    out = ["", "== targets (issue 8), this run"]
    for t in targets:
        verdict = "not run" if t.holds is None else ("HOLDS" if t.holds else "MISSED")
        out.append(f"[{verdict:>7}] {t.scenario}: {t.text}")
        out.append(f"          measured: {t.measured}")
    return "\n".join(out)


# --- the machine -------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


async def machine_info(ctx: Context) -> dict[str, Any]:
    client = ctx.client()
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    server_name = str(
        info.get("server_name") or ("valkey" if "valkey_version" in info else "redis")
    )
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "twotier": _version("twotier"),
        "redis-py": _version("redis"),
        "cachetools": _version("cachetools"),
        "msgpack": _version("msgpack"),
        "cashews": _version("cashews"),
        "aiocache": _version("aiocache"),
        "server": f"{server_name} {info.get('valkey_version') or info.get('redis_version')}",
        "server_started_by": "twotier bench (embedded)"
        if ctx.flavour != "external"
        else "external (--redis-url)",
        "server_url": ctx.url if ctx.flavour == "external" else "loopback, embedded",
    }


def render_machine(info: dict[str, Any]) -> str:
    keys = [
        "cpu_model",
        "cpu_count",
        "cpu_affinity",
        "platform",
        "python",
        "event_loop",
        "twotier",
        "redis-py",
        "cachetools",
        "msgpack",
        "cashews",
        "aiocache",
        "server",
        "server_started_by",
    ]
    return "\n".join(f"  {k:<18} {info.get(k) or '–'}" for k in keys)


async def cleanup(ctx: Context) -> int:
    """Delete every key this run wrote (they all start with the run prefix)."""
    client = ctx.client()
    deleted = 0
    try:
        batch: list[bytes] = []
        async for name in client.scan_iter(match=f"{ctx.prefix}*", count=1000):
            batch.append(name)
            if len(batch) >= 500:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


def python_exe() -> str:
    return sys.executable
