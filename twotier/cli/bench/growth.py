"""`twotier bench`: how cost grows — L1 entries, tags per entry, subscribed instances,
value size — and the PNG plots of those curves (matplotlib, only if installed)."""

from __future__ import annotations

import gc
import random
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twotier import MsgpackSerializer, TwoTierCache

from . import peers
from .core import (
    AsyncCall,
    Context,
    Growth,
    calibrated_batches,
    per_call_latencies,
    percentile,
)
from .hits import _bytes_per_entry
from .proc import invalidation_cached

US = 1e6


def _kb(x: float) -> str:
    if x >= 1_000_000:
        return f"{x / 1_000_000:g}M"
    if x >= 1000:
        return f"{x / 1000:g}k"
    return f"{x:g}"


def _bytes(x: float) -> str:
    if x >= 1 << 20:
        return f"{x / (1 << 20):.1f}MB"
    if x >= 1 << 10:
        return f"{x / (1 << 10):.0f}kB"
    return f"{x:.0f}B"


def _median(samples: list[float]) -> float:
    return percentile(samples, 50)


# --- L1 entries -------------------------------------------------------------------------------


async def entries(ctx: Context) -> list[Growth]:
    levels = [1_000, 10_000, 100_000] if ctx.quick else [1_000, 10_000, 100_000, 1_000_000]
    draws = ctx.size(20_000, 100_000)
    lat: dict[str, list[float | None]] = {
        "twotier @cached": [],
        "dict wrapper": [],
        "cachetools TTLCache wrapper": [],
    }
    mem: dict[str, list[float | None]] = {
        "twotier (2 tags: user:{id}, users)": [],
        "cachetools TTLCache alone": [],
    }
    rng = random.Random(4)  # noqa: S311  # reproducible draws, not secrets
    for n in levels:
        ctx.log(f"  L1 entries: {n:,}")
        cache = TwoTierCache(redis_url=None, namespace=ctx.ns(f"ge{n}"), l1_maxsize=n)
        async with cache:
            fn = peers.user_function(cache)
            store = cache.local.store
            for i in range(n):
                store(fn.key(i), i * 2, b"", 300.0, (f"user:{i}", "users"))
            dict_call = peers.dict_wrapper()
            tools_call = peers.cachetools_wrapper(maxsize=n)
            for i in range(n):
                await dict_call(i)
                await tools_call(i)
            order = [rng.randrange(n) for _ in range(draws)]
            subjects: dict[str, AsyncCall] = {
                "twotier @cached": fn,
                "dict wrapper": dict_call,
                "cachetools TTLCache wrapper": tools_call,
            }
            samples = await calibrated_batches(subjects, order, max(3, ctx.repeat), 0.05)
            hits = cache.get_stats()["l1_hits"]
            if cache.get_stats()["loads"]:
                raise RuntimeError(f"L1 growth run missed L1 ({hits} hits)")
        for name in subjects:
            lat[name].append(_median(samples[name]) * US)
        del cache, fn, subjects, dict_call, tools_call
        gc.collect()
        memory = _memory_at(n) if n <= 100_000 or not ctx.quick else None
        mem["twotier (2 tags: user:{id}, users)"].append(memory[0] if memory else None)
        mem["cachetools TTLCache alone"].append(memory[1] if memory else None)
    return [
        Growth(
            "entries",
            "L1 hit latency vs L1 entries (random keys)",
            "L1 entries",
            "µs per hit (median)",
            [float(x) for x in levels],
            lat,
            xfmt=_kb,
            figure="entries",
            note="random access over all entries; cost grows with CPU cache misses",
        ),
        Growth(
            "entries-memory",
            "L1 memory per entry vs L1 entries",
            "L1 entries",
            "bytes per entry",
            [float(x) for x in levels],
            mem,
            xfmt=_kb,
            figure="entries",
        ),
    ]


def _l1_keys_and_values(n: int) -> tuple[list[str], list[int]]:
    """Keys shaped like the decorator's, and values, made before measuring."""
    keys = [f"twotier.cli.bench.peers.user_function.<locals>.user({i})" for i in range(n)]
    return keys, [i * 2 + 1_000_000 for i in range(n)]


def _l1_filler(
    keys: list[str], values: list[int], tags_of: Callable[[int], tuple[str, ...]]
) -> Callable[[], object]:
    """Fill a fresh L1 as the decorator does (`local.store`), entry i with tags_of(i)."""

    def fill() -> object:
        cache = TwoTierCache(redis_url=None, namespace="tbmem", l1_maxsize=len(keys))
        store = cache.local.store
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            store(key, value, b"", 300.0, tags_of(i))
        return cache

    return fill


def _memory_at(n: int) -> tuple[float, float]:
    from cachetools import TTLCache

    keys, values = _l1_keys_and_values(n)
    tags = [f"user:{i}" for i in range(n)]
    twotier_fill = _l1_filler(keys, values, lambda i: (tags[i], "users"))

    def ttl_fill() -> object:
        c: TTLCache[str, int] = TTLCache(maxsize=n, ttl=300)
        for k, v in zip(keys, values, strict=True):
            c[k] = v
        return c

    return _bytes_per_entry(n, twotier_fill), _bytes_per_entry(n, ttl_fill)


# --- tags per entry ---------------------------------------------------------------------------


async def tags(ctx: Context) -> list[Growth]:
    levels = [0, 2, 8, 16] if ctx.quick else [0, 1, 2, 4, 8, 16]
    keys = list(range(100))
    calls = ctx.size(150, 400)
    lat: dict[str, list[float | None]] = {
        "L1 hit (@cached)": [],
        "L2 hit (L1 miss, @cached)": [],
        "miss: read + loader + fill": [],
        "invalidate_tags(1 tag) round trip": [],
    }
    mem: dict[str, list[float | None]] = {"twotier L1, shared tags": []}
    for k in levels:
        ctx.log(f"  tags per entry: {k}")
        tag_names = tuple(f"g{j}" for j in range(k))
        ns = ctx.ns(f"gt{k}")
        async with (
            TwoTierCache(redis_url=ctx.url, namespace=ns) as writer,
            TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1) as reader,
        ):
            wfn = peers.user_function(writer, tags=tag_names)
            rfn = peers.user_function(reader, tags=tag_names)
            miss = await per_call_latencies(wfn, keys)  # each first call: miss, load, fill
            l1 = await calibrated_batches({"l1": wfn}, keys, max(3, ctx.repeat), 0.05)
            order = [keys[i % len(keys)] for i in range(calls)]
            await per_call_latencies(rfn, keys)
            l2 = await per_call_latencies(rfn, order)
            inv: list[float] = []
            if k:
                for _ in range(ctx.size(30, 100)):
                    t0 = time.perf_counter()
                    await writer.invalidate_tags(tag_names[:1])
                    inv.append(time.perf_counter() - t0)
        lat["L1 hit (@cached)"].append(_median(l1["l1"]) * US)
        lat["L2 hit (L1 miss, @cached)"].append(_median(l2) * US)
        lat["miss: read + loader + fill"].append(_median(miss) * US)
        lat["invalidate_tags(1 tag) round trip"].append(_median(inv) * US if inv else None)
        mem["twotier L1, shared tags"].append(_tag_memory(ctx.size(10_000, 50_000), tag_names))
    return [
        Growth(
            "tags",
            "latency vs tags per entry",
            "tags per entry",
            "µs (median)",
            [float(x) for x in levels],
            lat,
            logx=False,
            figure="tags",
        ),
        Growth(
            "tags-memory",
            "L1 memory per entry vs tags per entry",
            "tags per entry",
            "bytes per entry",
            [float(x) for x in levels],
            mem,
            logx=False,
            figure="tags",
        ),
    ]


def _tag_memory(n: int, tag_names: tuple[str, ...]) -> float:
    keys, values = _l1_keys_and_values(n)
    return _bytes_per_entry(n, _l1_filler(keys, values, lambda _: tag_names))


# --- subscribed instances ---------------------------------------------------------------------


async def instances(ctx: Context) -> list[Growth]:
    levels = [1, 2, 4] if ctx.quick else [1, 2, 4, 8, 16]
    events = ctx.size(40, 150)
    lines: dict[str, list[float | None]] = {
        "twotier p50": [],
        "twotier p99": [],
        "raw PUBLISH p50": [],
        "raw PUBLISH p99": [],
    }
    for n in levels:
        ctx.log(f"  subscribed instances: {n}")
        result = await invalidation_cached(ctx, n, events)
        for mode, label in (("twotier", "twotier"), ("raw", "raw PUBLISH")):
            each, _last = result[mode]
            lines[f"{label} p50"].append(percentile(each, 50) * 1e3)
            lines[f"{label} p99"].append(percentile(each, 99) * 1e3)
    return [
        Growth(
            "instances",
            "invalidation latency vs subscribed instances (processes)",
            "instances subscribed (one process each)",
            "ms to reach each instance",
            [float(x) for x in levels],
            lines,
            figure="instances",
            note="every instance is a separate process on this machine's cores",
        )
    ]


# --- value size -------------------------------------------------------------------------------


_ROW_SIZER = MsgpackSerializer()
CITIES = ("Amsterdam", "Berlin", "Lisbon", "Madrid", "Oslo", "Paris", "Rome", "Vienna")


def rows_value(size: int) -> list[dict[str, Any]]:
    """ERP-like rows whose msgpack encoding is about *size* bytes (compressible, like real data)."""
    rows: list[dict[str, Any]] = []
    i = 0
    encoded = 0
    while True:
        row = {
            "id": i,
            "name": f"customer {i:06d}",
            "city": CITIES[i % 8],
            "balance": round(i * 1.25, 2),
            "active": i % 3 == 0,
        }
        rows.append(row)
        encoded += len(_ROW_SIZER.dumps(row)) - 1
        i += 1
        if encoded >= size:
            return rows


async def value_size(ctx: Context) -> list[Growth]:
    sizes = [100, 1_000, 10_000, 100_000, 1_000_000]
    serializer = MsgpackSerializer()
    lines: dict[str, list[float | None]] = {
        "redis-py GET (floor)": [],
        "redis-py GET + msgpack decode": [],
        "twotier get, L1 miss → Redis hit": [],
        "twotier get, L1 hit (copy_on_read)": [],
        "twotier get, L1 hit (copy_on_read=False)": [],
        "GET zlib-1 payload + decompress": [],
    }
    extra: dict[str, list[float | None]] = {"zlib-1 ratio": [], "zlib-1 compress µs": []}
    actual: list[float] = []
    raw = ctx.client()
    try:
        for size in sizes:
            ctx.log(f"  value size: {_bytes(size)}")
            value = rows_value(size)
            payload = serializer.dumps(value)
            actual.append(float(len(payload)))
            packed = zlib.compress(payload, 1)
            ns = ctx.ns(f"gv{size}")
            n = max(16, min(ctx.size(150, 400), ctx.size(20_000_000, 60_000_000) // len(payload)))
            n += n % 2  # alternate v0, v1 across rounds too: the L1 of size 1 never hits
            order = [j % 2 for j in range(n)]
            for j in (0, 1):
                await raw.set(f"{ns}:raw{j}", payload)
                await raw.set(f"{ns}:z{j}", packed)

            async def raw_get(j: int, ns: str = ns) -> object:
                return await raw.get(f"{ns}:raw{j}")

            async def raw_decode(j: int, ns: str = ns) -> object:
                data = await raw.get(f"{ns}:raw{j}")
                return serializer.loads(data if isinstance(data, bytes) else b"")

            async def zget(j: int, ns: str = ns) -> object:
                data = await raw.get(f"{ns}:z{j}")
                return zlib.decompress(data if isinstance(data, bytes) else b"")

            async with (
                TwoTierCache(redis_url=ctx.url, namespace=ns, redis_timeout=2.0) as w,
                TwoTierCache(redis_url=ctx.url, namespace=ns, l1_maxsize=1, redis_timeout=2.0) as r,
                TwoTierCache(
                    redis_url=ctx.url,
                    namespace=ns,
                    l1_maxsize=4,
                    redis_timeout=2.0,
                    copy_on_read=False,
                ) as shared,
            ):
                for j in (0, 1):
                    await w.set(f"v{j}", value)

                async def l2(j: int, r: TwoTierCache = r) -> object:
                    return await r.get(f"v{j}")

                async def l1(j: int, w: TwoTierCache = w) -> object:
                    return await w.get(f"v{j}")

                async def l1_shared(j: int, s: TwoTierCache = shared) -> object:
                    return await s.get(f"v{j}")

                subjects: dict[str, AsyncCall] = {
                    "redis-py GET (floor)": raw_get,
                    "redis-py GET + msgpack decode": raw_decode,
                    "twotier get, L1 miss → Redis hit": l2,
                    "twotier get, L1 hit (copy_on_read)": l1,
                    "twotier get, L1 hit (copy_on_read=False)": l1_shared,
                    "GET zlib-1 payload + decompress": zget,
                }
                samples: dict[str, list[float]] = {name: [] for name in subjects}
                for call in subjects.values():
                    await per_call_latencies(call, [0, 1, 0, 1])
                for _ in range(max(1, ctx.repeat // 2)):
                    for name, call in subjects.items():
                        gc.collect()
                        samples[name] += await per_call_latencies(call, order)
                if r.get_stats()["l1_hits"]:
                    raise RuntimeError("value-size L2 reader hit L1")
            for name in subjects:
                lines[name].append(_median(samples[name]) * US)
            extra["zlib-1 ratio"].append(len(payload) / len(packed))
            extra["zlib-1 compress µs"].append(_time(_compressor(payload)) * US)
    finally:
        await raw.aclose()
    return [
        Growth(
            "size",
            "read latency vs value size (msgpack'd ERP-like rows)",
            "payload bytes",
            "µs per read (median)",
            actual,
            lines,
            xfmt=_bytes,
            logy=True,
            figure="size",
            note="zlib level 1 compresses these rows "
            + ", ".join(
                f"{_bytes(x)}: {y or 0:.1f}×"
                for x, y in zip(actual, extra["zlib-1 ratio"], strict=True)
            )
            + "; compress µs: "
            + ", ".join(f"{y or 0:.0f}" for y in extra["zlib-1 compress µs"]),
        ),
    ]


def _compressor(payload: bytes) -> Callable[[], object]:
    return lambda: zlib.compress(payload, 1)


def _time(op: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - t0)
    return best


# --- plots --------------------------------------------------------------------------------------


def plot(growths: list[Growth], directory: Path) -> list[Path]:
    """One PNG per figure; each Growth is a panel. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[Growth]] = {}
    for g in growths:
        figures.setdefault(g.figure, []).append(g)
    written: list[Path] = []
    for name, panels in figures.items():
        fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
        for ax, g in zip(axes[0], panels, strict=True):
            for label, ys in g.lines.items():
                pts = [(x, y) for x, y in zip(g.xs, ys, strict=True) if y is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            if g.logx:
                ax.set_xscale("log")
            if g.logy:
                ax.set_yscale("log")
            ax.set_xticks(g.xs, [g.xfmt(x) for x in g.xs])
            ax.minorticks_off()
            ax.set_title(g.title, fontsize=10)
            ax.set_xlabel(g.xlabel)
            ax.set_ylabel(g.ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / f"growth-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
