"""The observer seam (twotier/_events.py) on memory-mode caches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from twotier import TwoTierCache
from twotier._events import BaseObserver, Read, key_digest


class Recorder(BaseObserver):
    def __init__(self, traces: bool = False) -> None:
        self.traces = traces
        self.events: list[tuple[Any, ...]] = []
        self.spans: list[tuple[str, str | None, bool | None, tuple[str, ...]]] = []

    def l2_read(self, seconds: float, outcome: str) -> None:
        self.events.append(("l2_read", outcome))

    def loaded(self, seconds: float, ok: bool) -> None:
        assert seconds >= 0
        self.events.append(("loaded", ok))

    def lease_waited(self, seconds: float) -> None:
        self.events.append(("lease_waited",))

    def invalidation_received(self, kind: str, lag: float | None) -> None:
        self.events.append(("invalidation", kind, lag))

    def resynced(self, reason: str) -> None:
        self.events.append(("resynced", reason))

    def breaker_changed(self, state: str) -> None:
        self.events.append(("breaker", state))

    @contextlib.contextmanager
    def span(self, name: str, read: Read | None) -> Iterator[None]:
        yield
        if read is None:
            self.spans.append((name, None, None, ()))
        else:
            self.spans.append((name, read.tier, read.hit, read.tags))


def ns() -> str:
    return f"ev{uuid.uuid4().hex[:8]}"


async def test_loads_and_l2_reads_are_reported() -> None:
    recorder = Recorder()
    async with TwoTierCache(namespace=ns(), observers=[recorder]) as cache:

        @cache.cached(ttl=60)
        async def double(x: int) -> int:
            return 2 * x

        @cache.cached(ttl=60)
        async def broken(x: int) -> int:
            raise RuntimeError("database down")

        assert await double(2) == 4
        assert await double(2) == 4  # an L1 hit: no event at all
        with pytest.raises(RuntimeError):
            await broken(1)
    # memory mode's stand-in for L2 always misses
    assert recorder.events == [
        ("l2_read", "miss"),
        ("loaded", True),
        ("l2_read", "miss"),
        ("loaded", False),
    ]


async def test_an_observer_that_raises_never_breaks_a_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(BaseObserver):
        traces = True

        def loaded(self, seconds: float, ok: bool) -> None:
            raise ValueError("observer bug")

        def span(self, name: str, read: Read | None) -> contextlib.AbstractContextManager[object]:
            raise ValueError("span bug")

    class Swallowing(BaseObserver):
        """A span whose __exit__ says True must not swallow the loader's error."""

        traces = True

        def span(self, name: str, read: Read | None) -> contextlib.AbstractContextManager[object]:
            return contextlib.suppress(Exception)

    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="twotier")
    async with TwoTierCache(namespace=ns(), observers=[Broken(), Swallowing(), recorder]) as cache:

        @cache.cached(ttl=60)
        async def value(x: int) -> int:
            return x

        @cache.cached(ttl=60)
        async def failing(x: int) -> int:
            raise KeyError(x)

        for i in range(5):
            assert await value(i) == i
        with pytest.raises(KeyError):
            await failing(1)
        await cache.set("k", 1)
        assert await cache.get("k") == 1
    assert recorder.events.count(("loaded", True)) == 5  # the others still hear
    failures = [r for r in caplog.records if "observer" in r.getMessage()]
    assert len(failures) == 2  # once for `loaded`, once for `span`, not per call


async def test_invalidations_received_carry_the_lag_when_the_message_has_a_send_time() -> None:
    recorder = Recorder()
    namespace = ns()
    async with (
        TwoTierCache(namespace=namespace) as writer,
        TwoTierCache(namespace=namespace, observers=[recorder]) as reader,
    ):
        await writer.invalidate_tag("articles")
        await writer.delete("k")
        assert recorder.events == [("invalidation", "t", None), ("invalidation", "k", None)]
        # The next protocol's messages carry the sender's wall-clock send time.
        reader.events.invalidation_received(SimpleNamespace(kind="t", sent_at=time.time() - 0.25))
        kind, lag = recorder.events[-1][1:]
        assert kind == "t"
        assert 0.25 <= lag < 5


async def test_spans_say_which_tier_answered() -> None:
    recorder = Recorder(traces=True)
    async with TwoTierCache(namespace=ns(), observers=[recorder]) as cache:

        @cache.cached(ttl=60, tags=["articles", "category:{category}"])
        async def articles(category: str) -> list[str]:
            return [category]

        assert await articles("news") == ["news"]
        assert await articles("news") == ["news"]
        assert await cache.get("absent", "dflt") == "dflt"
        await cache.set("k", None)
        assert await cache.get("k", "dflt") is None  # a cached None is a hit
    tags = ("articles", "category:news")
    assert recorder.spans == [
        ("twotier.load", None, None, ()),
        ("twotier.cached", "loader", False, tags),
        ("twotier.cached", "l1", True, tags),
        ("twotier.get", "none", False, ()),
        ("twotier.get", "l1", True, ()),
    ]


async def test_a_caller_that_joined_another_load_is_told_apart() -> None:
    recorder = Recorder(traces=True)
    release = asyncio.Event()
    async with TwoTierCache(namespace=ns(), observers=[recorder]) as cache:

        @cache.cached(ttl=60)
        async def slow(x: int) -> int:
            await release.wait()
            return x

        first = asyncio.create_task(slow(1))
        second = asyncio.create_task(slow(1))
        await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(first, second) == [1, 1]
    tiers = sorted(s[1] for s in recorder.spans if s[0] == "twotier.cached")
    assert tiers == ["joined", "loader"]


async def test_observers_can_be_added_to_a_running_cache() -> None:
    recorder = Recorder(traces=True)
    async with TwoTierCache(namespace=ns()) as cache:

        @cache.cached(ttl=60)
        async def f(x: int) -> int:
            return x

        await f(1)
        assert not cache.events.tracing
        cache.events.add(recorder)
        assert cache.events.tracing
        await f(1)
        cache.events.remove(recorder)
        await f(1)
    assert [s[1] for s in recorder.spans] == ["l1"]


def test_the_key_digest_does_not_show_the_key() -> None:
    digest = key_digest("customer:alice@example.com")
    assert len(digest) == 16
    assert "alice" not in digest
    assert digest == key_digest("customer:alice@example.com")


def test_the_core_never_imports_the_exporters() -> None:
    import subprocess
    import sys

    # (redis-py itself imports opentelemetry when it is installed, so only
    # twotier's own extras and prometheus_client can be checked here.)
    code = (
        "import sys, twotier; "
        "print(sorted(m for m in sys.modules "
        "if m in ('twotier.prometheus', 'twotier.otel') or m.startswith('prometheus_client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
