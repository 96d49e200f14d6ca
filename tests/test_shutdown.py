"""`cache.sync.close()` from another thread while callers are mid-call (issue 18,
item 4), in memory mode. Every call ends (a value, or `CacheClosedError`) and
`close()` returns within its bound, even while a caller's function is still
running. With a real server, leases included: `integration/test_shutdown.py`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from twotier import CacheClosedError, TwoTierCache

WAIT = 20.0  # any one step; "forever" shows as a thread still alive


class Call:
    """A blocking call in a thread of its own; its outcome, a value or an exception."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.outcome: list[Any] = []

        def run() -> None:
            try:
                self.outcome.append(func())
            except BaseException as exc:
                self.outcome.append(exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> Any:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the call never ended"
        (outcome,) = self.outcome
        return outcome


def test_close_while_a_caller_runs_its_function() -> None:
    """`close()` returns while the function still runs; the caller then gets its
    own function's value. Before: `RuntimeError: Event loop is closed` when the
    function returned (its value was handed to a loop that had gone)."""
    cache = TwoTierCache(namespace=f"sd{uuid.uuid4().hex[:8]}", redis_timeout=0.05)
    entered, proceed = threading.Event(), threading.Event()

    @cache.sync.cached(ttl=60)
    def slow() -> str:
        entered.set()
        proceed.wait(WAIT)
        return "fresh"

    caller = Call(slow)
    assert entered.wait(WAIT)
    try:
        assert Call(cache.sync.close).result() is None  # while slow() still runs
    finally:
        proceed.set()
    assert caller.result() == "fresh"
    assert cache.closed


def test_close_from_several_threads_at_once() -> None:
    """Every closer returns. A closer that found the cache closed waited for the
    close on the cache's loop, which the first closer could stop before it ran:
    it then waited forever (1 run in a few). Thirty races make that certain."""
    for _ in range(30):
        cache = TwoTierCache(namespace=f"sd{uuid.uuid4().hex[:8]}")
        cache.sync.set("k", 1)
        closers = [Call(cache.sync.close) for _ in range(4)]
        assert [closer.result() for closer in closers] == [None] * 4
        assert cache.closed


def test_calls_racing_a_close_end_one_way_or_the_other() -> None:
    """Threads calling while another closes: each call answers, or raises
    `CacheClosedError`; none waits on the stopped loop."""
    cache = TwoTierCache(namespace=f"sd{uuid.uuid4().hex[:8]}")
    cache.sync.set("k", 1)
    stop = threading.Event()

    def hammer() -> list[Any]:
        seen: list[Any] = []
        while not stop.is_set():
            try:
                seen.append(cache.sync.get("k"))
            except CacheClosedError:
                seen.append("closed")
                if len(seen) > 3:
                    return seen
        return seen

    callers = [Call(hammer) for _ in range(4)]
    Call(cache.sync.close).result()
    for caller in callers:
        seen = caller.result()
        assert set(seen) <= {1, "closed"}, seen
        assert seen[-1] == "closed"
    stop.set()
