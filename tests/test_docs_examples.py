"""Every ```python block of README.md and docs/*.md runs, as written, and must not fail.

The convention (also in docs/testing.md, "The documentation's examples"):

- A block fenced ```python is a complete program. It is saved to a file and run
  with `python FILE` in a fresh process, in a temporary working directory: what
  a reader gets by pasting it into a file. So there is no top-level `await`
  (async code runs under `asyncio.run(...)`), every name is imported or defined
  in the block, `if __name__ == "__main__":` sections run, and one block's
  process-wide state (Django settings, logging configuration, the default cache)
  cannot leak into another. A block fails when its process exits non-zero, or
  prints a traceback (an exception in a thread or an exit hook exits 0).
- Claims a block makes about its results are `assert` statements or printed,
  not comments the test cannot see.
- Redis: a block never names a fixed Redis address (a test checks it). It reads
  `TWOTIER_REDIS_URL`, directly (`redis_url=os.environ.get("TWOTIER_REDIS_URL")`)
  or through `from twotier import cache`: unset, as on a fresh machine, the cache
  runs in memory mode; here it names a real server this module starts
  (`twotier.testing.RedisServer`, redis-server or valkey-server), flushed before
  every block. Blocks that read the variable run a second time without it, the
  way a copy-paste on a fresh machine runs. A block that needs a server of its
  own starts one with `RedisServer` itself (docs/testing.md does).
- Anything that is not a program (a shell session, output, a signature, a
  configuration file) is fenced as ```sh, ```text, ```yaml and so on. A fence
  that looks like Python but is not ```python (```py, ```python3, ```pycon)
  is refused, so no example escapes the test by its spelling.

The test id of a block is its file and the line of its opening fence, e.g.
`docs/sync.md:10-redis`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from twotier.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
PYTHONISH = re.compile(r"^(py|python\d+|pycon|ipython\d*|py3)$", re.IGNORECASE)
#: Environment the examples may read, set for every run. The pickle secret is
#: the one docs/serialization.md tells users to keep in their environment.
EXAMPLE_ENV = {"TWOTIER_PICKLE_SECRET": "docs-example-secret"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    info: str
    source: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def reads_redis_url(self) -> bool:
        return "TWOTIER_REDIS_URL" in self.source or "from twotier import cache" in self.source


def fenced_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = textwrap.dedent("\n".join(lines[i + 1 : end]))
        yield Block(path, i + 1, info.split()[0] if info else "", body + "\n")
        i = end + 1


ALL_BLOCKS = [block for path in DOCUMENTS for block in fenced_blocks(path)]
PROGRAMS = [block for block in ALL_BLOCKS if block.info == "python"]
RUNS = [pytest.param(block, True, id=f"{block.name}-redis") for block in PROGRAMS] + [
    pytest.param(block, False, id=f"{block.name}-memory")
    for block in PROGRAMS
    if block.reads_redis_url
]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.start() as running:
        yield running


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("block", "with_redis"), RUNS)
def test_example_runs(block: Block, with_redis: bool, server: RedisServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    env.update(EXAMPLE_ENV)
    if with_redis:
        with redis.Redis.from_url(server.url) as client:
            client.flushall()  # every block starts on an empty server
        env["TWOTIER_REDIS_URL"] = server.url
    program = tmp_path / "example.py"
    program.write_text(block.source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
    )
    report = f"{block.name}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    assert "Traceback (most recent call last)" not in result.stderr, report


def test_the_extractor_finds_the_examples() -> None:
    assert len(PROGRAMS) >= 30
    assert any(block.path.name == "README.md" for block in PROGRAMS)


def test_no_python_hides_behind_another_fence() -> None:
    disguised = [f"{b.name} ```{b.info}" for b in ALL_BLOCKS if PYTHONISH.match(b.info)]
    assert not disguised, "fence Python examples as ```python (they are run): " + ", ".join(
        disguised
    )


def test_no_example_names_a_fixed_redis() -> None:
    fixed = re.compile(r"(127\.0\.0\.1|localhost):6379")
    named = [block.name for block in PROGRAMS if fixed.search(block.source)]
    assert not named, "read TWOTIER_REDIS_URL instead of a fixed address: " + ", ".join(named)
