"""compose/: the deployment file is valid and runs the ERP service as the contract says.
(No Docker engine here: integration/test_erp.py runs the same topology as processes.)"""

import re
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def test_the_compose_file_runs_three_erp_instances_behind_nginx() -> None:
    spec = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"redis", "postgres", "api1", "api2", "api3", "nginx", "prometheus"} <= set(services)
    for name in ("api1", "api2", "api3"):
        api = services[name]
        assert api["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}
        env = api["environment"]
        assert env["TWOTIER_REDIS_URL"] == "redis://redis:6379/0"
        assert env["TWOTIER_NAMESPACE"] == "erp"
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert set(api["depends_on"]) == {"redis", "postgres"}
    for source in (v.split(":")[0] for v in services["nginx"]["volumes"]):
        assert (COMPOSE / source).exists()
    for source in (v.split(":")[0] for v in services["prometheus"]["volumes"]):
        assert (COMPOSE / source).exists()
    upstreams = re.findall(r"server (api\d):8000;", (COMPOSE / "nginx.conf").read_text())
    assert upstreams == ["api1", "api2", "api3"]


def test_the_image_starts_the_service_with_the_contract_command() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "compose/erp/requirements.txt" in dockerfile
    assert '"-m", "uvicorn", "erp.app:app", "--app-dir", "compose"' in dockerfile
    assert not (COMPOSE / "example_service.py").exists()  # retired
    requirements = (COMPOSE / "erp" / "requirements.txt").read_text()
    for package in ("fastapi", "uvicorn", "sqlalchemy", "aiosqlite", "asyncpg"):
        assert package in requirements


def test_the_prometheus_alerts_are_valid_yaml() -> None:
    rules = yaml.safe_load((COMPOSE / "prometheus" / "alerts.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert "TwotierBreakerOpen" in names
