"""The ops command line on a Redis Cluster and through Sentinel: the commands
run as a user runs them (typer's CliRunner in a worker thread, and a real
`python -m twotier.cli` subprocess), against cache instances running on the
same deployment.

One local cluster (3 masters, 3 replicas) and one Sentinel set (master,
replica, three sentinels) per flavour installed (Redis, Valkey) serve the
whole module (about 2 s each to build); each test uses a namespace of its own.
Their servers are given `maxmemory` and `volatile-lru`, so that a sound
deployment passes every `doctor` check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.contract import eventually
from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.testing import LocalCluster, LocalSentinel, RedisServer

from .conftest import DOCTOR_CHECKS, FLAVOURS
from .test_cli import (
    _checks,
    _entries_are,
    cli,
    deletes_and_clears,
    shell,
    stats_of_two,
)


@pytest.fixture(autouse=True)
def _no_twotier_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOTIER_REDIS_URL", raising=False)
    monkeypatch.delenv("TWOTIER_NAMESPACE", raising=False)


def _configure(servers: list[RedisServer], **settings: str) -> None:
    for server in servers:
        with redis.Redis(port=server.port, socket_timeout=5) as client:
            for name, value in settings.items():
                client.config_set(name.replace("_", "-"), value)


SOUND = {"maxmemory": "100mb", "maxmemory_policy": "volatile-lru"}


@pytest.fixture(scope="module", params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def local_cluster(flavour: str) -> Iterator[LocalCluster]:
    with LocalCluster.start(flavour) as cluster:
        _configure(cluster.servers, **SOUND)
        yield cluster


@pytest.fixture(scope="module")
def local_sentinel(flavour: str) -> Iterator[LocalSentinel]:
    with LocalSentinel.start(flavour) as sentinel:
        _configure(sentinel.servers, **SOUND)
        yield sentinel


@dataclass
class Deployment:
    kind: str  # "cluster" or "sentinel"
    url: str
    masters: Callable[[], list[RedisServer]]  # the servers that hold data now


@pytest.fixture(params=["cluster", "sentinel"])
def deployment(request: pytest.FixtureRequest, flavour: str) -> Deployment:
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("local_cluster")
        return Deployment("cluster", cluster.url, cluster.masters)
    sentinel: LocalSentinel = request.getfixturevalue("local_sentinel")
    return Deployment("sentinel", sentinel.url, lambda: [sentinel.current_master()])


@pytest.fixture
def namespace() -> str:
    return f"o{uuid.uuid4().hex[:8]}"


CacheFactory = Callable[..., TwoTierCache]


@pytest.fixture
async def make_cache(deployment: Deployment, namespace: str) -> AsyncIterator[CacheFactory]:
    """Started caches of the test's namespace on the deployment; closed at the end."""
    caches: list[TwoTierCache] = []

    async def factory(**kwargs: object) -> TwoTierCache:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("redis_timeout", 0.5)
        cache = TwoTierCache(redis_url=deployment.url, **kwargs)  # type: ignore[arg-type]
        await cache.start()
        caches.append(cache)
        return cache

    yield factory  # type: ignore[misc]
    for cache in caches:
        await cache.close()


def _entries_on(server: RedisServer, namespace: str) -> int:
    with redis.Redis(port=server.port, socket_timeout=5) as client:
        return sum(1 for _ in client.scan_iter(match=Layout(namespace).entry_pattern, count=1000))


# -- stats and top -------------------------------------------------------------------


async def test_stats_lists_the_instances_running_on_the_deployment(
    deployment: Deployment, make_cache: CacheFactory, namespace: str
) -> None:
    a = await make_cache(heartbeat_interval=0.1)
    b = await make_cache(heartbeat_interval=0.1)
    data = await stats_of_two(deployment.url, namespace, a, b)
    totals = data["totals"]
    assert (totals["instances"], totals["instances_connected"]) == (2, 2)
    assert (totals["hits"], totals["misses"]) == (2, 1)

    result = await cli("stats", "--url", deployment.url, "-n", namespace)
    assert result.exit_code == 0, result.output
    assert "2 live instance(s)" in result.stdout
    assert "2/2 up" in result.stdout

    result = await cli(
        "top",
        "--url",
        deployment.url,
        "-n",
        namespace,
        "--json",
        "--iterations",
        "2",
        "--interval",
        "0.1",
    )
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.splitlines()[-1])
    assert {r["instance"] for r in last["instances"]} == {a.instance_id, b.instance_id}

    await b.close()  # its heartbeat is deleted: gone from the listing at once
    result = await cli("stats", "--url", deployment.url, "-n", namespace, "--json")
    assert [r["instance"] for r in json.loads(result.stdout)["instances"]] == [a.instance_id]


async def test_a_misspelt_namespace_is_refused_naming_those_in_use(
    deployment: Deployment, make_cache: CacheFactory, namespace: str
) -> None:
    a = await make_cache()
    await a.set("k", 1, tags=["t"])
    for command in (["stats"], ["invalidate", "t"], ["clear", "--yes"]):
        result = await cli(*command, "--url", deployment.url, "-n", f"x{namespace}")
        assert result.exit_code == 4, result.output
        assert f"namespace 'x{namespace}' has never been used" in result.stderr
        assert namespace in result.stderr.split("namespaces in use there:")[1]
    assert await a.get("k") == 1


# -- doctor ----------------------------------------------------------------------------


async def test_doctor_passes_on_a_sound_deployment_and_reports_its_topology(
    deployment: Deployment, make_cache: CacheFactory, namespace: str
) -> None:
    a = await make_cache()
    keys = [f"item:{i}" for i in range(60)]
    for key in keys:
        await a.set(key, key)

    result = await cli("doctor", "--url", deployment.url, "-n", namespace, "--json")
    assert result.exit_code == 0, result.output
    checks = _checks(result)
    assert set(checks) == DOCTOR_CHECKS
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    topology = checks["topology"]["detail"]
    masters = deployment.masters()
    if deployment.kind == "cluster":
        assert topology == "cluster, 3 master(s) and 3 replica(s), state ok"
        for name in ("server", "maxmemory-policy", "acl"):
            assert checks[name]["detail"].endswith("(each of 3 masters)"), checks[name]
        assert "slowest of 3 masters" in checks["latency"]["detail"]
        # where the cache itself publishes: SPUBLISH at the master of the channel's slot
        owner = next(
            s for s in masters if s.port == _owner_port(deployment, Layout(namespace).channel)
        )
        assert f"spublish → receive at 127.0.0.1:{owner.port}" in checks["pub/sub"]["detail"]
        assert "SPUBLISH, SSUBSCRIBE" in checks["acl"]["detail"]
        # the entries are spread over the shards, and counted on all of them
        assert sum(1 for s in masters if _entries_on(s, namespace)) > 1
        assert f"{namespace!r}: 60 entries on 3 masters" in checks["namespace"]["detail"]
    else:
        (master,) = masters
        assert topology == (
            f"sentinel, service 'twotier': master 127.0.0.1:{master.port} with 1 replica(s); "
            "3/3 sentinel(s) answer"
        )
        assert checks["pub/sub"]["detail"].startswith("publish → receive")
        assert f"{namespace!r}: 60 entries, 1 live instance(s)" in checks["namespace"]["detail"]
    assert sum(_entries_on(s, namespace) for s in masters) == 60

    result = await cli("doctor", "--url", deployment.url, "-n", namespace)
    assert result.exit_code == 0, result.output
    assert "8 ok, 0 warning(s), 0 failure(s)" in result.stdout


def _owner_port(deployment: Deployment, key: str) -> int:
    with redis.Redis(port=deployment.masters()[0].port, socket_timeout=5) as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                return int(master[1])
    raise AssertionError(f"no master serves the slot of {key!r}")


async def test_doctor_fails_when_one_cluster_master_may_evict_control_keys(
    local_cluster: LocalCluster, namespace: str
) -> None:
    """Every master's policy matters: here not the one of --url's node, nor the
    control slot's (the entries' masters are checked as well)."""
    control = local_cluster.owner_of(Layout(namespace).seq)
    url_node = local_cluster.servers[0]
    odd = next(s for s in local_cluster.masters() if s not in (control, url_node))
    _configure([odd], maxmemory_policy="allkeys-lru")
    try:
        result = await cli("doctor", "--url", local_cluster.url, "-n", namespace, "--json")
    finally:
        _configure([odd], maxmemory_policy="volatile-lru")
    assert result.exit_code == 1, result.output
    check = _checks(result)["maxmemory-policy"]
    assert check["status"] == "fail"
    assert check["detail"].startswith(f"127.0.0.1:{odd.port}: allkeys-lru can evict"), check
    assert check["detail"].endswith("(2 other master(s) ok)")


async def test_doctor_on_a_sentinel_node_names_the_url_to_use(
    local_sentinel: LocalSentinel,
) -> None:
    port = local_sentinel.sentinels[0].port
    result = await cli("doctor", "--url", f"redis://127.0.0.1:{port}", "--json")
    assert result.exit_code == 1, result.output
    topology = _checks(result)["topology"]
    assert topology["status"] == "fail"
    assert f"use redis+sentinel://127.0.0.1:{port}/twotier" in topology["detail"]

    wrong = local_sentinel.url.replace("/twotier", "/nosuch")
    result = await cli("stats", "--url", wrong)
    assert result.exit_code == 3, result.output
    assert "no master for service 'nosuch'" in result.stderr
    assert "the sentinels know no master of that name" in result.stderr


# -- changes through a cache ---------------------------------------------------------------


async def test_invalidate_delete_and_clear_reach_the_running_instances(
    deployment: Deployment, make_cache: CacheFactory, namespace: str
) -> None:
    a = await make_cache()
    b = await make_cache()
    for i in range(20):
        await a.set(f"article:{i}", "old", tags=["articles"])
    await a.set("user:1", "kept", tags=["users"])
    await a.set("user:2", "kept", tags=["users"])
    for i in range(20):
        assert await b.get(f"article:{i}") == "old"  # now in b's L1
    assert await b.get("user:1") == "kept"
    assert await b.get("user:2") == "kept"

    result = await cli("invalidate", "articles", "--url", deployment.url, "-n", namespace)
    assert result.exit_code == 0, result.output
    assert f"in namespace {namespace!r} (2 live instance(s))" in result.stdout
    await eventually(lambda: _entries_are(b, 2))
    assert await b.get("article:3") is None
    assert await b.get("user:1") == "kept"

    # From a shell, as a user types it.
    code, _, err = await shell("delete", "user:1", "--url", deployment.url, "-n", namespace)
    assert code == 0, err
    await eventually(lambda: _entries_are(b, 1))
    assert await b.get("user:1") is None

    await deletes_and_clears(deployment.url, namespace, a, b)


async def test_warmup_fills_the_deployment_for_every_instance(
    deployment: Deployment,
    make_cache: CacheFactory,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"warm_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("def load(key):\n    return {'key': key}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    b = await make_cache()
    keys = tmp_path / "keys.txt"
    keys.write_text("\n".join(f"item:{i}" for i in range(300)) + "\n")

    result = await cli(
        "warmup",
        "--loader",
        f"{module}:load",
        "--keys",
        str(keys),
        "--url",
        deployment.url,
        "-n",
        namespace,
        "--tag",
        "items",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["filled"] == 300
    assert sum(_entries_on(s, namespace) for s in deployment.masters()) == 300
    assert await b.get("item:7") == {"key": "item:7"}
    assert b.get_stats()["l2_hits"] == 1
