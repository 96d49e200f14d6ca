"""The chaos test of issue 3: readers and a writer in separate processes, Redis
killed, restarted empty, and the pub/sub link cut, while every read is checked
against a SQLite source of truth.

    reader ×3  ── @cache.cached(tags=["row:{row_id}"]) ── SELECT version FROM rows
    writer     ── UPDATE rows SET version = version + 1; COMMIT; invalidate_tag("row:<id>")
    this test  ── CLIENT KILL TYPE pubsub, server.kill(), server.restart(), CLIENT KILL again

Timeline (seconds after every worker is ready; each cut waits until every
instance is subscribed, so it really cuts all of them):
    0 ─ connected ─ 2.5 cut pub/sub ─ 5 kill ─ outage ─ 9 restart ─ recovering
    ─ 11 (restart + max_stale + 1 s) settled ─ 12 cut pub/sub ─ 14 stop

`_chaos_check.py` turns the logs into figures; they are printed (`pytest -s`) and
written to ``chaos-<flavour>.json`` under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import redis.asyncio as aioredis

from twotier.testing import RedisServer

from ._chaos_check import Read, Timeline, Write, check, load_log
from ._workers import CHAOS_SETTINGS

WORKERS = Path(__file__).with_name("_workers.py")
READERS = 3
ROWS = 8
PROPAGATION_BOUND = 0.05  # a read starting this long after an invalidation's ack must see it
SETTLE_MARGIN = 1.0  # recovery has settled max_stale + this after the restarted server answers
CONNECTED_BEFORE_CUT = 2.5
CONNECTED_BEFORE_KILL = 2.5
OUTAGE = 4.0
SETTLED_BEFORE_CUT = 1.0
SETTLED_AFTER_CUT = 2.0


def _make_source(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
        db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
        db.executemany("INSERT INTO rows VALUES (?, 0)", [(i,) for i in range(1, ROWS + 1)])
        db.commit()


async def _spawn(
    mode: str, name: str, seed: int, server: RedisServer, tmp_path: Path, pause: float
) -> asyncio.subprocess.Process:
    with (tmp_path / f"{name}.err").open("wb") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKERS),
            mode,
            "--url",
            server.url,
            "--namespace",
            "chaos",
            "--name",
            name,
            "--db",
            str(tmp_path / "source.db"),
            "--log",
            str(tmp_path / f"{name}.jsonl"),
            "--stop",
            str(tmp_path / "stop"),
            "--rows",
            str(ROWS),
            "--seed",
            str(seed),
            "--pause",
            str(pause),
            "--max-seconds",
            "90",
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )


async def _ready(process: asyncio.subprocess.Process, name: str, tmp_path: Path) -> None:
    assert process.stdout is not None
    async with asyncio.timeout(15):
        line = await process.stdout.readline()
    assert line, f"{name} exited before it was ready:\n{(tmp_path / f'{name}.err').read_text()}"
    assert json.loads(line) == {"ready": name}


async def _cut_pubsub(server: RedisServer, subscribers: int) -> float:
    """Wait until *subscribers* instances listen, then CLIENT KILL TYPE pubsub: every
    subscriber loses its link, data links live on. Returns the time of the cut."""
    await _wait_subscribed(server, subscribers)
    client = aioredis.Redis.from_url(server.url)
    try:
        cut = time.monotonic()
        assert await client.client_kill_filter(_type="pubsub") == subscribers
    finally:
        await client.aclose()
    return cut


async def _wait_subscribed(server: RedisServer, subscribers: int, timeout: float = 10) -> float:
    """When *subscribers* pub/sub clients are connected (fails after *timeout*)."""
    client = aioredis.Redis.from_url(server.url)
    try:
        async with asyncio.timeout(timeout):
            while len(await client.client_list(_type="pubsub")) < subscribers:
                await asyncio.sleep(0.01)
    finally:
        await client.aclose()
    return time.monotonic()


async def _run_chaos(
    server: RedisServer, processes: dict[str, asyncio.subprocess.Process], tmp_path: Path
) -> Timeline:
    instances = len(processes)
    start = time.monotonic()
    await asyncio.sleep(CONNECTED_BEFORE_CUT)
    cuts = [await _cut_pubsub(server, instances)]
    await asyncio.sleep(CONNECTED_BEFORE_KILL)

    kill = time.monotonic()
    server.kill()
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(server.restart)  # same port, empty, a new run id
    restart = time.monotonic()
    settle = restart + CHAOS_SETTINGS["max_stale"] + SETTLE_MARGIN
    resubscribed = await _wait_subscribed(server, instances)
    await asyncio.sleep(settle + SETTLED_BEFORE_CUT - time.monotonic())

    cuts.append(await _cut_pubsub(server, instances))
    await asyncio.sleep(SETTLED_AFTER_CUT)

    stop = time.monotonic()
    (tmp_path / "stop").touch()
    async with asyncio.timeout(25):  # a reader may be inside a read that hangs
        codes = {name: await process.wait() for name, process in processes.items()}
    assert codes == dict.fromkeys(processes, 0), _stderr(tmp_path, processes)
    return Timeline(start, kill, restart, settle, stop, tuple(cuts), resubscribed)


def _stderr(tmp_path: Path, names: Iterable[str]) -> str:
    return "\n".join(
        f"--- {name}:\n{(tmp_path / f'{name}.err').read_text()[-3000:]}" for name in names
    )


async def test_chaos_kill_restart_and_pubsub_cuts_serve_nothing_stale(
    server: RedisServer, tmp_path: Path
) -> None:
    """No read raises or hangs; no read is stale while connected (beyond the propagation
    bound, pub/sub cuts included) or after recovery from the restart has settled."""
    _make_source(tmp_path / "source.db")
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        for i in range(READERS):
            name = f"reader-{i + 1}"
            processes[name] = await _spawn("reader", name, i + 1, server, tmp_path, pause=0.001)
        processes["writer"] = await _spawn("writer", "writer", 0, server, tmp_path, pause=0.02)
        for name, process in processes.items():
            await _ready(process, name, tmp_path)
        timeline = await _run_chaos(server, processes, tmp_path)
    finally:
        (tmp_path / "stop").touch()
        for process in processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    reads: list[Read] = []
    writes: list[Write] = []
    stats = {}
    for name in processes:
        got_reads, got_writes, got_stats = load_log(tmp_path / f"{name}.jsonl")
        reads += got_reads
        writes += got_writes
        assert got_stats is not None, f"{name} wrote no final stats"
        stats[name] = got_stats
    report = check(reads, writes, timeline, PROPAGATION_BOUND)
    report.stats = stats
    title = (
        f"{server.flavour}: {READERS} readers, 1 writer, {ROWS} rows, "
        f"{timeline.stop - timeline.start:.1f} s, settings {CHAOS_SETTINGS}"
    )
    print("\n" + report.format(title))
    (tmp_path / f"chaos-{server.flavour}.json").write_text(
        json.dumps({"title": title, **report.to_json()}, indent=2)
    )

    # The run really exercised what it claims to (else the figures prove nothing).
    for phase, figures in report.phases.items():
        assert figures.reads > 100, (phase, figures)
        assert figures.writes > 5, (phase, figures)
    assert stats["writer"]["queued_ops"] > 0  # invalidations made during the outage were queued
    for i in range(READERS):  # the restart was detected (new run id) by every reader
        assert stats[f"reader-{i + 1}"]["resyncs"] >= 1, stats[f"reader-{i + 1}"]
    assert report.failures() == [], report.format(title)


def test_checker_flags_what_it_must() -> None:
    """The checker itself: a stale read while connected or after settling fails; during
    the outage it is only counted; an error, a hang and an unwritten version fail."""
    timeline = Timeline(start=0, kill=10, restart=12, settle=14, stop=20)
    writes = [
        Write(row=1, version=1, begin=1.0, commit=1.01, ack=1.02),
        Write(row=1, version=2, begin=11.0, commit=11.01, ack=11.02),
    ]

    def read(
        start: float, version: int | None, end: float | None = None, error: str | None = None
    ) -> Read:
        return Read("r", 1, start, start + 0.001 if end is None else end, version, error)

    fine = [read(0.5, 0), read(1.05, 0), read(1.2, 1), read(16, 2)]  # 1.05: within the bound
    report = check(fine, writes, timeline, bound=0.05)
    assert report.failures() == []
    assert report.reads == 4

    report = check([*fine, read(1.2, 0), read(11.5, 1), read(16, 1)], writes, timeline, 0.05)
    assert (report.stale_connected, report.stale_outage, report.stale_settled) == (1, 1, 1)
    assert round(report.worst_staleness_ms) == round((16 - 11.02) * 1000)
    assert len(report.failures()) == 2

    report = check(
        [read(2, None, error="BackendError: boom"), read(3, 1, end=4.5), read(5, 3)],
        writes,
        timeline,
        0.05,
    )
    assert (report.errors, report.hung_reads, report.impossible_reads) == (1, 1, 1)
    assert len(report.failures()) == 3
