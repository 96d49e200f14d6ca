"""compose/docker-compose.yml, the ERP example's deployment, checked by a real validator
of the Compose Specification (issue 19, item 8): check-jsonschema with the compose-spec
JSON schema it ships (`vendor.compose-spec`, the schema `docker compose config` is
built on). The CI machines have no Docker engine and Debian ships no `docker compose`
plugin, only the retired Python docker-compose 1.x, so the schema is the reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMPOSE = Path(__file__).resolve().parent.parent / "compose"


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_compose_file_is_valid_compose() -> None:
    result = validate(COMPOSE / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_refuses_an_invalid_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    text = (COMPOSE / "docker-compose.yml").read_text()
    broken.write_text(text.replace('ports: ["8001:8000"]', 'ports: "8001:8000"', 1))
    assert text != broken.read_text()
    result = validate(broken)
    assert result.returncode == 1
    assert "api1" in result.stdout
