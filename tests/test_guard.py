"""The circuit breaker around Redis (twotier/_guard.py), driven by fake operations:
no server, every outcome chosen by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.exceptions as redis_errors

from tests.contract import eventually
from twotier import BackendError, BackendTimeout, BackendUnavailable
from twotier._guard import BreakerState, Guard
from twotier._logging import tier_log


class Fake:
    """The Redis the guard talks to: its ping fails until `up` is set."""

    def __init__(self) -> None:
        self.up = False
        self.pings = 0
        self.calls = 0
        self.recoveries = 0

    async def ping(self) -> bool:
        self.pings += 1
        if not self.up:
            raise redis_errors.ConnectionError("still down")
        return True

    async def recovered(self) -> None:
        self.recoveries += 1

    def op(self, outcome: BaseException | None = None) -> Callable[[], Awaitable[str]]:
        """An operation that raises *outcome*, or answers "ok"."""

        async def operation() -> str:
            self.calls += 1
            if outcome is not None:
                raise outcome
            return "ok"

        return operation


@pytest.fixture
async def fake() -> Fake:
    return Fake()


@pytest.fixture
async def guard(fake: Fake) -> AsyncIterator[Guard]:
    made = Guard(
        timeout=0.05,
        ping=fake.ping,
        failure_threshold=3,
        probe_max_interval=0.05,
        on_recover=fake.recovered,
        log=tier_log("test", "l2"),
    )
    yield made
    await made.close()


def down() -> BaseException:
    return redis_errors.ConnectionError("connection refused")


async def _fail(guard: Guard, fake: Fake, times: int) -> None:
    for _ in range(times):
        with pytest.raises(BackendUnavailable):
            await guard.call(fake.op(down()))


async def test_a_success_resets_the_count_of_consecutive_failures(guard: Guard, fake: Fake) -> None:
    await _fail(guard, fake, 2)
    assert await guard.call(fake.op()) == "ok"
    await _fail(guard, fake, 2)
    assert guard.state is BreakerState.CLOSED  # 2 + 2 failures, never 3 in a row
    assert guard.available
    await _fail(guard, fake, 1)  # the third in a row
    assert guard.state is BreakerState.OPEN
    assert not guard.available


async def test_three_failures_in_a_row_open_the_breaker_and_calls_fail_at_once(
    guard: Guard, fake: Fake
) -> None:
    await _fail(guard, fake, 2)
    assert guard.state is BreakerState.CLOSED
    await _fail(guard, fake, 1)
    assert guard.state is BreakerState.OPEN
    calls = fake.calls
    with pytest.raises(BackendUnavailable):
        await guard.call(fake.op())
    assert fake.calls == calls  # an open breaker does not even try
    assert guard.errors == 3


async def test_timeouts_count_as_availability_failures(guard: Guard, fake: Fake) -> None:
    for outcome in (TimeoutError(), redis_errors.TimeoutError("slow"), TimeoutError()):
        with pytest.raises((BackendTimeout, BackendUnavailable)):
            await guard.call(fake.op(outcome))
    assert guard.state is BreakerState.OPEN


async def test_refused_commands_never_open_the_breaker(guard: Guard, fake: Fake) -> None:
    for _ in range(10):
        with pytest.raises(BackendError) as caught:
            await guard.call(fake.op(redis_errors.ResponseError("script error")))
        assert not isinstance(caught.value, BackendUnavailable | BackendTimeout)
    assert guard.state is BreakerState.CLOSED
    assert guard.errors == 10
    assert await guard.call(fake.op()) == "ok"


async def test_the_probe_closes_the_breaker_and_starts_a_fresh_count(
    guard: Guard, fake: Fake
) -> None:
    await _fail(guard, fake, 3)
    assert guard.state is BreakerState.OPEN
    await eventually(lambda: _is(fake.pings >= 2))  # probing, and still down
    assert guard.state is BreakerState.OPEN
    assert fake.recoveries == 0
    fake.up = True
    await eventually(lambda: _is(guard.state is BreakerState.CLOSED and fake.recoveries == 1))
    assert await guard.call(fake.op()) == "ok"
    await _fail(guard, fake, 2)  # the failures before the outage are forgotten
    assert guard.state is BreakerState.CLOSED


async def test_recovery_alone_forgets_the_failures_before_the_outage(
    guard: Guard, fake: Fake
) -> None:
    """No successful call in between: only the probe's success resets the count."""
    await _fail(guard, fake, 3)
    fake.up = True
    await eventually(lambda: _is(guard.state is BreakerState.CLOSED))
    await _fail(guard, fake, 2)
    assert guard.state is BreakerState.CLOSED
    await _fail(guard, fake, 1)
    assert guard.state is BreakerState.OPEN


async def _is(value: bool) -> bool:
    return value


async def test_close_ends_the_probe_even_if_its_cancellation_is_swallowed() -> None:
    in_ping = asyncio.Event()
    swallowed = 0

    async def ping() -> bool:
        nonlocal swallowed
        in_ping.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed += 1  # the race redis-py loses: the cancellation comes out as an error
            raise redis_errors.ConnectionError("Connection closed by server.") from None
        return True

    guard = Guard(timeout=30, ping=ping, failure_threshold=1, log=tier_log("test", "l2"))
    with pytest.raises(BackendUnavailable):
        await guard.call(Fake().op(down()))
    await asyncio.wait_for(in_ping.wait(), timeout=5)  # the probe is inside its ping
    try:
        await asyncio.wait_for(guard.close(), timeout=2)
    finally:
        if guard._probe is not None and not guard._probe.done():
            guard._probe.cancel()  # the second cancellation is not swallowed
            await asyncio.gather(guard._probe, return_exceptions=True)
    assert swallowed == 1
