"""The rate sweep (`python -m twotier.cli.bench.rates`) runs end to end on a
small fleet. No figure is timed: docs/performance.md has the measured ones."""

from __future__ import annotations

import math

import pytest

from twotier.cli.bench.rates import SUBJECTS, sweep, table
from twotier.testing import RedisServer

pytestmark = pytest.mark.timeout(60)


async def test_a_small_sweep_delivers_every_event_and_coalesces(server: RedisServer) -> None:
    result = await sweep(server.url, 4, [20, 50], 1.0, log=lambda line: None)
    for subject in SUBJECTS:
        low = result.rounds(subject, 20)
        assert len(low) == 1
        assert low[0].events == 20
        assert low[0].lost == 0
        assert low[0].failed == 0
        for run in result.runs:
            if run.subject == subject and run.lost < run.events:
                for figure in (run.p50, run.p99, run.max):
                    assert figure > 0
                    assert math.isfinite(figure)
    # every raw subscriber got every message; an instance never more than were sent
    assert result.rounds("raw", 20)[0].per_receiver == 20
    high = result.rounds("twotier", 50)  # run even if 20/s saturated: one rate after
    assert len(high) == 1
    assert 0 < high[0].per_receiver <= high[0].events
    assert "| 20 " in table(result)
