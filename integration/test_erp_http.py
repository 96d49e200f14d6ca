"""Issue 19 on real servers: the example ERP service under uvicorn, three instances
sharing Redis behind nginx (integration/erp_topology.py). The safe patterns hold
over the network and across instances: per-user answers keyed by the user and sent
private with Vary, ETags equal on every instance and matched over several
If-None-Match lines, FastAPI's own OpenAPI schema, and Redis key names without the
callers' identities."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from twotier.testing import RedisServer

from .erp_topology import Fleet, fleet

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.start() as running:
        yield running


@pytest.fixture(scope="module")
def erp(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    db = tmp_path_factory.mktemp("erp-http") / "erp.sqlite3"
    env = {
        "TWOTIER_REDIS_URL": server.url,
        "TWOTIER_NAMESPACE": f"erph{uuid.uuid4().hex[:6]}",
        "TWOTIER_REDIS_TIMEOUT": "0.5",
        "DATABASE_URL": f"sqlite:///{db}",
    }
    with fleet(env, 3, nginx=True) as group:
        yield group


def test_dashboards_are_per_user_private_and_varied_through_the_balancer(erp: Fleet) -> None:
    answers = {}
    for user in ("1", "2", "3", "1", "2", "3"):
        response = httpx.get(f"{erp.lb}/dashboard", headers={"X-User-Id": user}, timeout=10)
        assert response.status_code == 200
        owners = {row["customer"]["owner_user_id"] for row in response.json()}
        assert owners == {int(user)}
        assert response.headers["cache-control"].startswith("private, max-age=")
        assert "x-user-id" in response.headers["vary"].lower()
        answers.setdefault(user, response.json())
        assert response.json() == answers[user]


def test_etags_match_on_every_instance_and_over_several_lines(erp: Fleet) -> None:
    a, b, c = (i.url for i in erp.instances)
    first = httpx.get(f"{a}/charges/17", timeout=10)
    etag = first.headers["etag"]
    assert int(first.headers["age"]) >= 0
    lines = [("If-None-Match", '"stale"'), ("If-None-Match", etag)]
    for url in (b, c):
        again = httpx.get(f"{url}/charges/17", headers=lines, timeout=10)
        assert (again.status_code, again.headers["etag"]) == (304, etag)


def test_openapi_is_fastapis_own_and_keys_hold_no_identity(erp: Fleet, server: RedisServer) -> None:
    schema = httpx.get(f"{erp.instances[0].url}/openapi.json", timeout=10).json()
    ok = schema["paths"]["/charges/{charge_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChargeOut"}
    httpx.get(f"{erp.lb}/dashboard", headers={"X-User-Id": "4"}, timeout=10)
    with redis.Redis.from_url(server.url) as client:
        names = [k.decode() for k in client.scan_iter(count=1000)]
    dashboards = [n for n in names if "customers.dashboard.http" in n]
    assert dashboards
    assert all("user_id" not in n and "=4" not in n for n in dashboards)
