"""`twotier bench`: the hit paths (L1, L2, L2 under concurrency), L1 memory, warmup."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from twotier import MsgpackSerializer, TwoTierCache
from twotier._redis import Layout

from . import peers
from .core import AsyncCall, Context, Series, calibrated_batches, per_call_latencies
from .core import throughput as measure_throughput

PAYLOAD = MsgpackSerializer()


async def _closing(subjects: list[peers.Subject]) -> None:
    for s in subjects:
        await s.close()


async def _hits(
    subjects: dict[str, AsyncCall],
    keys: list[int],
    repeat: int,
    budget: float,
    to_close: list[peers.Subject],
) -> dict[str, list[float]]:
    """Fill every subject (each key twice: every later call is a hit), then time
    them in calibrated batches; the peers in *to_close* are closed after."""
    try:
        for call in subjects.values():
            for i in keys:
                await call(i)
                await call(i)
        return await calibrated_batches(subjects, keys, repeat, budget)
    finally:
        await _closing(to_close)


# --- L1 hit -------------------------------------------------------------------------


async def l1_hit(ctx: Context) -> list[Series]:
    """`@cache.cached` hits served from L1, against in-process floors and peers' hits."""
    keys = list(range(1000))
    budget = 0.05 if ctx.quick else 0.15
    subjects: dict[str, AsyncCall] = {
        "dict wrapper": peers.dict_wrapper(),
        "cachetools TTLCache wrapper": peers.cachetools_wrapper(),
    }
    roles = {"dict wrapper": "floor", "cachetools TTLCache wrapper": "floor"}
    to_close: list[peers.Subject] = []
    cache = TwoTierCache(redis_url=ctx.url, namespace=ctx.ns("l1"), l1_maxsize=10_000)
    async with cache:
        fn = peers.user_function(cache)
        subjects["twotier @cached (1 int arg, 2 tags)"] = fn
        roles["twotier @cached (1 int arg, 2 tags)"] = "twotier"
        key_of = {i: fn.key(i) for i in keys}
        get = cache.get

        async def by_key(i: int) -> object:
            return await get(key_of[i])

        subjects["twotier cache.get(key) (no key building)"] = by_key
        roles["twotier cache.get(key) (no key building)"] = "diag"
        for name, peer in (
            ("cashews @cache (mem://, same 2 tags)", peers.cashews_subject("mem://", ctx.ns("c1"))),
            (
                "cashews @cache (mem://, no tags)",
                peers.cashews_subject("mem://", ctx.ns("c2"), tags=False),
            ),
            (
                "cashews client_side=True (Redis + local)",
                peers.cashews_subject(ctx.url, ctx.ns("c3"), client_side=True),
            ),
            ("aiocache @cached (memory)", peers.aiocache_subject(None, ctx.ns("a1"))),
        ):
            if peer is not None:
                subjects[name] = peer.call
                roles[name] = "peer"
                to_close.append(peer)
        samples = await _hits(subjects, keys, ctx.repeat, budget, to_close)
        stats = cache.get_stats()
    out = [Series("l1", name, roles[name], "s", samples[name]) for name in subjects]
    out[2].note = (
        f"L1 hits {stats['l1_hits']:,}, L2 hits {stats['l2_hits']:,}, "
        f"loads {stats['loads']:,} during the run"
    )
    return out


# --- L1 hit of what an API returns -----------------------------------------------------


def api_row(i: int) -> dict[str, Any]:
    """A row as an ERP endpoint returns it: 10 fields of JSON-ish scalars."""
    return {
        "id": i,
        "sku": f"SKU-{i:06d}",
        "name": f"Article {i}",
        "category": "news",
        "price": 19.9 + i,
        "stock": 40 + i % 7,
        "active": True,
        "discount": None,
        "updated_at": "2026-12-05T17:00:00Z",
        "supplier_id": 1000 + i % 13,
    }


def api_rows(i: int) -> list[dict[str, Any]]:
    """A page of 20 such rows."""
    return [api_row(i * 20 + j) for j in range(20)]


def _rows_function(cache: TwoTierCache, make: Callable[[int], Any]) -> AsyncCall:
    """`make`, decorated with two tags and the default key (as `l1`'s function)."""

    @cache.cached(ttl=300, tags=["rows", "row:{i}"])
    async def load(i: int) -> Any:
        return make(i)

    return load


async def l1_rows(ctx: Context) -> list[Series]:
    """L1 hits of realistic values with copy-on-read (the default): a dict of 10
    fields and a list of 20 of them, through `@cached` with two tags, beside
    cashews' hit of the same values (mem://, same tags) and a dict lookup that
    hands out the stored object (no copy: the floor). Issue 20, item 7."""
    keys = list(range(200))
    budget = 0.05 if ctx.quick else 0.15
    subjects: dict[str, AsyncCall] = {}
    roles: dict[str, str] = {}
    to_close: list[peers.Subject] = []
    # One instance per value shape: the two functions share a qualname, so a key.
    dicts = TwoTierCache(redis_url=ctx.url, namespace=ctx.ns("rows1"), l1_maxsize=10_000)
    pages = TwoTierCache(redis_url=ctx.url, namespace=ctx.ns("rows20"), l1_maxsize=10_000)
    async with dicts, pages:
        shapes = (("10-field dict", api_row, dicts), ("20 rows of 10 fields", api_rows, pages))
        for label, make, cache in shapes:
            store: dict[int, Any] = {}

            async def floor(i: int, store: dict[int, Any] = store, make: Any = make) -> Any:
                try:
                    return store[i]
                except KeyError:
                    value = store[i] = make(i)
                    return value

            subjects[f"dict wrapper, {label} (shared, no copy)"] = floor
            roles[f"dict wrapper, {label} (shared, no copy)"] = "floor"

            subjects[f"twotier @cached, {label}, copy on read"] = _rows_function(cache, make)
            roles[f"twotier @cached, {label}, copy on read"] = "twotier"
            peer = peers.cashews_subject("mem://", ctx.ns(f"cr{len(make(0))}"), value=make)
            if peer is not None:
                subjects[f"cashews @cache (mem://, 2 tags), {label}"] = peer.call
                roles[f"cashews @cache (mem://, 2 tags), {label}"] = "peer"
                to_close.append(peer)
        samples = await _hits(subjects, keys, ctx.repeat, budget, to_close)
        stats = dicts.get_stats()
    out = [Series("l1-rows", name, roles[name], "s", samples[name]) for name in subjects]
    out[1].note = f"L1 hits {stats['l1_hits']:,}, loads {stats['loads']:,} during the run"
    return out


# --- L2 hit, one caller -------------------------------------------------------------------


async def filled_twotier(ctx: Context, namespace: str, keys: list[int]) -> None:
    """Write every key through a writer instance, so readers find them in Redis."""
    async with TwoTierCache(redis_url=ctx.url, namespace=namespace) as writer:
        fn = peers.user_function(writer)
        for i in keys:
            await fn(i)


async def seeded(raw: Any, prefix: str, keys: list[int]) -> dict[int, str]:
    """The raw floor's names for *keys*, each set to the payload twotier stores."""
    names = {i: f"{prefix}:user:{i}" for i in keys}
    for i in keys:
        await raw.set(names[i], PAYLOAD.dumps(i * 2))
    return names


Subjects = dict[str, tuple[str, AsyncCall]]  # name → (role, call)


async def latency_rounds(
    subjects: Subjects, keys: list[int], n: int, repeat: int
) -> dict[str, list[float]]:
    """Each call timed: every subject warmed over *keys* (fills peers, opens
    connections), then *repeat* rounds of *n* calls, subjects interleaved."""
    for _role, call in subjects.values():
        for i in keys:
            await call(i)
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    order = [keys[j % len(keys)] for j in range(n)]
    for _ in range(repeat):
        for name, (_role, call) in subjects.items():
            gc.collect()
            samples[name] += await per_call_latencies(call, order)
    return samples


async def throughput_rounds(
    subjects: Subjects, tasks: int, per_task: int, per_key: int, repeat: int
) -> dict[str, list[float]]:
    """Operations per second of *tasks* concurrent tasks: every subject warmed
    (its connections opened), then *repeat* rounds, subjects interleaved."""
    for _role, call in subjects.values():
        await measure_throughput(call, tasks, per_key, per_key)
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(repeat):
        for name, (_role, call) in subjects.items():
            samples[name].append(await measure_throughput(call, tasks, per_task, per_key))
    return samples


def rows(
    scenario: str, subjects: Subjects, samples: dict[str, list[float]], unit: str
) -> list[Series]:
    better = "higher" if unit.endswith("/s") else "lower"
    return [
        Series(scenario, name, role, unit, samples[name], better=better)
        for name, (role, _call) in subjects.items()
    ]


async def l2_hit(ctx: Context) -> list[Series]:
    """L1 miss, Redis hit. A reader with `l1_maxsize=1` cycling over 200 keys never hits
    L1 (each store evicts the previous entry), so every call is one L2 read."""
    keys = list(range(200))
    n = ctx.size(300, 1000)
    ns = ctx.ns("l2")
    await filled_twotier(ctx, ns, keys)
    raw = ctx.client()
    raw_timeout = ctx.client(socket_timeout=0.05)
    raw_keys = await seeded(raw, ctx.ns("r"), keys)
    reader = TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1)
    getter = TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1)
    to_close: list[peers.Subject] = []
    async with reader, getter:
        fn = peers.user_function(reader)
        get_fn = peers.user_function(getter)
        key_of = {i: get_fn.key(i) for i in keys}

        async def raw_get(i: int) -> object:
            return await raw.get(raw_keys[i])

        async def raw_get_timeout(i: int) -> object:
            return await raw_timeout.get(raw_keys[i])

        async def by_get(i: int) -> object:
            return await getter.get(key_of[i])

        subjects: Subjects = {
            "redis-py GET": ("floor", raw_get),
            "redis-py GET, socket_timeout=0.05": ("diag", raw_get_timeout),
            "twotier @cached, L1 miss → Redis hit": ("twotier", fn),
            "twotier cache.get, L1 miss → Redis hit": ("twotier", by_get),
        }
        for name, peer in (
            ("cashews @cache (redis://, 2 tags)", peers.cashews_subject(ctx.url, ctx.ns("c4"))),
            ("aiocache @cached (Redis)", peers.aiocache_subject(ctx.url, ctx.ns("a2"))),
        ):
            if peer is not None:
                subjects[name] = ("peer", peer.call)
                to_close.append(peer)
        try:
            samples = await latency_rounds(subjects, keys, n, ctx.repeat)
            stats, gstats = reader.get_stats(), getter.get_stats()
        finally:
            await _closing(to_close)
            await raw.aclose()
            await raw_timeout.aclose()
    out = rows("l2", subjects, samples, "s")
    # By position in `subjects` (the peers, when installed, come after): the
    # notes once went to the rows two places on, and without the peers to none.
    by_cached, by_get_row = out[2], out[3]
    by_cached.note = (
        f"reader: L1 hits {stats['l1_hits']}, L2 hits {stats['l2_hits']:,}, loads {stats['loads']}"
    )
    by_get_row.note = f"getter: L1 hits {gstats['l1_hits']}, L2 hits {gstats['l2_hits']:,}"
    return out


async def l2_concurrent(ctx: Context) -> list[Series]:
    """Throughput of L2 hits with 50 concurrent tasks, each cycling over its own 4 keys."""
    tasks, per_key = 50, 4
    keys = list(range(tasks * per_key))
    per_task = ctx.size(40, 200)
    ns = ctx.ns("l2c")
    await filled_twotier(ctx, ns, keys)
    raw = ctx.client()
    raw_keys = await seeded(raw, ctx.ns("rc"), keys)
    reader = TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1)
    to_close: list[peers.Subject] = []
    async with reader:
        fn = peers.user_function(reader)

        async def raw_get(i: int) -> object:
            return await raw.get(raw_keys[i])

        subjects: Subjects = {
            "redis-py GET, 50 tasks": ("floor", raw_get),
            "twotier @cached, 50 tasks": ("twotier", fn),
        }
        for name, peer in (
            ("cashews @cache (redis://), 50 tasks", peers.cashews_subject(ctx.url, ctx.ns("c5"))),
            ("aiocache @cached (Redis), 50 tasks", peers.aiocache_subject(ctx.url, ctx.ns("a3"))),
        ):
            if peer is not None:
                subjects[name] = ("peer", peer.call)
                to_close.append(peer)
        try:
            samples = await throughput_rounds(subjects, tasks, per_task, per_key, ctx.repeat)
            stats = reader.get_stats()
        finally:
            await _closing(to_close)
            await raw.aclose()
    out = rows("l2c", subjects, samples, "ops/s")
    out[1].note = (
        f"L1 hits {stats['l1_hits']:,}, L2 hits {stats['l2_hits']:,}, "
        f"joined {stats['joined_loads']}, loads {stats['loads']}"
    )
    return out


# --- L1 memory ----------------------------------------------------------------------------


def _bytes_per_entry(n: int, fill: Callable[[], object]) -> float:
    """tracemalloc growth of *fill()*, per entry; keys, values and tags were made before."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fill()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / n


def l1_memory_rows(n: int) -> dict[str, float]:
    """Bytes per entry on top of key and value, for twotier's L1 and bare containers."""
    from cachetools import TTLCache

    keys = [f"twotier.cli.bench.peers.user_function.<locals>.user({i})" for i in range(n)]
    values = [i * 2 + 1_000_000 for i in range(n)]  # distinct ints, made before measuring
    own_tags = [f"user:{i}" for i in range(n)]
    group_tags = [f"org:{i % 100}" for i in range(100)]

    def dict_fill() -> object:
        d = {}
        for k, v in zip(keys, values, strict=True):
            d[k] = v
        return d

    def ttl_fill() -> object:
        c: TTLCache[str, int] = TTLCache(maxsize=n, ttl=300)
        for k, v in zip(keys, values, strict=True):
            c[k] = v
        return c

    def twotier_fill(tags: Callable[[int], tuple[str, ...]]) -> Callable[[], object]:
        def fill() -> object:
            cache = TwoTierCache(redis_url=None, namespace="tbmem", l1_maxsize=n)
            store = cache.local.store
            for i in range(n):
                store(keys[i], values[i], b"", 300.0, tags(i))
            return cache

        return fill

    # The tuples of tags exist per entry in a real store too, but are built by the
    # decorator from the templates before the store; build them inside the fill.
    return {
        "dict": _bytes_per_entry(n, dict_fill),
        "TTLCache": _bytes_per_entry(n, ttl_fill),
        "twotier 0 tags": _bytes_per_entry(n, twotier_fill(lambda i: ())),
        "twotier 2 tags (users, user:{id})": _bytes_per_entry(
            n, twotier_fill(lambda i: (own_tags[i], "users"))
        ),
        "twotier 2 shared tags (users, org:{id%100})": _bytes_per_entry(
            n, twotier_fill(lambda i: (group_tags[i % 100], "users"))
        ),
    }


async def l1_memory(ctx: Context) -> list[Series]:
    n = ctx.size(20_000, 100_000)
    runs = [l1_memory_rows(n) for _ in range(min(ctx.repeat, 3))]
    roles = {"dict": "diag", "TTLCache": "floor"}
    names = {"dict": "dict (key → value)", "TTLCache": "cachetools TTLCache alone"}
    out = []
    for name in runs[0]:
        out.append(
            Series(
                "memory",
                names.get(name, name),
                roles.get(name, "twotier"),
                "B/entry",
                [r[name] for r in runs],
            )
        )
    out[3].note = (
        f"{n:,} entries; keys, values and tag strings made before measuring "
        "(tracemalloc); per-entry tag strings cost their own size on top"
    )
    out[2], out[3] = out[3], out[2]  # the decorator's tags first: it is the headline row
    return out


# --- warmup ---------------------------------------------------------------------------------


async def _timed(op: Callable[[], Awaitable[object]], n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    await op()
    return n / (time.perf_counter() - t0)


async def _entries_in_redis(ctx: Context, namespace: str) -> int:
    client = ctx.client()
    try:
        pattern = Layout(namespace).entry_pattern
        return sum([1 async for _ in client.scan_iter(match=pattern, count=1000)])
    finally:
        await client.aclose()


async def warmup(ctx: Context) -> list[Series]:
    """`warmup()` of fresh keys, counted as keys that actually reached Redis per second."""
    n = ctx.size(2_000, 10_000)
    keys = [f"item:{i}" for i in range(n)]
    raw = ctx.client()
    payload = PAYLOAD.dumps(12345)
    variants = {  # label: (concurrency, redis_timeout or None for the default)
        "tt": (16, None),
        "tt64": (64, 1.0),
    }
    samples: dict[str, list[float]] = {"set": [], "get": [], **{k: [] for k in variants}}
    stored: dict[str, list[int]] = {k: [] for k in variants}
    errors: dict[str, int] = dict.fromkeys(variants, 0)

    async def loader(key: str) -> int:
        return len(key)

    async def pipelined(prefix: str, write: bool) -> None:
        for start in range(0, n, 1000):
            pipe = raw.pipeline(transaction=False)
            for k in keys[start : start + 1000]:
                if write:
                    pipe.set(prefix + k, payload, ex=300)
                else:
                    pipe.get(prefix + k)
            await pipe.execute()

    try:
        for r in range(min(ctx.repeat, 3)):
            prefix = ctx.ns(f"wr{r}") + ":"
            samples["set"].append(await _timed(partial(pipelined, prefix, True), n))
            samples["get"].append(await _timed(partial(pipelined, prefix, False), n))
            for label, (conc, timeout) in variants.items():
                ns = ctx.ns(f"w{label}{r}")
                cache = (
                    TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=n)
                    if timeout is None
                    else TwoTierCache(
                        redis_url=ctx.url, namespace=ns, l1_maxsize=n, redis_timeout=timeout
                    )
                )
                async with cache:
                    gc.collect()
                    t0 = time.perf_counter()
                    await cache.warmup(keys, loader, concurrency=conc)
                    elapsed = time.perf_counter() - t0
                    errors[label] += cache.get_stats()["l2_errors"]
                in_redis = await _entries_in_redis(ctx, ns)
                stored[label].append(in_redis)
                samples[label].append(in_redis / elapsed)
    finally:
        await raw.aclose()

    def note(label: str) -> str:
        return (
            f"entries found in Redis afterwards: {min(stored[label]):,}–"
            f"{max(stored[label]):,} of {n:,}; L2 errors (timeouts) {errors[label]}"
        )

    return [
        Series(
            "warmup",
            f"redis-py pipelined GET ({n:,} keys, 1000/batch)",
            "floor",
            "keys/s",
            samples["get"],
            better="higher",
        ),
        Series(
            "warmup", "redis-py pipelined SET EX", "diag", "keys/s", samples["set"], better="higher"
        ),
        Series(
            "warmup",
            f"twotier warmup({n:,} keys), defaults",
            "twotier",
            "keys/s",
            samples["tt"],
            better="higher",
            note=note("tt"),
        ),
        Series(
            "warmup",
            "twotier warmup, concurrency=64, redis_timeout=1 s",
            "diag",
            "keys/s",
            samples["tt64"],
            better="higher",
            note=note("tt64"),
        ),
    ]
