"""The guard around Redis: one place that translates redis-py's errors, names
their cause, and a circuit breaker that stops calling a dead Redis.

Timeouts are the client's own: every read of a reply is bounded by the socket
timeout (`redis_timeout`) and every connect by the connect budget
(`connect_timeout`), so a timed-out call drops only its own connection. The
guard adds no `asyncio.timeout` of its own: that cost a task-level timer per
call on the hit path, and, wrapped around connect + NOSCRIPT + SCRIPT LOAD +
EVALSHA, made a cold call on a 16 ms link overrun its budget every time
(issue 7, item 2).

States: CLOSED (calls go through) → OPEN after `failure_threshold` consecutive
availability failures (calls fail at once with `BackendUnavailable`, nobody
waits on a dead server) → a single probe task PINGs with exponential backoff
and jitter (tenacity) → CLOSED on the first answer, and `on_recover` runs.
A call that fails for another reason (a script error, NOPERM, OOM) is not an
availability failure and does not move the breaker, but its cause is kept in
`last_error` (and shown by `get_stats()`), so a misconfiguration does not pass
for an outage (issue 7, item 12).
"""

from __future__ import annotations

import asyncio
import enum
import ssl
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


#: How Redis and Valkey word an ACL denial inside a script (a PUBLISH to a
#: channel the user may not use), which redis-py does not map to NoPermissionError.
_ACL_WORDING = ("NOPERM", "can't publish to the channel", "ACL failure", "no permissions")


def describe(exc: BaseException, *, tls: bool | None = None) -> str:
    """A one-line cause that tells a misconfiguration from an outage.

    *tls* says whether the URL asked for TLS: a TLS client on a plain port
    times out in the handshake, and a plain client on a TLS port is reset,
    both of which would otherwise read as an outage. Never an empty cause: an
    exception without a message (asyncio's deadlines raise a bare
    `TimeoutError()`) is named by what it is (issue 18, item 7: "Redis did not
    answer in time: " in a log).
    """
    text = str(exc).strip()
    if isinstance(exc, redis_errors.AuthenticationError):
        return _said("authentication failed (wrong user or password)", text)
    if isinstance(exc, redis_errors.NoPermissionError) or any(
        wording in text for wording in _ACL_WORDING
    ):
        return _said("ACL denied a command or channel the cache needs (NOPERM)", text)
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return _said("Redis is out of memory (maxmemory reached)", text)
    cause: BaseException | None = exc
    while cause is not None:  # redis-py wraps the ssl error in a ConnectionError
        if isinstance(cause, ssl.SSLError):
            return _said(f"TLS failed ({cause.__class__.__name__})", str(cause).strip())
        cause = cause.__cause__ or cause.__context__
    if "certificate verify failed" in text or "SSL" in text:
        return _said("TLS failed", text)
    connecting = "connecting" in text.lower()
    if tls and connecting:
        return _said("TLS failed: no TLS handshake (is this a TLS port?)", text)
    if tls is False and "reset by peer" in text:
        return _said("connection reset at once (does the server expect TLS, rediss://?)", text)
    if isinstance(exc, (redis_errors.TimeoutError, TimeoutError)):
        return _said(
            "Redis did not answer in time", text or "no reply before the client's deadline"
        )
    return _said(exc.__class__.__name__, text)


def _said(what: str, text: str) -> str:
    return f"{what}: {text}" if text else what


class Guard:
    def __init__(
        self,
        *,
        timeout: float,
        ping: Callable[[], Awaitable[object]],
        failure_threshold: int = 3,
        probe_max_interval: float = 2.0,
        probe_timeout: float | None = None,
        tls: bool | None = None,
        on_open: Callable[[], None] = lambda: None,
        on_recover: Callable[[], Awaitable[None]] | None = None,
        log: Log,
    ) -> None:
        self.timeout = timeout
        self.state = BreakerState.CLOSED
        self._ping = ping
        self._threshold = failure_threshold
        self._probe_max = probe_max_interval
        # A probe may have to connect first: its bound is the connect budget plus a reply.
        self._probe_timeout = probe_timeout or timeout
        self._tls = tls
        self._failures = 0
        self._on_open = on_open
        self._on_recover = on_recover
        self._probe: asyncio.Task[None] | None = None
        self._log = log
        self.errors = 0
        self.last_error: str | None = None
        self._closing = False

    @property
    def available(self) -> bool:
        return self.state is BreakerState.CLOSED

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation; raise only `BackendError`s."""
        if self.state is BreakerState.OPEN:
            raise BackendUnavailable(f"Redis is unavailable (circuit open): {self.last_error}")
        try:
            result = await operation()
        except (redis_errors.TimeoutError, TimeoutError) as exc:
            self._failed(exc)
            ms = self.timeout * 1000
            raise BackendTimeout(f"Redis did not answer within {ms:.0f} ms") from exc
        except (redis_errors.ConnectionError, OSError, redis_errors.RedisClusterException) as exc:
            # (a cluster client's "slot not covered": no node serves it, now)
            # AuthenticationError and TLS failures arrive here too: Redis is not
            # usable, so they count for the breaker, but the log names the cause.
            self._failed(exc)
            raise BackendUnavailable(f"Redis is unreachable: {self.describe_error(exc)}") from exc
        except redis_errors.RedisError as exc:
            self.errors += 1
            self._note(exc)
            raise BackendError(f"Redis refused the command: {self.describe_error(exc)}") from exc
        self._failures = 0
        if self.last_error is not None:
            self.last_error = None  # it worked again: the cause is history
        return result

    def describe_error(self, exc: BaseException) -> str:
        return describe(exc, tls=self._tls)

    def _note(self, exc: BaseException) -> None:
        """Keep the cause; log each new kind of cause once, not once per call."""
        text = self.describe_error(exc)
        if text != self.last_error:
            self._log.warning("Redis call failed: %s", text)
        self.last_error = text

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self._failures += 1
        self._note(exc)
        if self.state is BreakerState.CLOSED and self._failures >= self._threshold:
            self.state = BreakerState.OPEN
            self._log.warning(
                "Redis unavailable (%s): circuit open, serving from L1 and loaders",
                self.last_error,
            )
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
        self.last_error = None
        self.state = BreakerState.CLOSED
        self._log.warning("Redis available again: circuit closed")
        if self._on_recover is not None:
            await self._on_recover()

    async def _probe_once(self) -> None:
        if self._closing:
            raise asyncio.CancelledError  # not retried: tenacity retries Exceptions only
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._ping()
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            self._note(exc)
            raise BackendUnavailable(self.describe_error(exc)) from exc

    async def close(self) -> None:
        """Stop the probe, even if a cancellation gets lost on the way: redis-py can
        turn one that lands in a connect into a ConnectionError, which tenacity
        would retry (the listener's stop has the same guard)."""
        self._closing = True
        probe = self._probe
        while probe is not None and not probe.done():
            probe.cancel()
            await asyncio.wait([probe], timeout=self._probe_timeout)
