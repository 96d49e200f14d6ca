"""The guard around Redis: a timeout on every call, one place that translates
redis-py's errors, and a circuit breaker that stops calling a dead Redis.

States: CLOSED (calls go through) → OPEN after `failure_threshold` consecutive
availability failures (calls fail at once with `BackendUnavailable`, nobody
waits on a dead server) → a single probe task PINGs with exponential backoff
and jitter (tenacity) → CLOSED on the first answer, and `on_recover` runs.
A call that fails for another reason (a script error) is not an availability
failure and does not move the breaker.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions as redis_errors
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from ._exceptions import BackendError, BackendTimeout, BackendUnavailable
from ._logging import Log

T = TypeVar("T")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


class Guard:
    def __init__(
        self,
        *,
        timeout: float,
        ping: Callable[[], Awaitable[object]],
        failure_threshold: int = 3,
        probe_max_interval: float = 2.0,
        on_open: Callable[[], None] = lambda: None,
        on_recover: Callable[[], Awaitable[None]] | None = None,
        log: Log,
    ) -> None:
        self.timeout = timeout
        self.state = BreakerState.CLOSED
        self._ping = ping
        self._threshold = failure_threshold
        self._probe_max = probe_max_interval
        self._failures = 0
        self._on_open = on_open
        self._on_recover = on_recover
        self._probe: asyncio.Task[None] | None = None
        self._log = log
        self.errors = 0

    @property
    def available(self) -> bool:
        return self.state is BreakerState.CLOSED

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation under the timeout; raise only `BackendError`s."""
        if self.state is BreakerState.OPEN:
            raise BackendUnavailable("Redis is unavailable (circuit open)")
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation()
        except TimeoutError as exc:
            self._failed()
            ms = self.timeout * 1000
            raise BackendTimeout(f"Redis did not answer within {ms:.0f} ms") from exc
        except (redis_errors.TimeoutError, redis_errors.ConnectionError, OSError) as exc:
            # redis-py's TimeoutError derives from RedisError; both mean "not reachable now".
            self._failed()
            raise BackendUnavailable(f"Redis is unreachable: {exc}") from exc
        except redis_errors.RedisError as exc:
            self.errors += 1
            raise BackendError(f"Redis refused the command: {exc}") from exc
        self._failures = 0
        return result

    def _failed(self) -> None:
        self.errors += 1
        self._failures += 1
        if self.state is BreakerState.CLOSED and self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._log.warning("Redis unavailable: circuit open, serving from L1 and loaders")
            self._on_open()
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        retrying = AsyncRetrying(
            # tenacity's default jitter (1 s) would swamp a 50 ms first step
            wait=wait_exponential_jitter(multiplier=0.05, max=self._probe_max, jitter=0.05),
            retry=retry_if_exception_type((BackendError, OSError, TimeoutError)),
        )
        async for attempt in retrying:
            with attempt:
                await self._probe_once()
        self._failures = 0
        self.state = BreakerState.CLOSED
        self._log.warning("Redis available again: circuit closed")
        if self._on_recover is not None:
            await self._on_recover()

    async def _probe_once(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._ping()
        except redis_errors.RedisError as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
