"""Loader policies of `@cached`: stale-if-error, soft and hard timeouts, TTL jitter.

They act only on the miss path (an L1 hit never reaches this module):

* `hard_timeout` cancels the loader for real after that many seconds; its
  fill lease is released at once so other instances stop waiting, and the
  caller gets `LoaderTimeoutError` (or a last-known value, see below).
* `soft_timeout` answers a caller who has waited that long with the last-known
  value, if there is one, while the load goes on in the background and fills
  the cache when it completes (FusionCache's soft timeout).
* `stale_if_error` serves the last-known value, at most that many seconds old,
  when the loader raises or times out, instead of the error.
* `ttl_jitter` takes up to that fraction off each TTL at random, so entries
  written together do not all expire in the same instant.

The last-known values are kept per decorated function in a bounded LRU, stored
encoded so callers never share a mutable object through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from cachetools import LRUCache

from ._exceptions import ConfigurationError, LoaderTimeoutError
from ._serialization import Serializer
from ._stats import Counters


def _optional_seconds(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class LoaderPolicy:
    stale_if_error: float | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    ttl_jitter: float = 0.0
    early_refresh: float = 0.0  # XFetch's beta; 0 = off

    def __post_init__(self) -> None:
        for name in ("stale_if_error", "soft_timeout", "hard_timeout"):
            _optional_seconds(name, getattr(self, name))
        jitter = self.ttl_jitter
        if (
            isinstance(jitter, bool)
            or not isinstance(jitter, (int, float))
            or not (0 <= jitter <= 0.5)
        ):
            raise ConfigurationError(f"ttl_jitter must be between 0 and 0.5, got {jitter!r}")
        beta = self.early_refresh
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 <= beta <= 10):
            raise ConfigurationError(f"early_refresh (XFetch beta) must be 0..10, got {beta!r}")
        if self.soft_timeout is not None and self.stale_if_error is None:
            raise ConfigurationError("soft_timeout serves the last value: set stale_if_error too")
        if (
            self.soft_timeout is not None
            and self.hard_timeout is not None
            and self.soft_timeout >= self.hard_timeout
        ):
            raise ConfigurationError("soft_timeout must be shorter than hard_timeout")

    @property
    def is_plain(self) -> bool:
        """Nothing to apply around the loader (early refresh acts on the hit path)."""
        return replace(self, early_refresh=0.0) == _PLAIN


_PLAIN = LoaderPolicy()

Loader = Callable[[], Awaitable[Any]]
Load = Callable[[float, Loader], Coroutine[Any, Any, Any]]


class PolicyRunner:
    """Applies one function's `LoaderPolicy` around the cache's load path."""

    def __init__(
        self,
        policy: LoaderPolicy,
        serializer: Serializer,
        counters: Counters,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
        maxsize: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._serializer = serializer
        self._counters = counters
        self._spawn = spawn
        self._clock = clock
        self._last: LRUCache[str, tuple[bytes, float]] | None = (
            LRUCache(maxsize) if policy.stale_if_error is not None else None
        )

    def ttl(self, ttl: float) -> float:
        jitter = self._policy.ttl_jitter
        return ttl * (1 - jitter * random.random()) if jitter else ttl  # noqa: S311  # not crypto

    def wrap(self, loader: Loader) -> Loader:
        """The loader under the hard timeout, if there is one."""
        hard = self._policy.hard_timeout
        return loader if hard is None else _with_hard_timeout(loader, hard)

    async def run(self, key: str, ttl: float, loader: Loader, load: Load) -> Any:
        policy = self._policy
        # The hard timeout bounds the whole miss path, a wait on another
        # instance's fill lease included, not just the loader (issue 7, item 1).
        hard = policy.hard_timeout
        attempt = load(self.ttl(ttl), loader)
        if hard is not None:
            attempt = _within_hard_timeout(attempt, hard)
        try:
            if policy.soft_timeout is not None and self._last_value(key) is not None:
                value = await self._within_soft_timeout(key, attempt, policy.soft_timeout)
            else:
                value = await attempt
        except Exception:
            stale = self._last_value(key)
            if stale is None:
                raise
            self._counters.stale_served += 1
            return self._serializer.loads(stale)
        self._remember(key, value)
        return value

    async def _within_soft_timeout(
        self, key: str, attempt: Coroutine[Any, Any, Any], soft: float
    ) -> Any:
        task = self._spawn(attempt)  # tracked by the cache, so it can finish after we answer
        done, _ = await asyncio.wait({task}, timeout=soft)
        if done:
            return task.result()
        stale = self._last_value(key)
        if stale is None:  # expired while we waited: nothing better than waiting on
            return await asyncio.shield(task)
        task.add_done_callback(lambda t: self._remember_background(key, t))
        self._counters.stale_served += 1
        return self._serializer.loads(stale)

    def _remember_background(self, key: str, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._remember(key, task.result())

    def _remember(self, key: str, value: Any) -> None:
        if self._last is not None:
            with contextlib.suppress(Exception):  # the load path already serialized it once
                self._last[key] = (self._serializer.dumps(value), self._clock())

    def _last_value(self, key: str) -> bytes | None:
        if self._last is None or self._policy.stale_if_error is None:
            return None
        found = self._last.get(key)
        if found is None or self._clock() - found[1] > self._policy.stale_if_error:
            return None
        return found[0]


def _with_hard_timeout(loader: Loader, seconds: float) -> Loader:
    return lambda: _within_hard_timeout(loader(), seconds)


async def _within_hard_timeout(work: Awaitable[Any], seconds: float) -> Any:
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await work
    except TimeoutError as exc:
        if not deadline.expired():
            raise  # the loader's own TimeoutError, not ours
        raise LoaderTimeoutError(f"loader did not finish within {seconds:g} s") from exc
