"""The ops command line against real servers, with running cache instances.

Commands run in-process through typer's CliRunner (in a worker thread: each
command runs its own event loop, and the test's loop keeps the caches going),
and as real subprocesses (`python -m twotier.cli …`) where the path from the
shell matters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner, Result

from tests.contract import eventually
from twotier import TwoTierCache
from twotier.cli._app import app
from twotier.testing import RedisServer

from .conftest import DOCTOR_CHECKS, CacheFactory


@pytest.fixture(autouse=True)
def _no_twotier_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOTIER_REDIS_URL", raising=False)
    monkeypatch.delenv("TWOTIER_NAMESPACE", raising=False)


async def cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


async def shell(*args: str) -> tuple[int, str, str]:
    """`python -m twotier.cli ARGS` as a subprocess: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twotier.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _auth_url(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def _checks(result: Result) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


# -- stats and top -------------------------------------------------------------------


async def stats_of_two(url: str, namespace: str, a: TwoTierCache, b: TwoTierCache) -> Any:
    """Two hits and a miss on *a* and *b* (which report often), then `twotier
    stats --json` until both have reported them: its answer."""
    await a.set("k", 1)
    assert await a.get("k") == 1  # an L1 hit on a
    assert await b.get("k") == 1  # an L2 hit on b
    assert await b.get("missing") is None
    data: dict[str, Any] = {}

    async def both_reported() -> bool:
        result = await cli("stats", "--url", url, "--namespace", namespace, "--json")
        assert result.exit_code == 0, result.output
        data.update(json.loads(result.stdout))
        by_id = {r["instance"]: r for r in data["instances"]}
        return set(by_id) == {a.instance_id, b.instance_id} and by_id[b.instance_id]["misses"] == 1

    await eventually(both_reported, timeout=5)
    return data


async def test_stats_lists_every_live_instance_and_the_totals(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a = await make_cache(namespace="erp", heartbeat_interval=0.1)
    b = await make_cache(namespace="erp", heartbeat_interval=0.1)
    other = await make_cache(namespace="other", heartbeat_interval=0.1)
    data = await stats_of_two(server.url, "erp", a, b)
    assert other.instance_id not in {r["instance"] for r in data["instances"]}
    totals = data["totals"]
    assert totals["instances"] == 2
    assert totals["instances_connected"] == 2
    assert totals["hits"] == 2
    assert totals["misses"] == 1
    assert totals["hit_rate"] == 66.67
    assert totals["sets"] == 1
    assert all(r["pid"] == os.getpid() and r["age"] < 5 for r in data["instances"])

    result = await cli("stats", "--url", server.url, "--namespace", "erp")
    assert result.exit_code == 0
    assert "2 live instance(s)" in result.stdout
    assert a.instance_id in result.stdout
    assert b.instance_id in result.stdout

    await b.close()  # gone from the listing at once
    result = await cli("stats", "--url", server.url, "--namespace", "erp", "--json")
    assert [r["instance"] for r in json.loads(result.stdout)["instances"]] == [a.instance_id]


async def test_top_refreshes_the_given_number_of_times(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a = await make_cache(namespace="erp", heartbeat_interval=0.05)
    await a.set("k", 1)

    async def reported() -> bool:
        result = await cli("stats", "--url", server.url, "-n", "erp", "--json")
        return bool(json.loads(result.stdout)["instances"])

    await eventually(reported, timeout=5)
    result = await cli(
        "top", "--url", server.url, "-n", "erp", "--json", "--iterations", "3", "--interval", "0.1"
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3
    assert [r["instance"] for r in lines[-1]["instances"]] == [a.instance_id]
    assert lines[0]["time"] < lines[2]["time"]

    result = await cli("top", "--url", server.url, "-n", "erp", "--iterations", "1")
    assert result.exit_code == 0, result.output
    assert a.instance_id in result.stdout


# -- changes through a cache -----------------------------------------------------------


async def test_invalidate_makes_other_running_instances_drop_their_entries(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a = await make_cache(namespace="erp")
    b = await make_cache(namespace="erp")
    await a.set("article:1", "old", tags=["articles"])
    await a.set("user:1", "kept", tags=["users"])
    assert await b.get("article:1") == "old"  # now in b's L1
    assert await b.get("user:1") == "kept"
    assert b.get_stats()["entries"] == 2

    result = await cli("invalidate", "articles", "--url", server.url, "--namespace", "erp")
    assert result.exit_code == 0, result.output
    assert "invalidated 1 tag(s): articles" in result.stdout

    async def dropped() -> bool:
        return a.get_stats()["entries"] == 1 and b.get_stats()["entries"] == 1

    await eventually(dropped)
    assert await b.get("article:1") is None  # not in L1, and L2's entry is invalid
    assert await a.get("article:1") is None
    assert await b.get("user:1") == "kept"

    # The same from a shell, with JSON output.
    await a.set("article:2", "old", tags=["articles"])
    assert await b.get("article:2") == "old"
    code, out, err = await shell(
        "invalidate", "articles", "--url", server.url, "--namespace", "erp", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["invalidated"] == ["articles"]
    assert await b.get("article:2") is None


async def deletes_and_clears(url: str, namespace: str, a: TwoTierCache, b: TwoTierCache) -> None:
    """`delete` (two keys, JSON) and `clear` (refused without --yes) reach *b*,
    an instance holding the keys in L1, whatever the deployment behind *url*."""
    received = b.get_stats()["invalidations_received"]
    for key in ("k1", "k2", "k3"):
        await a.set(key, key)

    async def sets_arrived() -> bool:  # else a late one evicts a key b has just read
        return bool(b.get_stats()["invalidations_received"] >= received + 3)

    await eventually(sets_arrived)
    for key in ("k1", "k2", "k3"):
        assert await b.get(key) == key  # now in b's L1
    before = b.get_stats()["entries"]

    result = await cli("delete", "k1", "k2", "--url", url, "--namespace", namespace, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == ["k1", "k2"]
    await eventually(lambda: _entries_are(b, before - 2))
    assert await b.get("k1") is None
    assert await b.get("k3") == "k3"

    result = await cli("clear", "--url", url, "--namespace", namespace)
    assert result.exit_code == 2  # no --yes: refused
    assert await b.get("k3") == "k3"

    result = await cli("clear", "--yes", "--url", url, "--namespace", namespace)
    assert result.exit_code == 0, result.output
    await eventually(lambda: _entries_are(b, 0))
    assert await b.get("k3") is None
    assert await a.get("k3") is None


async def test_delete_and_clear_reach_the_other_instances(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a = await make_cache(namespace="erp")
    b = await make_cache(namespace="erp")
    await deletes_and_clears(server.url, "erp", a, b)


async def _entries_are(cache: TwoTierCache, count: int) -> bool:
    return bool(cache.get_stats()["entries"] == count)


async def test_a_namespace_never_used_is_refused_unless_forced(
    server: RedisServer, make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    a = await make_cache(namespace="erp")
    await a.set("k", 1, tags=["t"])
    before = sorted(await raw.keys("*"))

    for command in (["invalidate", "t"], ["delete", "k"], ["clear", "--yes"], ["stats"]):
        result = await cli(*command, "--url", server.url, "--namespace", "epr")
        assert result.exit_code == 4, result.output
        assert "namespace 'epr' has never been used" in result.stderr
        assert "namespaces in use there: erp" in result.stderr
    assert sorted(await raw.keys("*")) == before  # nothing written anywhere
    assert await a.get("k") == 1

    result = await cli("invalidate", "t", "--url", server.url, "--namespace", "epr", "--force")
    assert result.exit_code == 0, result.output
    assert await a.get("k") == 1  # another namespace: untouched


# -- doctor ------------------------------------------------------------------------------


async def test_doctor_passes_on_a_sound_server_and_fails_on_allkeys_eviction(
    server: RedisServer, make_cache: CacheFactory, raw: aioredis.Redis
) -> None:
    a = await make_cache(namespace="erp")
    await a.set("k", 1)
    await raw.config_set("maxmemory", "100mb")
    await raw.config_set("maxmemory-policy", "volatile-lru")

    result = await cli("doctor", "--url", server.url, "--namespace", "erp", "--json")
    assert result.exit_code == 0, result.output
    checks = _checks(result)
    assert set(checks) == DOCTOR_CHECKS
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert checks["topology"]["detail"] == "standalone"
    assert "1 entries" in checks["namespace"]["detail"]
    assert "by ACL DRYRUN" in checks["acl"]["detail"]

    await raw.config_set("maxmemory-policy", "allkeys-lru")
    result = await cli("doctor", "--url", server.url, "--namespace", "erp")
    assert result.exit_code == 1, result.output
    assert "allkeys-lru can evict the namespace's control keys" in result.stdout
    assert "volatile-lru" in result.stdout
    assert "1 failure(s)" in result.stdout


async def test_doctor_flags_a_user_who_may_not_publish(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    # One user may run ACL DRYRUN, the other may not: the rights are then found by trying.
    await raw.execute_command(
        "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "&*", "+@all", "-publish"
    )
    await raw.execute_command(
        "ACL", "SETUSER", "noacl", "on", ">pw", "~*", "&*", "+@all", "-publish", "-acl"
    )
    for user, how in (("nopub", "ACL DRYRUN"), ("noacl", "trying")):
        result = await cli("doctor", "--url", _auth_url(server, user, "pw"), "--json")
        assert result.exit_code == 1, result.output
        checks = _checks(result)
        assert checks["acl"]["status"] == "fail", checks
        assert f"user {user!r} may not run PUBLISH" in checks["acl"]["detail"]
        assert f"checked by {how}" in checks["acl"]["detail"]
        assert checks["pub/sub"]["status"] == "fail", checks
        assert checks["server"]["status"] == "ok"

    # The same user with every right passes, by trying where DRYRUN is refused.
    await raw.execute_command("ACL", "SETUSER", "noacl", "+publish")
    result = await cli("doctor", "--url", _auth_url(server, "noacl", "pw"), "--json")
    checks = _checks(result)
    assert checks["acl"]["status"] == "ok", checks
    assert "by trying them" in checks["acl"]["detail"]
    assert checks["pub/sub"]["status"] == "ok"


# -- bad credentials ---------------------------------------------------------------------


async def test_a_wrong_password_says_so_and_exits_3(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    await raw.config_set("requirepass", "right")
    try:
        wrong = _auth_url(server, "default", "wrong")
        for command in (
            ["stats"],
            ["invalidate", "t"],
            ["clear", "--yes"],
            ["warmup", "--loader", "json:dumps", "--keys", "-"],
        ):
            result = await cli(*command, "--url", wrong)
            assert result.exit_code == 3, (command, result.output)
            assert "authentication failed" in result.stderr
            assert "wrong user name or password" in result.stderr
            assert "Traceback" not in result.output
            assert "wrong" not in result.stderr.replace("wrong user name", "")  # redacted

        code, out, err = await shell("doctor", "--url", server.url)  # no password at all
        assert code == 3, out + err
        assert "the server needs a password and the URL gives none" in out

        result = await cli("doctor", "--url", _auth_url(server, "default", "right"), "--json")
        assert _checks(result)["connection"]["status"] == "ok"
    finally:
        await raw.execute_command("AUTH", "right")
        await raw.config_set("requirepass", "")


# -- warmup --------------------------------------------------------------------------------


async def test_warmup_loads_the_keys_of_a_file_for_every_instance(
    server: RedisServer,
    make_cache: CacheFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"warm_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "async def load(key):\n"
        "    if key == 'bad':\n"
        "        raise RuntimeError('no such row')\n"
        "    return {'key': key, 'loaded': True}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    b = await make_cache(namespace="erp")
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(f"item:{i}" for i in range(1200)) + "\n\n")

    warmup = ("warmup", "--loader", f"{module}:load", "--keys", str(keys))
    where = ("--url", server.url, "--namespace", "erp")
    result = await cli(*warmup, *where, "--tag", "items", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["keys"] == 1200
    assert summary["filled"] == 1200
    assert summary["load_errors"] == 0
    assert await b.get("item:7") == {"key": "item:7", "loaded": True}
    assert b.get_stats()["l2_hits"] == 1

    # Tagged as asked: invalidating the tag drops what warmup loaded.
    await b.invalidate_tag("items")
    assert await b.get("item:8") is None

    keys.write_text("item:1\nbad\n")
    result = await cli(*warmup, *where)
    assert result.exit_code == 1, result.output
    assert "1 loader error(s)" in result.stdout


def _as_a_foreground_job() -> None:
    """SIGINT at its default, as a shell's foreground job has it: a suite run
    in the background by a shell without job control (`cmd &` in a script, as
    CI runners and nohup launch it) hands SIGINT down ignored, and Ctrl-C
    could not reach the child (found when the suite ran that way)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_top_in_a_shell_stops_on_ctrl_c_with_exit_0(
    server: RedisServer, make_cache: CacheFactory
) -> None:
    a = await make_cache(namespace="erp")
    await a.set("k", 1)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twotier.cli",
        "top",
        "--url",
        server.url,
        "-n",
        "erp",
        "--json",
        "--interval",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_as_a_foreground_job,
    )
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    assert json.loads(first)["namespace"] == "erp"  # running: now interrupt it
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err
