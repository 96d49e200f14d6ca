"""The example ERP service as deployed (compose/docker-compose.yml), run as processes:
one Redis, three uvicorn instances of compose/erp sharing one SQLite file, nginx in
front; and two instances on a real PostgreSQL. httpx drives them per instance and
through the load balancer (issue 10, "The deployment, and proof that it runs")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from twotier.testing import RedisServer

from .erp_topology import Fleet, fleet, postgres_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.start() as server:
        yield server


def cache_env(server: RedisServer) -> dict[str, str]:
    return {
        "TWOTIER_REDIS_URL": server.url,
        "TWOTIER_NAMESPACE": f"erp{uuid.uuid4().hex[:6]}",
        "TWOTIER_REDIS_TIMEOUT": "0.5",  # a shared CI machine stalls now and then
        "TWOTIER_MAX_STALE": "2",
    }


@pytest.fixture(scope="module")
def sqlite_fleet(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    db = tmp_path_factory.mktemp("erp") / "erp.sqlite3"
    env = {**cache_env(redis_server), "DATABASE_URL": f"sqlite:///{db}"}
    with fleet(env, 3, nginx=True) as group:
        yield group


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=10)


def put_amount(url: str, charge_id: int, amount: Any) -> httpx.Response:
    return httpx.put(f"{url}/charges/{charge_id}", json={"amount": amount}, timeout=10)


def eventually(check: Any, timeout: float = 2.0) -> Any:
    """The bus delivers within milliseconds; allow a stalled CI machine two seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_an_update_through_one_instance_is_seen_by_all(sqlite_fleet: Fleet) -> None:
    a, b, c = (i.url for i in sqlite_fleet.instances)
    first = get(f"{a}/charges/5")
    assert first.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert get(f"{a}/charges/5").headers["x-cache"] == "L1"
    on_c = get(f"{c}/charges/5")
    assert on_c.headers["x-cache"] == "L2"  # loaded by A, shared through Redis
    assert on_c.json() == first.json()

    new = first.json()["amount"] + 100.25
    put = put_amount(b, 5, new)
    assert put.status_code == 200
    assert put.json()["amount"] == new

    def seen(url: str) -> None:
        response = get(f"{url}/charges/5")
        assert response.json()["amount"] == new, url

    for url in (a, b, c):
        eventually(lambda url=url: seen(url))


def test_etag_is_shared_and_stops_matching_after_a_put_elsewhere(sqlite_fleet: Fleet) -> None:
    a, b, c = (i.url for i in sqlite_fleet.instances)
    first = get(f"{a}/charges/11")
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("max-age=")
    assert 0 < int(first.headers["cache-control"].removeprefix("max-age=")) <= 180
    # The same version of the entry has the same ETag on every instance.
    on_b = get(f"{b}/charges/11", **{"If-None-Match": etag})
    assert on_b.status_code == 304
    assert on_b.headers["x-cache"] == "L2"
    assert on_b.headers["etag"] == etag
    assert get(f"{a}/charges/11", **{"If-None-Match": etag}).status_code == 304

    assert put_amount(c, 11, 42.5).status_code == 200

    def changed(url: str) -> None:
        response = get(f"{url}/charges/11", **{"If-None-Match": etag})
        assert response.status_code == 200, url
        assert response.json()["amount"] == 42.5
        assert response.headers["etag"] != etag

    for url in (a, b):
        eventually(lambda url=url: changed(url))


def test_stats_lists_and_reports_stay_coherent(sqlite_fleet: Fleet) -> None:
    a, b, c = (i.url for i in sqlite_fleet.instances)
    before = {u: get(f"{u}/charges/stats").json() for u in (a, b, c)}
    assert before[a] == before[b] == before[c]
    revenue = get(f"{a}/reports/revenue").json()
    charge = get(f"{b}/charges/20").json()
    assert put_amount(c, 20, charge["amount"] + 1000).status_code == 200

    def updated(url: str) -> None:
        stats = get(f"{url}/charges/stats").json()
        assert round(stats["total"] - before[url]["total"], 2) == 1000.0
        rows = {r["id"]: r for r in get(f"{url}/charges").json()}
        assert rows[20]["amount"] == charge["amount"] + 1000
        months = {r["month"]: r["revenue"] for r in get(f"{url}/reports/revenue").json()}
        old = {r["month"]: r["revenue"] for r in revenue}
        assert round(sum(months.values()) - sum(old.values()), 2) == 1000.0

    for url in (a, b, c):
        eventually(lambda url=url: updated(url))


def test_bad_input_and_missing_rows(sqlite_fleet: Fleet) -> None:
    a, b, _ = (i.url for i in sqlite_fleet.instances)
    before = get(f"{a}/charges/3").json()
    for body in ({"amount": "lots"}, {"amount": 1, "colour": "red"}, {}, [1]):
        assert httpx.put(f"{b}/charges/3", json=body, timeout=10).status_code == 422
    assert get(f"{a}/charges/3").json() == before  # nothing changed
    missing = get(f"{a}/charges/99999")
    assert missing.status_code == 404
    assert "x-cache" not in missing.headers  # an error: never cached
    assert put_amount(b, 99999, 1).status_code == 404
    assert get(f"{a}/articles/3").status_code == 200
    assert len(get(f"{a}/articles").json()) == 100  # all articles, unfiltered
    listed = httpx.get(f"{a}/articles", params={"category": "tools"}, timeout=10).json()
    assert listed
    assert {r["category"] for r in listed} == {"tools"}


def test_per_user_dashboards_are_per_user(sqlite_fleet: Fleet) -> None:
    a, b, _ = (i.url for i in sqlite_fleet.instances)
    one = get(f"{a}/dashboard", **{"X-User-Id": "1"})
    two = get(f"{b}/dashboard", **{"X-User-Id": "2"})
    assert one.headers["cache-control"].startswith("private")
    assert {r["customer"]["owner_user_id"] for r in one.json()} == {1}
    assert {r["customer"]["owner_user_id"] for r in two.json()} == {2}
    assert get(f"{b}/dashboard", **{"X-User-Id": "1"}).json() == one.json()


def test_health_and_metrics(sqlite_fleet: Fleet) -> None:
    for instance in sqlite_fleet.instances:
        health = get(f"{instance.url}/health")
        assert health.status_code == 200
        body = health.json()
        assert (body["status"], body["redis"], body["database"]) == ("ok", "up", "up")
        assert body["breaker"] == "closed"
        assert body["cache_ping_ms"] >= 0
        metrics = get(f"{instance.url}/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "# TYPE twotier_l2_read_seconds histogram" in metrics.text
        assert f'instance_id="{body["instance"]}"' in metrics.text
        assert "twotier_redis_available{" in metrics.text


def test_through_nginx(sqlite_fleet: Fleet) -> None:
    lb = sqlite_fleet.lb
    seen = {get(f"{lb}/health").json()["instance"] for _ in range(9)}
    assert len(seen) == 3  # round robin over the three instances
    tiers = {get(f"{lb}/charges/30").headers["x-cache"] for _ in range(6)}
    assert "MISS" not in tiers or len(tiers) > 1
    assert put_amount(lb, 30, 7.77).status_code == 200

    def everywhere() -> None:
        amounts = {get(f"{lb}/charges/30").json()["amount"] for _ in range(6)}
        assert amounts == {7.77}

    eventually(everywhere)
    etag = get(f"{lb}/charges/30").headers["etag"]
    assert all(
        get(f"{lb}/charges/30", **{"If-None-Match": etag}).status_code == 304 for _ in range(6)
    )


def test_redis_killed_under_load_then_nothing_stale(
    sqlite_fleet: Fleet, redis_server: RedisServer
) -> None:
    """Runs last in this module: it kills and restarts the shared Redis."""
    urls = [i.url for i in sqlite_fleet.instances]
    ids = list(range(40, 50))
    for url in urls:
        for i in ids:
            assert get(f"{url}/charges/{i}").status_code == 200
    redis_server.kill()
    statuses: list[int] = []
    deadline = time.monotonic() + 3
    n = 0
    while time.monotonic() < deadline:
        url, i = urls[n % 3], ids[n % len(ids)]
        statuses.append(get(f"{url}/charges/{i}").status_code)
        n += 1
    assert statuses
    assert set(statuses) == {200}
    health = get(f"{urls[0]}/health").json()
    assert (health["status"], health["redis"]) == ("degraded", "down")
    # A write while Redis is away: applied here, queued for the others.
    assert put_amount(urls[1], 45, 45.45).status_code == 200
    redis_server.launch()  # an empty Redis, a new run id: every instance resyncs

    def recovered(url: str) -> None:
        assert get(f"{url}/charges/45").json()["amount"] == 45.45, url
        assert get(f"{url}/health").json()["status"] == "ok", url

    for url in urls:
        eventually(lambda url=url: recovered(url), timeout=15)


def test_postgresql(redis_server: RedisServer) -> None:
    with (
        postgres_server() as database,
        fleet({**cache_env(redis_server), "DATABASE_URL": database}, 2) as group,
    ):
        a, b = (i.url for i in group.instances)
        first = get(f"{a}/charges/8")
        assert first.status_code == 200
        etag = first.headers["etag"]
        assert get(f"{b}/charges/8", **{"If-None-Match": etag}).status_code == 304
        assert put_amount(b, 8, 808.08).status_code == 200

        def seen() -> None:
            response = get(f"{a}/charges/8", **{"If-None-Match": etag})
            assert response.status_code == 200
            assert response.json()["amount"] == 808.08

        eventually(seen)
        assert get(f"{a}/health").json()["database"] == "up"
        assert len(get(f"{b}/charges").json()) == 200  # seeded once, not twice
