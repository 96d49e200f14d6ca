"""integration/bench_http.py runs and prints its table (--quick). No figure is asserted:
the numbers are docs/performance.md's, measured by the full run."""

from __future__ import annotations

import shutil

import pytest

from .bench_http import main

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed"),
]


def test_the_http_benchmark_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    for row in ("no cache", "memory only (L1)", "two tiers (L1+Redis)", "two tiers, clear-all"):
        assert row in out
    assert "-78 % avg" in out
    assert "-72 % avg" in out
    assert "-35 %" in out
    assert "clear-all on write" in out
