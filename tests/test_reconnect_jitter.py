"""The listener's reconnects are spread (issue 20, item 6): a fleet cut off at
once by a failover or a restart must not come back in the same millisecond,
each instance with its connect, `server.lua`, counter read and log replay."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from twotier import _subscriber
from twotier._subscriber import RedisListener


def _listener(health_interval: float) -> RedisListener:
    nothing = cast(Any, None)
    return RedisListener(
        nothing,
        nothing,
        "origin",
        nothing,
        apply=nothing,
        apply_own=nothing,
        clear_local=nothing,
        suspend_local=nothing,
        on_link_lost=nothing,
        on_synced=nothing,
        on_lease_end=nothing,
        counters=nothing,
        health_interval=health_interval,
        log=nothing,
    )


def _waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What `_back_off` asks to sleep, recorded instead of slept (from here on
    the module sees no other part of asyncio: make the listeners first)."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(_subscriber, "asyncio", SimpleNamespace(sleep=sleep))
    return waits


def test_a_fleet_cut_off_at_once_reconnects_spread_over_the_first_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = [_listener(1.0) for _ in range(200)]
    waits = _waits(monkeypatch)
    for listener in fleet:
        asyncio.run(listener._back_off())
    assert all(0.0 <= wait <= 0.01 for wait in waits)
    # Uniform over 10 ms: 200 draws all within one half of it has probability 2⁻¹⁹⁹.
    assert max(waits) - min(waits) > 0.005, waits


def test_the_backoff_bound_doubles_up_to_the_health_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = _listener(0.1)
    waits = _waits(monkeypatch)
    for _ in range(8):
        asyncio.run(listener._back_off())
    bounds = [0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1, 0.1]
    assert all(0.0 <= wait <= bound for wait, bound in zip(waits, bounds, strict=True)), waits
