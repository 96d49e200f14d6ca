"""The model-based coherence checker (`_model_check.py`) on a fixed set of seeds.

Two profiles, each against a real server shared by the module's runs:

* *healthy*: jittered network and cancelled callers only, so beyond the
  model, no Redis error may be counted (a cancellation costs nobody else);
* *faults*: subscription cuts (message loss, resyncs), hostile messages on
  the channel, clears and server pauses on top.

A failure prints the seed and the history of the key concerned. For a longer
hunt: ``python -m integration._model_check --seeds 1-200 --minutes 10``
(``--processes``: each instance in a process of its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from twotier.testing import RedisServer

from ._model_check import Config, Driver
from .conftest import FLAVOURS

PROFILES = {
    "healthy": Config(cut_rate=0.0, hostile_rate=0.0, clear_share=0.0),
    "faults": Config(pause_rate=0.3),
}
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module", params=FLAVOURS)
def shared_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    with RedisServer.start(request.param) as server:
        yield server


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_the_history_of_a_seeded_run_holds_the_guarantees(
    shared_server: RedisServer, profile: str, seed: int
) -> None:
    run = await Driver(shared_server, seed, PROFILES[profile]).run()
    reads = sum(op.kind in ("get", "call", "warmup", "sync-get") for op in run.history.ops)
    assert reads > 500, f"seed {seed}: only {reads} reads; the run proves little"
    assert not run.problems, f"seed {seed} ({profile}):\n" + "\n".join(run.problems[:5])


async def test_instances_in_separate_processes_hold_the_guarantees(
    shared_server: RedisServer, tmp_path: Path
) -> None:
    """Each instance a process of its own (its own loop, connections and
    clock reads), one database on the server, the faults profile."""
    seed = 101
    run = await Driver(shared_server, seed, PROFILES["faults"]).run_processes(tmp_path)
    instances = {op.instance for op in run.history.ops}
    assert instances == {0, 1, 2}, f"histories came from instances {instances} only"
    assert not run.problems, f"seed {seed} (processes):\n" + "\n".join(run.problems[:5])
