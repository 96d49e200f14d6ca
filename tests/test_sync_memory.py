"""`cache.sync` in memory mode (no server): the blocking view of DESIGN §2b.

Plain `def` tests run with no event loop at all, as a script or a WSGI worker
does: the cache runs on a loop thread of its own. Every wait on another thread
is bounded, so a deadlock fails a test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import unique_namespace
from twotier import CacheClosedError, ConfigurationError, EventLoopError, TwoTierCache

WAIT = 10.0  # any one blocking call; generous for a loaded machine
ABSENT = object()


def loop_threads(cache: TwoTierCache) -> list[threading.Thread]:
    """The loop thread the cache made for itself, if it is alive."""
    return [t for t in threading.enumerate() if t.name == f"twotier-{cache.instance_id}"]


def in_thread(func: object, *args: object, within: float = WAIT) -> object:
    """Run *func* in a new thread without a loop; fail (not hang) if it does not return."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(func(*args))  # type: ignore[operator]
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), "the call hangs"
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    return result


def test_no_loop_runs_here() -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # the premise of the plain tests below


def test_round_trip(cache: TwoTierCache) -> None:
    assert cache.sync.get("k") is None
    assert cache.sync.get("k", ABSENT) is ABSENT
    cache.sync.set("k", {"a": [1, 2]}, ttl=60, tags=["t"])
    assert cache.sync.get("k") == {"a": [1, 2]}
    cache.sync.delete("k")
    assert cache.sync.get("k", ABSENT) is ABSENT

    cache.sync.set("a", 1, tags=["x"])
    cache.sync.set("b", 2, tags=["y"])
    cache.sync.set("c", 3, tags=["z"])
    cache.sync.invalidate_tag("x")
    assert cache.sync.get("a", ABSENT) is ABSENT
    cache.sync.invalidate_tags(["y"])
    assert cache.sync.get("b", ABSENT) is ABSENT
    assert cache.sync.get("c") == 3
    cache.sync.clear()
    assert cache.sync.get("c", ABSENT) is ABSENT

    assert cache.sync.ping() == 0.0  # no Redis
    stats = cache.sync.get_stats()
    assert stats["sets"] == 4
    assert stats["deletes"] == 1
    assert stats["tag_invalidations"] == 2
    assert stats["entries"] == 0


def test_values_are_copies_on_read(cache: TwoTierCache) -> None:
    cache.sync.set("k", [1, 2])
    got = cache.sync.get("k")
    got.append(3)
    assert cache.sync.get("k") == [1, 2]


def test_sync_view_is_the_same_cache_as_the_async_one() -> None:
    """A thread-pool worker of an async service: same L1, whichever side writes."""
    cache = TwoTierCache(namespace=unique_namespace())

    async def service() -> None:
        await cache.set("from-async", 1)
        assert await asyncio.to_thread(cache.sync.get, "from-async") == 1
        await asyncio.to_thread(cache.sync.set, "from-thread", 2, None, ["t"])
        assert await cache.get("from-thread") == 2
        await asyncio.to_thread(cache.invalidate_tag, "t")  # the seed's call shape
        assert await cache.get("from-thread", ABSENT) is ABSENT
        assert loop_threads(cache) == []  # the service's loop served every call
        await cache.close()

    asyncio.run(service())


def test_seed_invalidation_in_a_script_reaches_other_instances_before_it_returns() -> None:
    ns = unique_namespace()
    mine, other = TwoTierCache(namespace=ns), TwoTierCache(namespace=ns)
    try:
        other.sync.set("price:1", 10, tags=["prices"])
        mine.invalidate_tag("prices")  # un-awaited, no loop anywhere
        assert other.sync.get("price:1", ABSENT) is ABSENT
    finally:
        mine.close_blocking()
        other.close_blocking()


def test_cached_runs_the_function_once_in_the_calling_thread(cache: TwoTierCache) -> None:
    ran_in: list[int] = []

    @cache.sync.cached(ttl=60, tags=["item:{item_id}"])
    def get_item(item_id: int, scale: int = 2) -> dict[str, int]:
        ran_in.append(threading.get_ident())
        return {"id": item_id, "value": item_id * scale}

    main = threading.get_ident()
    assert get_item(3) == {"id": 3, "value": 6}
    assert get_item(3) == {"id": 3, "value": 6}
    assert get_item(item_id=3, scale=2) == {"id": 3, "value": 6}  # same key
    assert ran_in == [main]

    worker = in_thread(lambda: (threading.get_ident(), get_item(4)))
    assert worker[1] == {"id": 4, "value": 8}  # type: ignore[index]
    assert ran_in == [main, worker[0]]  # type: ignore[index]
    (loop_thread,) = loop_threads(cache)
    assert loop_thread.ident not in ran_in

    assert get_item.key(3) == get_item.key(item_id=3)
    assert cache.sync.get(get_item.key(3)) == {"id": 3, "value": 6}
    get_item.invalidate(3)
    assert get_item(3) == {"id": 3, "value": 6}
    assert len(ran_in) == 3
    cache.sync.invalidate_tag("item:4")
    get_item(4)
    assert len(ran_in) == 4


def test_cached_keeps_the_function_signature_and_name(cache: TwoTierCache) -> None:
    def get_charge(charge_id: int, *, currency: str = "EUR") -> str:
        """Docstring."""
        return f"{charge_id} {currency}"

    cached = cache.sync.cached(ttl=60)(get_charge)
    assert cached.__name__ == "get_charge"
    assert cached.__doc__ == "Docstring."
    assert cached.__wrapped__ is get_charge
    assert inspect.signature(cached) == inspect.signature(get_charge)
    assert cached(7, currency="CHF") == "7 CHF"


def test_exceptions_reach_the_caller_unchanged_and_nothing_is_cached(
    cache: TwoTierCache,
) -> None:
    class ChargeMissing(LookupError):
        pass

    raised = ChargeMissing(42)
    calls: list[int] = []

    @cache.sync.cached(ttl=60)
    def get_charge(charge_id: int) -> str:
        calls.append(charge_id)
        if len(calls) <= 2:
            raise raised
        return "found"

    with pytest.raises(ChargeMissing) as first:
        get_charge(42)
    assert first.value is raised  # the very object, not a wrapper
    assert cache.sync.get(get_charge.key(42), ABSENT) is ABSENT
    with pytest.raises(ChargeMissing):
        get_charge(42)  # ran again: the failure was not cached
    assert get_charge(42) == "found"
    assert get_charge(42) == "found"
    assert calls == [42, 42, 42]
    assert cache.sync.get_stats()["load_errors"] == 2


def test_concurrent_threads_share_one_load(cache: TwoTierCache) -> None:
    loads: list[int] = []
    barrier = threading.Barrier(6, timeout=WAIT)

    @cache.sync.cached(ttl=60)
    def slow(n: int) -> int:
        loads.append(threading.get_ident())
        time.sleep(0.05)
        return n * 10

    callers: list[int] = []
    results: list[int] = []

    def call() -> None:
        barrier.wait()
        callers.append(threading.get_ident())
        results.append(slow(1))

    threads = [threading.Thread(target=call, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert results == [10] * 6
    assert len(loads) == 1
    assert loads[0] in callers


def test_nested_cached_functions(cache: TwoTierCache) -> None:
    """The function runs in the caller's thread while the loop stays free, so it
    can use the cache itself (a Django view calling other cached helpers)."""

    @cache.sync.cached(ttl=60)
    def rate(currency: str) -> float:
        return {"EUR": 1.0, "CHF": 1.05}[currency]

    @cache.sync.cached(ttl=60)
    def price(amount: int, currency: str) -> float:
        cache.sync.set(f"seen:{currency}", True)
        return amount * rate(currency)

    assert in_thread(price, 100, "CHF") == 105.0
    assert cache.sync.get("seen:CHF") is True


def test_warmup(cache: TwoTierCache) -> None:
    loaded: list[str] = []

    def loader(key: str) -> str:
        loaded.append(key)
        return key.upper()

    assert cache.sync.warmup(["a", "b", "c"], loader) == 3
    assert cache.sync.warmup(["a", "b", "d"], loader) == 1  # cached keys are not reloaded
    assert sorted(loaded) == ["a", "b", "c", "d"]
    assert cache.sync.get("d") == "D"


def test_close_blocking_ends_the_loop_thread() -> None:
    cache = TwoTierCache(namespace=unique_namespace())
    cache.sync.set("k", 1)
    (thread,) = loop_threads(cache)
    cache.close_blocking()
    thread.join(WAIT)
    assert not thread.is_alive()
    with pytest.raises(CacheClosedError):
        cache.sync.set("k", 2)
    cache.close_blocking()  # idempotent


def test_use_after_close_starts_no_new_loop_thread() -> None:
    """Until acf51f1 a call after close_blocking() started a new loop thread, then
    raised, and left that thread running."""
    cache = TwoTierCache(namespace=unique_namespace())
    cache.sync.set("k", 1)
    cache.close_blocking()
    with pytest.raises(CacheClosedError):
        cache.sync.get("k")
    try:
        assert loop_threads(cache) == []
    finally:
        cache.close_blocking()


def test_sync_call_on_the_cache_loop_raises_at_once() -> None:
    cache = TwoTierCache(namespace=unique_namespace())

    @cache.sync.cached(ttl=60)
    def one() -> int:
        return 1

    async def on_the_loop() -> None:
        await cache.set("k", 1)
        for call in (lambda: cache.sync.get("k"), one, cache.close_blocking):
            start = time.monotonic()
            with pytest.raises(EventLoopError):
                call()
            assert time.monotonic() - start < 1.0
        assert await cache.get("k") == 1  # nothing closed
        await cache.close()

    asyncio.run(on_the_loop())


def test_async_use_while_the_own_loop_thread_runs_the_cache(cache: TwoTierCache) -> None:
    cache.sync.set("k", 1)  # the cache now lives on its own loop thread, which stays open

    async def elsewhere() -> None:
        with pytest.raises(EventLoopError):
            await cache.set("k", 2)
        assert cache.sync.get("k") == 1  # the blocking view still works from here

    asyncio.run(elsewhere())


def test_loop_after_loop(cache: TwoTierCache) -> None:
    """Two `asyncio.run` one after the other, then sync callers: each takes the cache over."""

    async def first() -> None:
        await cache.set("k", 1)

    async def second() -> int:
        await cache.set("j", 2)
        return await cache.get("j")  # type: ignore[no-any-return]

    asyncio.run(first())
    assert asyncio.run(second()) == 2
    cache.sync.set("i", 3)
    assert cache.sync.get("i") == 3


def test_early_refresh_of_a_sync_cached_function(cache: TwoTierCache) -> None:
    """Until acf51f1 the refresh task inherited the caller's handoff and asked the
    caller, already gone, to run the function: it waited forever, its flight
    stayed registered, and every caller after the expiry joined it for good."""
    loads: list[int] = []

    @cache.sync.cached(ttl=0.3, early_refresh=10)
    def value(n: int) -> int:
        loads.append(n)
        time.sleep(0.01)
        return n

    def keep_reading() -> int:
        deadline = time.monotonic() + 1.0  # three TTLs
        reads = 0
        while time.monotonic() < deadline:
            assert value(1) == 1
            reads += 1
            time.sleep(0.01)
        return reads

    assert in_thread(keep_reading, within=3) > 10  # type: ignore[operator]
    assert len(loads) >= 2  # refreshed or reloaded after the first TTL


def test_soft_timeout_is_refused_on_sync_functions(cache: TwoTierCache) -> None:
    """It would answer the caller early and run the function in another thread
    (a Django view's query would use another connection)."""
    with pytest.raises(ConfigurationError, match="soft_timeout"):
        cache.sync.cached(ttl=0.1, soft_timeout=0.05, stale_if_error=60)


INTERRUPTED = """
import threading
import time

from twotier import TwoTierCache

cache = TwoTierCache(namespace="interrupted")
cache.sync.set("kept", "value")
name = f"twotier-{cache.instance_id}"
(loop_thread,) = [t for t in threading.enumerate() if t.name == name]


@cache.sync.cached(ttl=60)
def task():
    raise EXC


try:
    task()
except BaseException as exc:
    print("caught", type(exc).__name__, flush=True)
time.sleep(0.2)  # whatever the loop thread does with it is over by now
print("same loop thread", loop_thread.is_alive(), flush=True)
print("after", cache.sync.get("kept", "lost"), flush=True)
"""


@pytest.mark.parametrize("exc", ["SystemExit(3)", "KeyboardInterrupt"])
def test_base_exceptions_from_the_function_spare_the_loop_thread(exc: str) -> None:
    """SystemExit (sys.exit()) or KeyboardInterrupt (Ctrl-C) in the function. Until
    acf51f1 it was handed to the loop, whose task re-raised it out of run_forever:
    the loop thread ended, and a call made right after could block forever."""
    try:
        run = subprocess.run(
            [sys.executable, "-c", INTERRUPTED.replace("EXC", exc)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the script hangs")
    name = exc.split("(")[0]
    assert run.stdout.splitlines() == [f"caught {name}", "same loop thread True", "after value"]
    assert run.returncode == 0
    assert run.stderr == ""
