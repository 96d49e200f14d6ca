"""The chaos test's checker: from the read and write logs, how stale did reads get?

Inputs (JSONL, one record per line, written by `_workers.py`):

* reads: ``{"kind": "read", "reader", "row", "start", "end", "version", "error"}``
* writes: ``{"kind": "write", "row", "version", "begin", "commit", "ack", "error"}``
  where ``ack`` is when ``await cache.invalidate_tag(...)`` returned (while Redis
  is away that only means "applied locally and queued").
* a final ``{"kind": "stats", ...}`` record per process (its `get_stats()`).

A read of row r that started at time s is **stale** when it returned a version
older than the newest write of r acknowledged before ``s - bound``: the write's
invalidation had been acknowledged, plus a propagation allowance, before the
read even began. Its **staleness** is ``s`` minus the acknowledgement of the
first write that outdated the version returned.

Phases, by the read's start: ``connected`` (before the kill; the pub/sub cuts
happen in here and after settling, since the data link lives), ``outage``
(kill → restarted server answers), ``recovering`` (→ restart + max_stale +
settle margin) and ``settled`` (after that). Stale reads are a failure in
``connected`` and ``settled``, and only reported in ``outage`` and
``recovering``. A run whose trouble is not a kill (the latency spikes) names
the four phases and the two events that start them its own way (`Timeline`).

`latency` summarises every call's duration (the latency-spike phase's figures).
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("connected", "outage", "recovering", "settled")
FAILING_PHASES = ("connected", "settled")
HANG = 1.0  # seconds: a read slower than this "hangs" (the readers' Redis timeout is 0.05 s)


@dataclass(frozen=True)
class Read:
    reader: str
    row: int
    start: float
    end: float
    version: int | None
    error: str | None


@dataclass(frozen=True)
class Write:
    row: int
    version: int
    begin: float
    commit: float
    ack: float
    error: str | None = None


@dataclass(frozen=True)
class Timeline:
    """When the test did what (monotonic seconds)."""

    start: float
    kill: float
    restart: float  # the restarted server answers
    settle: float  # restart + max_stale + margin
    stop: float
    pubsub_cuts: tuple[float, ...] = ()
    resubscribed: float | None = None  # every instance listens again after the restart
    # How the report names the four phases (in `PHASES` order) and the events
    # that start the second and third; the checks are the same whatever the names.
    phase_names: tuple[str, str, str, str] = PHASES
    event_names: tuple[str, str] = ("kill", "restart")
    events: tuple[tuple[str, float], ...] = ()  # more events to report: (name, time)

    def phase(self, t: float) -> str:
        if t < self.kill:
            return "connected"
        if t < self.restart:
            return "outage"
        if t < self.settle:
            return "recovering"
        return "settled"


@dataclass
class PhaseFigures:
    reads: int = 0
    writes: int = 0
    stale: int = 0
    worst_staleness_ms: float = 0.0


@dataclass
class Report:
    reads: int = 0
    writes: int = 0
    errors: int = 0
    write_errors: int = 0
    hung_reads: int = 0
    impossible_reads: int = 0  # a version no write had begun to produce: corrupt, or a bad log
    max_read_ms: float = 0.0
    propagation_bound_ms: float = 0.0
    stale_connected: int = 0
    stale_outage: int = 0  # outage and recovering
    stale_settled: int = 0
    worst_staleness_ms: float = 0.0
    phases: dict[str, PhaseFigures] = field(
        default_factory=lambda: {name: PhaseFigures() for name in PHASES}
    )
    phase_bounds_s: dict[str, float] = field(default_factory=dict)
    events_s: dict[str, float] = field(default_factory=dict)  # seconds after the start
    examples: list[str] = field(default_factory=list)  # the first few offending reads
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def failures(self) -> list[str]:
        problems = []
        if self.errors:
            problems.append(f"{self.errors} read(s) raised")
        if self.write_errors:
            problems.append(f"{self.write_errors} invalidation(s) raised")
        if self.hung_reads:
            problems.append(f"{self.hung_reads} read(s) took longer than {HANG:.0f} s")
        if self.impossible_reads:
            problems.append(f"{self.impossible_reads} read(s) returned a version never written")
        if self.stale_connected:
            problems.append(
                f"{self.stale_connected} stale read(s) while connected "
                f"(beyond {self.propagation_bound_ms:.0f} ms)"
            )
        if self.stale_settled:
            problems.append(f"{self.stale_settled} stale read(s) after recovery settled")
        return problems

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self, title: str) -> str:
        lines = [
            f"chaos check — {title}",
            f"  reads {self.reads}, errors {self.errors}, hung {self.hung_reads}, "
            f"slowest read {self.max_read_ms:.1f} ms; writes {self.writes}, "
            f"write errors {self.write_errors}",
            f"  stale reads while connected (> {self.propagation_bound_ms:.0f} ms after the "
            f"invalidation's ack): {self.stale_connected}",
            f"  stale reads during the outage and recovery: {self.stale_outage}",
            f"  stale reads after recovery settled: {self.stale_settled}",
            f"  worst staleness: {self.worst_staleness_ms:.1f} ms",
            "  events (s): " + ", ".join(f"{name} {t:.2f}" for name, t in self.events_s.items()),
            f"  {'phase':<11}{'from s':>8}{'reads':>9}{'writes':>8}{'stale':>7}{'worst ms':>10}",
        ]
        for name, figures in self.phases.items():
            lines.append(
                f"  {name:<11}{self.phase_bounds_s.get(name, 0.0):>8.2f}"
                f"{figures.reads:>9}{figures.writes:>8}{figures.stale:>7}"
                f"{figures.worst_staleness_ms:>10.1f}"
            )
        for name, stats in sorted(self.stats.items()):
            lines.append(
                f"  {name}: resyncs {stats.get('resyncs')}, l1_clears {stats.get('l1_clears')}, "
                f"l2_errors {stats.get('l2_errors')}, queued_ops {stats.get('queued_ops')}, "
                f"loads {stats.get('loads')}, lease_waits {stats.get('lease_waits')}, "
                f"invalidations_received {stats.get('invalidations_received')}, "
                f"breaker {stats.get('breaker_state')}, "
                f"redis_available {stats.get('redis_available')}"
            )
        lines.extend(f"  ! {example}" for example in self.examples)
        return "\n".join(lines)


def load_log(path: Path) -> tuple[list[Read], list[Write], dict[str, Any] | None]:
    reads: list[Read] = []
    writes: list[Write] = []
    stats: dict[str, Any] | None = None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        kind = record.pop("kind")
        if kind == "read":
            reads.append(Read(**record))
        elif kind == "write":
            record.pop("redis_available", None)
            writes.append(Write(**record))
        else:
            stats = record
    return reads, writes, stats


class _RowHistory:
    """One row's writes, in order (a single writer bumps each row by one)."""

    def __init__(self, writes: list[Write]) -> None:
        self.writes = sorted(writes, key=lambda w: w.version)
        self.acks = [w.ack for w in self.writes]
        self.begins = [w.begin for w in self.writes]
        self.by_version = {w.version: w for w in self.writes}

    def required(self, before: float) -> int:
        """The newest version whose invalidation was acknowledged before *before* (0: none)."""
        n = bisect.bisect_right(self.acks, before)
        return self.writes[n - 1].version if n else 0

    def newest_begun(self, before: float) -> int:
        n = bisect.bisect_right(self.begins, before)
        return self.writes[n - 1].version if n else 0


def check(
    reads: Iterable[Read],
    writes: Iterable[Write],
    timeline: Timeline,
    bound: float,
    examples: int = 10,
) -> Report:
    report = Report(propagation_bound_ms=bound * 1000)
    report.phase_bounds_s = {
        "connected": 0.0,
        "outage": timeline.kill - timeline.start,
        "recovering": timeline.restart - timeline.start,
        "settled": timeline.settle - timeline.start,
    }
    events = {
        timeline.event_names[0]: timeline.kill,
        timeline.event_names[1]: timeline.restart,
        "settled": timeline.settle,
        **{f"pubsub cut {n}": t for n, t in enumerate(timeline.pubsub_cuts, 1)},
        **dict(timeline.events),
    }
    if timeline.resubscribed is not None:
        events["all resubscribed"] = timeline.resubscribed
    report.events_s = {
        name: t - timeline.start for name, t in sorted(events.items(), key=lambda e: e[1])
    }
    by_row: dict[int, list[Write]] = defaultdict(list)
    for write in writes:
        report.writes += 1
        report.write_errors += write.error is not None
        report.phases[timeline.phase(write.ack)].writes += 1
        by_row[write.row].append(write)
    history = {row: _RowHistory(ws) for row, ws in by_row.items()}
    empty = _RowHistory([])
    label = dict(zip(PHASES, timeline.phase_names, strict=True))

    for read in sorted(reads, key=lambda r: r.start):
        report.reads += 1
        phase = timeline.phase(read.start)
        figures = report.phases[phase]
        figures.reads += 1
        took = read.end - read.start
        report.max_read_ms = max(report.max_read_ms, took * 1000)
        if took > HANG:
            report.hung_reads += 1
            _example(report, examples, f"hung {took:.2f} s: {read}")
        if read.error is not None or read.version is None:
            report.errors += 1
            _example(report, examples, f"raised in {label[phase]}: {read}")
            continue
        rows = history.get(read.row, empty)
        if read.version > rows.newest_begun(read.end):
            report.impossible_reads += 1
            _example(report, examples, f"version never written: {read}")
            continue
        required = rows.required(read.start - bound)
        if read.version >= required:
            continue
        outdated_by = rows.by_version[read.version + 1]
        staleness_ms = (read.start - outdated_by.ack) * 1000
        figures.stale += 1
        figures.worst_staleness_ms = max(figures.worst_staleness_ms, staleness_ms)
        report.worst_staleness_ms = max(report.worst_staleness_ms, staleness_ms)
        if phase in FAILING_PHASES:
            _example(
                report,
                examples,
                f"stale in {label[phase]} at +{read.start - timeline.start:.3f} s: {read.reader} "
                f"row {read.row} got v{read.version}, v{required} acknowledged "
                f"{staleness_ms:.1f} ms before the read started",
            )
    report.stale_connected = report.phases["connected"].stale
    report.stale_outage = report.phases["outage"].stale + report.phases["recovering"].stale
    report.stale_settled = report.phases["settled"].stale
    if timeline.phase_names != PHASES:
        rename = dict(zip(PHASES, timeline.phase_names, strict=True))
        report.phases = {rename[name]: figures for name, figures in report.phases.items()}
        report.phase_bounds_s = {rename[n]: t for n, t in report.phase_bounds_s.items()}
    return report


@dataclass
class Latency:
    """Every call's duration, in ms (a call: one read, from its start to its return)."""

    calls: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    over_100ms: int = 0
    over_1s: int = 0
    over_5s: int = 0

    def format(self) -> str:
        return (
            f"calls {self.calls}: p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.1f} ms, "
            f"p99.9 {self.p999_ms:.1f} ms, worst {self.max_ms:.1f} ms; "
            f"over 100 ms {self.over_100ms}, over 1 s {self.over_1s}, over 5 s {self.over_5s}"
        )


def latency(reads: Iterable[Read]) -> Latency:
    took = sorted((read.end - read.start) * 1000 for read in reads)
    if not took:
        return Latency()

    def quantile(q: float) -> float:
        return took[min(len(took) - 1, int(q * len(took)))]

    return Latency(
        calls=len(took),
        p50_ms=quantile(0.5),
        p99_ms=quantile(0.99),
        p999_ms=quantile(0.999),
        max_ms=took[-1],
        over_100ms=sum(t > 100 for t in took),
        over_1s=sum(t > 1000 for t in took),
        over_5s=sum(t > 5000 for t in took),
    )


def _example(report: Report, limit: int, text: str) -> None:
    if len(report.examples) < limit:
        report.examples.append(text)
