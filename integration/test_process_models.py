"""The process models ERP teams run twotier under, with real processes and a
real server (DESIGN §4, guarantee 11; issue 18).

Each test starts the model the way a deployment does — `multiprocessing` with
each start method, … — against a server of its own, and checks coherence the
way users notice its absence: after a change returns in one process, no
process answers the old value once the propagation window has passed. Every
wait has a deadline; nothing asserts on a duration.

The helper applications live in `integration/apps/`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from twotier import TwoTierCache
from twotier.testing import RedisServer

from .conftest import FLAVOURS

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120.0  # a whole application run; a hang fails, never stalls the suite
WINDOW = 2.0  # the propagation window: "milliseconds", asserted loosely on a loaded machine


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RedisServer]:
    """One server for the module: the models differ on the client side, not the server's."""
    with RedisServer.start(FLAVOURS[0]) as srv:
        yield srv


def app_env(server: RedisServer, **variables: str) -> dict[str, str]:
    """The environment of an application process: the default cache's `TWOTIER_*`
    settings (a namespace of its own), and this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    env.update(
        TWOTIER_REDIS_URL=server.url,
        TWOTIER_NAMESPACE=f"pm{uuid.uuid4().hex[:8]}",
        TWOTIER_REDIS_TIMEOUT="0.5",  # a loaded CI machine stalls; the default is 0.1
        TWOTIER_DEFAULT_TTL="300",  # long: only an invalidation makes an instance drop an entry
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.update(variables)
    return env


def run_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run an application to its end; its one JSON line of report."""
    done = subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(
            f"no report (exit status {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from None
    report["stderr"] = done.stderr
    report["returncode"] = done.returncode
    return report


# -- multiprocessing -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_and_parent_stay_coherent(
    shared_server: RedisServer, method: str
) -> None:
    """`integration/apps/mp_app.py`: the parent makes and uses the default cache,
    then starts two children, twice (a second generation after the first has
    gone). Each process in turn sets, invalidates (un-awaited) and deletes;
    every other process held the old value in L1 and must drop it.

    Before the fix, a forked child (or every child of a fork server that had
    imported the cache) kept its parent's `instance_id`, took the others'
    changes for its own, and ignored them: the old value stayed for its TTL.
    """
    report = run_json(
        [sys.executable, "-m", "integration.apps.mp_app", method], app_env(shared_server)
    )
    assert report["error"] is None, report["error"] + "\n" + report["stderr"][-3000:]
    assert report["returncode"] == 0, report["stderr"][-3000:]
    identities = report["identities"]
    parent_before, *children, parent_after = identities
    assert len(children) == 4
    # Every process is its own instance; the parent keeps its identity.
    ids = [identity["instance"] for identity in [parent_before, *children]]
    assert len(set(ids)) == len(ids), identities
    assert parent_after["instance"] == parent_before["instance"]
    assert parent_after["pid"] == parent_before["pid"]
    # Each child runs the cache on a loop thread of its own, named after its own id.
    for child in children:
        assert child["loop_thread"] == f"twotier-{child['instance']}", child
    slowest = max(row["seen_after_ms"] for row in report["timings"])
    print(
        f"\n{method}: {len(report['timings'])} reads of a changed key in 3 processes; "
        f"the slowest saw the change {slowest:.1f} ms after the change returned"
    )


# -- the end of a loop, and of the cache -----------------------------------------------


async def _holds_then_loses(
    server: RedisServer, namespace: str, tags: list[str], change: Callable[[], Any]
) -> float:
    """An observer instance holds one entry per tag in L1; *change* runs (an
    application process, to its end); every entry must be gone within the
    propagation window. Returns how long the last one took."""
    observer = TwoTierCache(redis_url=server.url, namespace=namespace, redis_timeout=0.5)
    async with observer:
        for tag in tags:
            await observer.set(f"entry:{tag}", "old", tags=[tag])
            assert observer.local.get(f"entry:{tag}") == "old"
        await asyncio.to_thread(change)
        start = time.monotonic()
        for tag in tags:
            while await observer.get(f"entry:{tag}", "gone") != "gone":
                assert time.monotonic() - start < WINDOW, (
                    f"the invalidation of {tag!r} never arrived (the process ended)"
                )
                await asyncio.sleep(0.005)
        return time.monotonic() - start


@pytest.mark.parametrize("mode", ["async-with", "run-started", "run-cold"])
async def test_an_unawaited_invalidation_as_the_last_statement_is_delivered(
    shared_server: RedisServer, mode: str
) -> None:
    """`integration/apps/loop_end.py MODE`: the seed's un-awaited
    `cache.invalidate_tag(...)` as the last statement inside `async with
    cache:`, or of an `asyncio.run(...)` (with the cache used before, or not at
    all). Before the fix it was lost in all three: `close()` began before the
    delivery did, which then met a closed cache; `asyncio.run` cancelled the
    delivery task before its first step."""
    env = app_env(shared_server)
    tag = f"report:{mode}"

    def run_app() -> None:
        report = run_json([sys.executable, "-m", "integration.apps.loop_end", mode, tag], env)
        assert report.get("done") == mode, report
        assert report["returncode"] == 0, report["stderr"]
        assert "Traceback" not in report["stderr"], report["stderr"]

    await _holds_then_loses(shared_server, env["TWOTIER_NAMESPACE"], [tag], run_app)


async def test_each_asyncio_run_delivers_and_closes_its_connections(
    shared_server: RedisServer,
) -> None:
    """Ten `asyncio.run` in one process (Celery tasks wrapping async code), each
    ending with an un-awaited invalidation; garbage collection off. Every
    invalidation arrives, and the server's client count does not grow from run
    to run: a loop's connections are closed when it ends, not left to the
    garbage collector (issue 18, item 6: 120 connections after 20 runs)."""
    env = app_env(shared_server)
    tags = [f"task:{i}" for i in range(10)]
    clients: list[int] = []

    def run_app() -> None:
        report = run_json([sys.executable, "-m", "integration.apps.loop_end", "runs", "task"], env)
        assert report["returncode"] == 0, report["stderr"]
        clients.extend(report["clients"])

    await _holds_then_loses(shared_server, env["TWOTIER_NAMESPACE"], tags, run_app)
    assert clients[-1] <= clients[0], f"connected clients after each run: {clients}"
