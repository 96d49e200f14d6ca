"""`cache.sync` and the sync callers of DESIGN §2b, on real servers.

The shapes of sync code the cache must serve: a Flask-style program and a
Celery-style worker, each a separate OS process with no event loop at all; the
thread-pool workers of an async service; the seed's un-awaited
`cache.invalidate_tag(...)` from threads and scripts. And the one-loop rule:
the cache's own loop calling the blocking API, a second running loop, two
`asyncio.run` one after the other.

Every wait is bounded: a deadlock must fail a test, never hang it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from twotier import EventLoopError, TwoTierCache
from twotier.testing import RedisServer

from .conftest import CacheFactory

BUS_LATENCY = 1.0  # "within milliseconds", asserted loosely so a loaded machine cannot flake it
PROMPT = 1.0  # an error that must come at once, not after a timeout
STEP_TIMEOUT = 30.0  # one step of a script: interpreter start and import included
PROCESS_TIMEOUT = 60.0


def unique_namespace() -> str:
    return f"sync{uuid.uuid4().hex[:8]}"


async def eventually(check: Callable[[], Awaitable[bool]], within: float = BUS_LATENCY) -> float:
    """Poll *check* until it holds; return how long that took, fail after *within* seconds."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def is_gone(cache: TwoTierCache, key: str) -> bool:
    return await cache.get(key, "gone") == "gone"


class Script:
    """A Python program run as its own OS process, with no event loop of ours."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.process = process
        self.stderr_path = stderr

    @classmethod
    async def start(cls, tmp_path: Path, name: str, source: str, *args: str) -> Script:
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        stderr = tmp_path / f"{name}.stderr"
        with stderr.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(path),
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        return cls(process, stderr)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def next_step(self) -> Any:
        """The next JSON line the script prints."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), STEP_TIMEOUT)
        if not line:
            await self.wait()
            raise AssertionError(f"the script ended early:\n{self.stderr}")
        return json.loads(line)

    async def go(self) -> None:
        """Let the script take its next step."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    async def wait(self) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), PROCESS_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"the script did not exit:\n{self.stderr}") from None

    async def finish(self) -> None:
        """Wait for a clean exit: status 0 and nothing on stderr (no traceback, no warning)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        code = await self.wait()
        assert code == 0, self.stderr
        assert self.stderr == ""


# -- a Flask-style program: no event loop anywhere ----------------------------------

FLASK_APP = """
import asyncio, json, sys, threading

from twotier import TwoTierCache

url, namespace = sys.argv[1], sys.argv[2]
cache = TwoTierCache(redis_url=url, namespace=namespace, redis_timeout=0.5)
loads = []


@cache.sync.cached(ttl=60, tags=["articles", "category:{category}"], key="articles:{category}")
def articles(category):
    loads.append(threading.get_ident())
    return [f"{category}-from-flask-{len(loads)}"]


def step(name, **facts):
    print(json.dumps({"step": name, **facts}), flush=True)
    assert sys.stdin.readline() == "go\\n"


try:
    asyncio.get_running_loop()
except RuntimeError:
    pass
else:
    raise AssertionError("a Flask view has no running loop")

rtt = cache.sync.ping()
cache.sync.set("user:1", {"name": "ada"}, tags=["users"])
step("set", value=cache.sync.get("user:1"), ping=rtt)

first, second = articles("news"), articles("news")
main = threading.main_thread().ident
step("cached", first=first, second=second, here=loads == [main])

cache.sync.delete("user:1")
step("delete", value=cache.sync.get("user:1", "gone"))

cache.sync.invalidate_tag("category:news")
step("invalidate_tag", again=articles("news"))

cache.sync.clear()
step("clear", stats=cache.sync.get_stats())

# The seed's un-awaited call shape as the program's last statement, and no close():
# it must still reach every other instance.
cache.invalidate_tag("final")
"""


async def test_flask_style_program_without_event_loop(
    make_cache: CacheFactory, server: RedisServer, tmp_path: Path
) -> None:
    ns = unique_namespace()
    observer = await make_cache(namespace=ns)
    observer_loads = 0

    @observer.cached(ttl=60, tags=["articles", "category:{category}"], key="articles:{category}")
    async def articles(category: str) -> list[str]:
        nonlocal observer_loads
        observer_loads += 1
        return [f"{category}-from-observer"]

    app = await Script.start(tmp_path, "flask_app", FLASK_APP, server.url, ns)

    step = await app.next_step()
    assert step["step"] == "set"
    assert step["value"] == {"name": "ada"}
    assert isinstance(step["ping"], float)
    assert 0 <= step["ping"] < 5
    assert await observer.get("user:1") == {"name": "ada"}  # in Redis; now in our L1 too
    await app.go()

    step = await app.next_step()
    assert step["step"] == "cached"
    assert step["first"] == step["second"] == ["news-from-flask-1"]  # loaded once, then a hit
    assert step["here"]  # the function ran in the calling (main) thread
    assert await articles("news") == ["news-from-flask-1"]  # in Redis, under its tags
    assert observer_loads == 0
    await app.go()

    step = await app.next_step()
    assert step == {"step": "delete", "value": "gone"}
    await eventually(lambda: is_gone(observer, "user:1"))  # dropped from our L1 by the bus
    await app.go()

    step = await app.next_step()
    assert step["step"] == "invalidate_tag"
    assert step["again"] == ["news-from-flask-2"]  # the script's own entry went (read-your-writes)

    async def observer_dropped_first_load() -> bool:
        # The script's second load, from Redis, or a load of ours: anything but the old one.
        return await articles("news") != ["news-from-flask-1"]

    await eventually(observer_dropped_first_load)
    await observer.set("keep:1", "v", tags=["misc"])
    await observer.set("final:1", "v", tags=["final"])
    assert await observer.get("keep:1") == "v"
    await app.go()

    step = await app.next_step()
    assert step["step"] == "clear"
    stats = step["stats"]
    for name in ("hits", "misses", "sets", "deletes", "tag_invalidations", "hit_rate", "entries"):
        assert name in stats, name
    assert stats["sets"] >= 3
    assert stats["deletes"] == 1
    assert stats["tag_invalidations"] == 1
    assert stats["redis_available"] is True
    await eventually(lambda: is_gone(observer, "keep:1"))
    # Set again after the clear, for the script's last statement to invalidate.
    await observer.set("final:1", "v", tags=["final"])
    assert await observer.get("final:1") == "v"
    await app.go()

    await app.finish()
    await eventually(lambda: is_gone(observer, "final:1"))


SEED_SCRIPT = """
import sys

from twotier import TwoTierCache

cache = TwoTierCache(redis_url=sys.argv[1], namespace=sys.argv[2], redis_timeout=0.5)
cache.invalidate_tag("prices")  # the seed's un-awaited call, the last statement; no close()
"""


async def test_plain_script_last_statement_invalidation_is_delivered_before_exit(
    make_cache: CacheFactory, server: RedisServer, tmp_path: Path
) -> None:
    """A script with no loop at all, whose only and last statement is the seed's
    `cache.invalidate_tag(...)`. Before the fix, the change went into the queue of
    a cache no loop ever ran, and died with the process."""
    ns = unique_namespace()
    observer = await make_cache(namespace=ns)
    await observer.set("price:1", 10, tags=["prices"])
    assert await observer.get("price:1") == 10

    script = await Script.start(tmp_path, "seed_script", SEED_SCRIPT, server.url, ns)
    await script.finish()
    await eventually(lambda: is_gone(observer, "price:1"))
    fresh = await make_cache(namespace=ns)
    assert await is_gone(fresh, "price:1")  # Redis has it, not only the bus


# -- thread-pool workers of an async service --------------------------------------


async def test_thread_pool_workers_share_the_async_cache(make_cache: CacheFactory) -> None:
    cache = await make_cache(namespace=unique_namespace())
    loop_thread = threading.get_ident()  # the test's loop runs the cache
    threads, keys, rounds = 8, 12, 3
    lock = threading.Lock()
    loads: Counter[int] = Counter()
    loaded_in: dict[int, set[int]] = defaultdict(set)
    callers: dict[int, set[int]] = defaultdict(set)

    @cache.sync.cached(ttl=60, tags=["items", "item:{item_id}"])
    def load_item(item_id: int) -> dict[str, int]:
        with lock:
            loads[item_id] += 1
            loaded_in[item_id].add(threading.get_ident())
        time.sleep(0.03)  # a database query: long enough for every thread to pile up
        return {"id": item_id, "square": item_id * item_id}

    barrier = threading.Barrier(threads, timeout=30)

    def worker(n: int) -> None:
        me = threading.get_ident()
        for item_id in range(keys):
            barrier.wait()  # every thread misses the same key at once
            with lock:
                callers[item_id].add(me)
            assert load_item(item_id) == {"id": item_id, "square": item_id * item_id}
        for r in range(rounds):
            for item_id in range(keys):
                assert load_item(item_id)["square"] == item_id * item_id  # hits
            for i in range(10):
                key = f"w{n}:{r}:{i}"
                cache.sync.set(key, {"n": n, "i": i}, tags=[f"worker:{n}"])
                assert cache.sync.get(key) == {"n": n, "i": i}
            cache.sync.delete(f"w{n}:{r}:0")
            assert cache.sync.get(f"w{n}:{r}:0", "gone") == "gone"
            cache.sync.invalidate_tag(f"worker:{n}")
            assert all(cache.sync.get(f"w{n}:{r}:{i}", "gone") == "gone" for i in range(10))

    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        work = [loop.run_in_executor(pool, worker, n) for n in range(threads)]
        # The loop stays free meanwhile: it is the one serving the threads' calls.
        assert await cache.get("absent", "free") == "free"
        await asyncio.wait_for(asyncio.gather(*work), 90)

    assert dict(loads) == dict.fromkeys(range(keys), 1)  # one load per key across threads
    for item_id in range(keys):
        (thread,) = loaded_in[item_id]
        assert thread != loop_thread  # not on the loop...
        assert thread in callers[item_id]  # ...but in a thread that called it
    assert await cache.get(load_item.key(3)) == {"id": 3, "square": 9}  # shared with async code


async def test_invalidate_tag_from_a_worker_thread_reaches_other_instances(
    make_cache: CacheFactory,
) -> None:
    """The seed's un-awaited `cache.invalidate_tag(...)` in a thread without a loop,
    while the cache runs on the main loop. Before the fix it was queued in the
    thread and never delivered: the other instance kept the entry for good."""
    ns = unique_namespace()
    service = await make_cache(namespace=ns)
    other = await make_cache(namespace=ns)
    await other.set("article:1", "old", tags=["articles"])
    assert await service.get("article:1") == "old"
    assert await other.get("article:1") == "old"

    def sync_view() -> None:  # a thread-pool view of a FastAPI app, say
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        service.invalidate_tag("articles")

    await asyncio.wait_for(asyncio.to_thread(sync_view), 30)
    assert await is_gone(service, "article:1")  # read-your-writes
    await eventually(lambda: is_gone(other, "article:1"))
    assert service.get_stats()["queued_ops_pending"] == 0


# -- a Celery-style worker process ---------------------------------------------------

CELERY_WORKER = """
import asyncio, json, sys, threading

from twotier import TwoTierCache

url, namespace, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = TwoTierCache(redis_url=url, namespace=namespace, redis_timeout=0.5)
loads = []


@cache.sync.cached(ttl=60, tags=["charge:{charge_id}"], key="charge:{charge_id}")
def get_charge(charge_id):
    loads.append(charge_id)
    return {"id": charge_id, "amount": 100 * charge_id}


def recompute_invoice(charge_id):  # the body of a Celery task
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise AssertionError("a Celery task runs without a loop")
    charge = get_charge(charge_id)
    assert get_charge(charge_id) == charge
    cache.sync.set(f"total:{charge_id}", charge["amount"] + 1, tags=["totals"])
    cache.invalidate_tag(f"invoice:{charge_id}")  # the seed's call shape
    return charge["amount"]


done = [recompute_invoice(charge_id) for charge_id in range(1, count + 1)]
loop_threads = [t.name for t in threading.enumerate() if t.name.startswith("twotier-")]
print(json.dumps({"done": done, "loads": loads, "loop_threads": len(loop_threads)}), flush=True)
"""


async def test_celery_style_worker_process(
    make_cache: CacheFactory, server: RedisServer, tmp_path: Path
) -> None:
    ns = unique_namespace()
    observer = await make_cache(namespace=ns)
    count = 5
    for i in range(1, count + 1):
        await observer.set(f"invoice:{i}:pdf", "old", tags=[f"invoice:{i}"])
        assert await observer.get(f"invoice:{i}:pdf") == "old"

    worker = await Script.start(tmp_path, "celery_worker", CELERY_WORKER, server.url, ns, "5")
    report = await worker.next_step()
    await worker.finish()  # exits on its own, without closing the cache

    assert report["done"] == [100 * i for i in range(1, count + 1)]
    assert report["loads"] == list(range(1, count + 1))  # once per charge
    assert report["loop_threads"] == 1  # one loop thread for all tasks, not one per call
    for i in range(1, count + 1):
        await eventually(lambda i=i: is_gone(observer, f"invoice:{i}:pdf"))  # type: ignore[misc]
        assert await observer.get(f"total:{i}") == 100 * i + 1


CELERY_PREFORK = """
import json, os, sys, threading

from twotier import TwoTierCache

cache = TwoTierCache(redis_url=sys.argv[1], namespace=sys.argv[2], redis_timeout=0.5)
cache.sync.set("parent", "ready")  # the parent used the cache before forking its pool

children = []
for i in range(2):
    pid = os.fork()
    if pid == 0:  # a pool process: its tasks use the cache it inherited
        threading.Timer(5, os._exit, (3,)).start()  # a hung child exits with status 3
        cache.sync.set(f"child:{i}", i)
        assert cache.sync.get("parent") == "ready"
        cache.invalidate_tag(f"group:{i}")
        os._exit(0)
    children.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]))
cache.sync.set("parent", "done")  # and the parent's cache still works
"""


async def test_celery_prefork_children_of_a_parent_that_used_the_cache(
    make_cache: CacheFactory, server: RedisServer, tmp_path: Path
) -> None:
    """A forked child inherits the cache's loop state but not its thread. Until
    acf51f1, `loop.is_running()` copied over fork made every cache.sync call in
    the child wait forever on a loop no thread runs."""
    ns = unique_namespace()
    observer = await make_cache(namespace=ns)
    for i in range(2):
        await observer.set(f"member:{i}", "old", tags=[f"group:{i}"])
        assert await observer.get(f"member:{i}") == "old"
    script = await Script.start(tmp_path, "prefork", CELERY_PREFORK, server.url, ns)
    codes = await script.next_step()
    await script.finish()
    assert codes == [0, 0]  # 3: the child hung; 1: it failed (its stderr is ours)
    for i in range(2):
        assert await observer.get(f"child:{i}") == i
        await eventually(lambda i=i: is_gone(observer, f"member:{i}"))  # type: ignore[misc]
    assert await observer.get("parent") == "done"


# -- the one-loop rule -----------------------------------------------------------------


async def test_sync_call_from_the_cache_own_loop_raises_at_once(make_cache: CacheFactory) -> None:
    cache = await make_cache(namespace=unique_namespace())
    await cache.set("k", 1, tags=["t"])

    @cache.sync.cached(ttl=60)
    def loader(n: int) -> int:
        return n

    calls: dict[str, Callable[[], object]] = {
        "sync.get": lambda: cache.sync.get("k"),
        "sync.set": lambda: cache.sync.set("k", 2),
        "sync.invalidate_tag": lambda: cache.sync.invalidate_tag("t"),
        "sync.get_stats": cache.sync.get_stats,
        "sync.cached": lambda: loader(1),
        "close_blocking": cache.close_blocking,
    }
    for name, call in calls.items():
        start = time.monotonic()
        with pytest.raises(EventLoopError):
            call()  # a deadlock here would hang the test's loop until the per-test timeout
        assert time.monotonic() - start < PROMPT, name
    # Nothing changed, nothing closed: the async API goes on working.
    assert await cache.get("k") == 1
    await cache.set("k", 3)
    assert await cache.get("k") == 3


async def test_second_running_loop_gets_event_loop_error(make_cache: CacheFactory) -> None:
    ns = unique_namespace()
    cache = await make_cache(namespace=ns)
    await cache.set("k", 1, tags=["t"])
    outcomes: dict[str, object] = {}

    async def invalidate() -> None:
        await cache.invalidate_tag("t")

    async def second_loop() -> None:
        ops: dict[str, Callable[[], Awaitable[object]]] = {
            "start": cache.start,
            "set": lambda: cache.set("k2", 2),
            "get of a miss": lambda: cache.get("absent"),
            "delete": lambda: cache.delete("k"),
            "clear": cache.clear,
            "invalidate_tag": invalidate,
            "ping": cache.ping,
        }
        for name, op in ops.items():
            start = time.monotonic()
            try:
                await op()
            except EventLoopError:
                outcomes[name] = time.monotonic() - start
            except BaseException as exc:
                outcomes[name] = repr(exc)
            else:
                outcomes[name] = "no error"
        # The blocking view works from any thread but the cache's loop thread,
        # another loop's included: it hands the call to the cache's loop.
        outcomes["sync.get"] = cache.sync.get("k")

    thread = threading.Thread(target=asyncio.run, args=(second_loop(),), daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join, 20)  # the cache's loop runs meanwhile
    assert not thread.is_alive(), f"the second loop hangs; so far: {outcomes}"

    sync_get = outcomes.pop("sync.get")
    assert all(isinstance(v, float) and v < PROMPT for v in outcomes.values()), outcomes
    assert sync_get == 1
    # None of the refused calls changed anything; the cache works on its own loop.
    assert await cache.get("k") == 1
    assert await cache.get("k2") is None
    other = await make_cache(namespace=ns)
    assert await other.get("k") == 1


def test_two_asyncio_runs_one_after_the_other(server: RedisServer) -> None:
    ns = unique_namespace()
    cache = TwoTierCache(redis_url=server.url, namespace=ns, redis_timeout=0.5)
    other = TwoTierCache(redis_url=server.url, namespace=ns, redis_timeout=0.5)  # on .sync
    try:

        async def first_run() -> Any:
            await cache.set("a", "first", tags=["t"])
            return await cache.get("a")

        assert asyncio.run(first_run()) == "first"

        async def second_run() -> list[Any]:
            # The cache moves to this loop: new connections, a live subscription.
            await cache.set("b", "second")
            await cache.set("c", "mine")
            assert await cache.get("c") == "mine"  # in L1
            other.sync.set("c", "theirs")  # another instance changes it

            async def theirs() -> bool:
                return await cache.get("c") == "theirs"

            took = await eventually(theirs)
            seen = [await cache.get("b"), took]
            await cache.close()
            return seen

        seen_b, took = asyncio.run(second_run())
        assert seen_b == "second"
        assert took < BUS_LATENCY
        assert other.sync.get("b") == "second"  # the second run's writes reached Redis
        assert other.sync.get("a") == "first"
    finally:
        other.close_blocking()
        asyncio.run(cache.close())  # idempotent


def test_second_asyncio_run_does_not_serve_the_first_run_l1(server: RedisServer) -> None:
    """An L1 hit never reaches the loop check: until acf51f1 the next loop was
    served L1 entries of the closed one, whose subscription had died with it."""
    ns = unique_namespace()
    cache = TwoTierCache(redis_url=server.url, namespace=ns, redis_timeout=0.5)
    other = TwoTierCache(redis_url=server.url, namespace=ns, redis_timeout=0.5)
    try:

        async def first_run() -> Any:
            await cache.set("a", "v1", tags=["t"])
            return await cache.get("a")

        assert asyncio.run(first_run()) == "v1"
        other.sync.set("a", "v2")  # no loop runs `cache`: nobody can tell it

        async def second_run() -> Any:
            try:
                return await cache.get("a")
            finally:
                await cache.close()

        assert asyncio.run(second_run()) == "v2"
    finally:
        other.close_blocking()
        asyncio.run(cache.close())  # idempotent
