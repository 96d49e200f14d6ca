"""A forked child is a new instance (DESIGN §4, guarantee 11; issue 18, item 1).

Memory mode, real `os.fork()`: the child reports what it sees over a pipe and
ends with `os._exit`, never returning into pytest. What a child inherits must
not be trusted (its parent's id, L1, counters, loop thread), and what the
parent holds must keep working however many children it forks. The same over
Redis, with `multiprocessing` and pre-fork servers, is in
`integration/test_process_models.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import unique_namespace
from twotier import TwoTierCache

WAIT = 20.0  # a child's whole run; generous for a loaded machine

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")


def in_child(body: Callable[[], Any]) -> Any:
    """Run *body* in a forked child; its JSON-able result, or its exception as an
    AssertionError. A child that does not finish within WAIT is killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        status = 0
        try:
            try:
                reply = {"ok": body()}
            except BaseException as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(reply).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"the child did not finish within {WAIT} s")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    reply = json.loads(b"".join(chunks) or b'{"error": "the child died"}')
    if "error" in reply:
        raise AssertionError(f"in the child: {reply['error']}")
    return reply["ok"]


async def _local_entries(cache: TwoTierCache) -> int:
    return cache.local.entries


def _identity(cache: TwoTierCache) -> dict[str, Any]:
    threads = [t.name for t in threading.enumerate() if t.name.startswith("twotier-")]
    return {"instance": cache.instance_id, "pid": os.getpid(), "loop_threads": threads}


def test_a_child_of_a_parent_that_used_the_cache_is_a_new_instance(cache: TwoTierCache) -> None:
    cache.sync.set("k", "parent's", tags=["t"])
    assert cache.sync.get("k") == "parent's"
    parent_id = cache.instance_id

    def child() -> dict[str, Any]:
        inherited = {
            "entries": cache.sync.run(lambda: _local_entries(cache)),
            "sets": cache.sync.get_stats()["sets"],
        }
        cache.sync.set("mine", 1)
        return {**_identity(cache), **inherited, "instance_in_stats": cache.sync.get_stats()}

    seen = in_child(child)
    assert seen["instance"] != parent_id
    assert seen["instance_in_stats"]["instance"] == seen["instance"]
    assert seen["entries"] == 0  # the inherited L1 is not trusted
    assert seen["sets"] == 0  # nor the parent's counters
    assert seen["loop_threads"] == [f"twotier-{seen['instance']}"]  # its own loop thread
    # The parent goes on as before, on its own loop thread, with its own L1.
    assert cache.instance_id == parent_id
    assert cache.sync.run(lambda: _local_entries(cache)) == 1
    assert cache.sync.get("k") == "parent's"
    assert cache.sync.get_stats()["sets"] == 1


def test_children_of_a_cache_made_but_never_used_differ_from_each_other() -> None:
    """A module-level cache, imported by a pre-fork server's master or a fork
    server before any worker exists: no loop, no L1, but an id to share."""
    made = TwoTierCache(namespace=unique_namespace())
    try:
        ids = [in_child(lambda: made.instance_id) for _ in range(3)]
        assert len({made.instance_id, *ids}) == 4
    finally:
        made.close_blocking()


def test_the_parent_keeps_working_after_many_forks(cache: TwoTierCache) -> None:
    parent_id = cache.instance_id
    for i in range(5):
        cache.sync.set(f"before:{i}", i)

        def child(i: int = i) -> str:
            cache.sync.set("x", i)
            assert cache.sync.get("x") == i
            cache.invalidate_tag("anything")
            cache.sync.close()  # closing the child's cache leaves the parent's alone
            return cache.instance_id

        assert in_child(child) != parent_id
        assert cache.sync.get(f"before:{i}") == i
    assert cache.instance_id == parent_id
    assert cache.sync.get_stats()["sets"] == 5


def test_a_grandchild_is_a_new_instance_too(cache: TwoTierCache) -> None:
    cache.sync.set("k", 1)

    def child() -> list[str]:
        cache.sync.set("k", 2)
        mine = cache.instance_id
        grandchild = in_child(lambda: (cache.sync.get("k", "gone"), cache.instance_id))
        return [mine, *grandchild]

    child_id, grandchild_sees, grandchild_id = in_child(child)
    assert grandchild_sees == "gone"  # it trusted nothing of its parent's L1
    assert len({cache.instance_id, child_id, grandchild_id}) == 3


def test_fork_after_the_cache_ran_on_asyncio_run(cache: TwoTierCache) -> None:
    """The parent used the cache on an event loop that has ended (a management
    command, a test); the child uses it on a loop of its own."""

    async def use() -> Any:
        await cache.set("k", "v")
        return await cache.get("k")

    assert asyncio.run(use()) == "v"

    def child() -> Any:
        got = asyncio.run(use())
        return [got, cache.instance_id]

    got, child_id = in_child(child)
    assert got == "v"
    assert child_id != cache.instance_id


def test_fork_from_inside_the_running_loop(cache: TwoTierCache) -> None:
    """multiprocessing's fork start method called from async code: the child
    starts inside the parent's running loop, which it must not use."""

    async def parent() -> Any:
        await cache.set("k", "parent's")

        def child() -> Any:
            cache.sync.set("k", "child's")
            return [cache.sync.get("k"), cache.instance_id]

        got, child_id = in_child(child)
        return got, child_id, await cache.get("k")

    got, child_id, parent_sees = asyncio.run(parent())
    assert got == "child's"
    assert child_id != cache.instance_id
    assert parent_sees == "parent's"  # memory mode: each process has its own hub


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_child_logs_as_itself(cache: TwoTierCache) -> None:
    """The adapters the cache's parts were built with speak for the new
    instance: records carry the child's id and pid."""
    cache.sync.set("k", 1)
    parent_id = cache.instance_id

    def child() -> list[Any]:
        handler = _Records()
        logger = logging.getLogger("twotier")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        cache.sync.get("k")  # the first use in the child: it says it was forked
        return [
            [r.getMessage(), r.instance, r.process]  # type: ignore[attr-defined]
            for r in handler.records
        ] + [[cache.instance_id, os.getpid()]]

    *records, (child_id, child_pid) = in_child(child)
    assert records, "the child logged nothing at its first use"
    message, instance, pid = records[0]
    assert instance == child_id
    assert pid == child_pid
    assert parent_id in message  # the record names the instance it was forked from
    assert "forked" in message


def test_a_fork_while_a_call_is_in_flight(cache: TwoTierCache) -> None:
    """A request thread of the parent is inside a `cache.sync` call when another
    thread forks (a Celery or gunicorn worker forking mid-traffic): the call is
    the parent's, and the child's close() must neither wait on it nor touch it."""
    entered, proceed = threading.Event(), threading.Event()

    @cache.sync.cached(ttl=60)
    def slow() -> str:
        entered.set()
        proceed.wait(WAIT)
        return "parent's"

    caller = threading.Thread(target=slow, daemon=True)
    caller.start()
    assert entered.wait(WAIT)
    parents_loop = cache.loop
    assert parents_loop is not None
    try:

        def child() -> list[str]:
            cache.sync.set("k", 1)
            cache.sync.close()
            # (the child's copies of the parent's tasks: untouched; before, its
            # close() cancelled the copy of the call, and waited for it)
            tasks = asyncio.all_tasks(parents_loop)
            return ["closed", *sorted(repr(t.get_coro()) for t in tasks if t.cancelling())]

        assert in_child(child) == ["closed"]
    finally:
        proceed.set()
        caller.join(WAIT)
    assert not caller.is_alive()
    assert cache.sync.get("k", "absent") == "absent"  # the child's set was its own


def test_a_fork_while_the_parent_closes_the_cache(cache: TwoTierCache) -> None:
    """The child of a cache being closed has a closed cache; its own close()
    returns at once instead of waiting for the parent's, on the parent's loop."""
    cache.sync.set("k", 1)
    entered, proceed = threading.Event(), threading.Event()
    settle = cache._settle_changes

    async def slow_settle(*, final: bool) -> None:  # the parent's close, held half-way
        entered.set()
        await asyncio.to_thread(proceed.wait, WAIT)
        await settle(final=final)

    cache._settle_changes = slow_settle  # type: ignore[method-assign]
    closer = threading.Thread(target=cache.sync.close, daemon=True)
    closer.start()
    assert entered.wait(WAIT)
    try:

        def child() -> list[Any]:
            asyncio.run(cache.close())
            return [cache.closed]

        assert in_child(child) == [True]
    finally:
        proceed.set()
        closer.join(WAIT)
    assert cache.closed


def test_a_childs_metrics_carry_its_own_instance_id(cache: TwoTierCache) -> None:
    """The observer binds its histogram series once, to the instance id of its
    cache: a child kept the parent's id on its histograms while its scraped
    stats carried its own (found by review of the fork work)."""
    from prometheus_client import CollectorRegistry

    from twotier import prometheus

    registry = CollectorRegistry()
    prometheus.instrument(cache, registry)
    parent_id = cache.instance_id

    def load_once() -> dict[str, Any]:
        @cache.sync.cached(ttl=60)
        def row(n: int) -> int:
            return n

        row(1)
        text = prometheus.metrics_text(registry).decode()
        lines = [
            line for line in text.splitlines() if line.startswith("twotier_loader_seconds_count")
        ]
        return {"id": cache.instance_id, "lines": lines}

    seen = in_child(load_once)
    assert seen["id"] != parent_id
    assert seen["lines"], "no loader series in the child"
    assert all(seen["id"] in line for line in seen["lines"]), seen
    assert not any(parent_id in line for line in seen["lines"]), seen
