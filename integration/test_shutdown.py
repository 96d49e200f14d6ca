"""Closing the cache from another thread while callers are mid-call (issue 18,
item 4; DESIGN §4, guarantee 11).

A shutdown hook (gunicorn's `worker_exit`, a signal handler, `atexit`) calls
`cache.sync.close()` in one thread while request threads are inside
`cache.sync` calls. Every one of those calls must end — with a value or
`CacheClosedError` — the fill leases they hold must be given back, and
`close()` must return within its bound. Real server; every wait has a
deadline, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.test_shutdown import WAIT, Call
from twotier import CacheClosedError, TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer

from .conftest import FLAVOURS

LEASE_TTL = 60.0  # a lease left to expire would outlive every deadline here


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RedisServer]:
    with RedisServer.start(FLAVOURS[0]) as srv:
        yield srv


def make_cache(server: RedisServer, namespace: str) -> TwoTierCache:
    return TwoTierCache(
        redis_url=server.url, namespace=namespace, redis_timeout=0.5, lease_ttl=LEASE_TTL
    )


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.01)


def test_close_settles_a_caller_waiting_on_another_instance_lease(
    shared_server: RedisServer,
) -> None:
    """Before: the waiting caller's task was left on a loop that had stopped,
    and its thread blocked forever."""
    namespace = f"sd{uuid.uuid4().hex[:8]}"
    holder, cache = make_cache(shared_server, namespace), make_cache(shared_server, namespace)
    loading, finish = threading.Event(), threading.Event()

    @holder.sync.cached(ttl=60, key="report")
    def holders_report() -> str:
        loading.set()
        finish.wait(WAIT)
        return "the holder's"

    @cache.sync.cached(ttl=60, key="report")
    def report() -> str:
        return "this instance's"

    try:
        loader = Call(holders_report)  # takes the key's fill lease, and keeps it
        assert loading.wait(WAIT)
        waiter = Call(report)  # misses, finds the lease held: waits for the holder
        poll(lambda: cache.sync.get_stats()["lease_waits"] == 1, "the caller waits on the lease")

        closer = Call(cache.sync.close)
        assert closer.result() is None
        outcome = waiter.result()
        assert outcome in ("this instance's", "the holder's") or isinstance(
            outcome, CacheClosedError
        ), repr(outcome)
    finally:
        finish.set()
        assert loader.result() == "the holder's"
        holder.sync.close()
        cache.sync.close()


def test_close_settles_a_caller_running_its_function_and_releases_its_lease(
    shared_server: RedisServer,
) -> None:
    """Before: the caller got `RuntimeError: Event loop is closed` when its
    function returned, and its fill lease was left to expire (`lease_ttl`)."""
    namespace = f"sd{uuid.uuid4().hex[:8]}"
    cache = make_cache(shared_server, namespace)
    lease = Layout(namespace).lease("slow")
    entered, proceed = threading.Event(), threading.Event()

    @cache.sync.cached(ttl=60, key="slow")
    def slow() -> str:
        entered.set()
        proceed.wait(WAIT)
        return "fresh"

    with redis.Redis.from_url(shared_server.url) as raw:
        try:
            caller = Call(slow)
            assert entered.wait(WAIT)
            assert raw.exists(lease), "the caller holds the key's fill lease"
            closer = Call(cache.sync.close)
            # close() waits for the call (bounded), then gives its lease back
            # while it can still reach Redis.
            poll(lambda: not raw.exists(lease), "the lease is released")
            assert closer.result() is None
        finally:
            proceed.set()
        outcome = caller.result()
        assert outcome == "fresh" or isinstance(outcome, CacheClosedError), repr(outcome)
        assert not raw.exists(lease)
        cache.sync.close()


def test_calls_after_close_fail_at_once(shared_server: RedisServer) -> None:
    cache = make_cache(shared_server, f"sd{uuid.uuid4().hex[:8]}")
    cache.sync.set("k", 1)
    Call(cache.sync.close).result()
    start = time.monotonic()
    for call in (lambda: cache.sync.get("k"), lambda: cache.sync.set("k", 2)):
        with pytest.raises(CacheClosedError):
            call()
    assert time.monotonic() - start < WAIT
