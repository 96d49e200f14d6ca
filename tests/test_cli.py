"""The ops command line without a server: usage errors, unreachable servers, and
the pieces that need no Redis (totals, URL redaction, loader import).

The commands run in-process through typer's CliRunner; `main` (the dispatcher
that keeps `demo` and `bench` free of typer) runs in subprocesses where the
test hides typer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from twotier.cli import _ops
from twotier.cli._app import app
from twotier.testing import free_port

runner = CliRunner()


@pytest.fixture
def closed_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """A URL nothing listens on; TWOTIER_* variables of the environment cleared."""
    monkeypatch.delenv("TWOTIER_REDIS_URL", raising=False)
    monkeypatch.delenv("TWOTIER_NAMESPACE", raising=False)
    return f"redis://127.0.0.1:{free_port()}/0"


def test_invalidate_without_a_tag_is_a_usage_error(closed_url: str) -> None:
    result = runner.invoke(app, ["invalidate", "--url", closed_url])
    assert result.exit_code == 2, result.output
    assert "Missing argument" in result.output
    assert "TAG..." in result.output


def test_delete_without_a_key_is_a_usage_error(closed_url: str) -> None:
    result = runner.invoke(app, ["delete", "--url", closed_url])
    assert result.exit_code == 2, result.output
    assert "Missing argument" in result.output


def test_clear_without_yes_refuses_before_connecting(closed_url: str) -> None:
    # The URL is closed: a command that connected first would exit 3, not 2.
    result = runner.invoke(app, ["clear", "--url", closed_url, "--namespace", "erp"])
    assert result.exit_code == 2, result.output
    assert "--yes" in result.output
    assert "'erp'" in result.output


@pytest.mark.parametrize("command", ["stats", "top", "doctor", "clear --yes", "invalidate t"])
def test_no_url_says_so(closed_url: str, command: str) -> None:
    result = runner.invoke(app, command.split())
    assert result.exit_code == 2, result.output
    assert "no Redis URL: give --url or set TWOTIER_REDIS_URL" in result.output


@pytest.mark.parametrize("command", ["stats", "clear --yes", "invalidate t", "delete k"])
def test_an_unreachable_server_says_where_and_exits_3(closed_url: str, command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--url", closed_url])
    assert result.exit_code == 3, result.output
    port = closed_url.rsplit(":", 1)[1].split("/")[0]
    assert f"cannot connect to 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.output


def test_doctor_reports_an_unreachable_server_as_a_failed_check(closed_url: str) -> None:
    result = runner.invoke(app, ["doctor", "--url", closed_url, "--json"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["checks"][0]["name"] == "connection"
    assert report["checks"][0]["status"] == "fail"
    assert report["summary"] == {"ok": 0, "warn": 0, "fail": 1}


def test_the_url_comes_from_the_environment(closed_url: str) -> None:
    result = runner.invoke(app, ["stats"], env={"TWOTIER_REDIS_URL": closed_url})
    assert result.exit_code == 3, result.output
    assert closed_url in result.stderr


def test_json_errors_are_json_on_stdout(closed_url: str) -> None:
    result = runner.invoke(app, ["stats", "--json", "--url", closed_url])
    assert result.exit_code == 3
    error = json.loads(result.stdout)
    assert error["exit_code"] == 3
    assert "cannot connect" in error["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "redis://host:notaport/0",
        "unix:///tmp/redis.sock",  # the cache itself takes no unix:// URL
        "redis+sentinel://127.0.0.1/twotier",  # a sentinel without a port
        "redis+sentinel://127.0.0.1:26379",  # no service
        "redis+cluster://127.0.0.1:7000/3",  # a cluster has database 0 only
    ],
)
def test_a_malformed_url_is_a_usage_error(closed_url: str, url: str) -> None:
    result = runner.invoke(app, ["stats", "--url", url])
    assert result.exit_code == 2, result.output
    assert "URL" in result.stderr


def test_an_unreachable_cluster_or_sentinel_says_where_and_exits_3(closed_url: str) -> None:
    port = closed_url.rsplit(":", 1)[1].split("/")[0]
    result = runner.invoke(app, ["stats", "--url", f"redis+cluster://:pw@127.0.0.1:{port}"])
    assert result.exit_code == 3, result.output
    assert f"cannot connect to the cluster of 127.0.0.1:{port}" in result.stderr
    assert "pw" not in result.stderr.replace("redis+cluster://:***@", "")

    result = runner.invoke(app, ["doctor", "--url", f"redis+sentinel://127.0.0.1:{port}/erp"])
    assert result.exit_code == 3, result.output
    assert f"no master for service 'erp' at the sentinels 127.0.0.1:{port}" in result.stdout
    assert "no sentinel answered" in result.stdout
    assert "<redis.asyncio" not in result.output  # not redis-py's reprs of its clients


def test_a_check_of_every_master_says_each_detail_once() -> None:
    from twotier.cli._doctor import Check, _each_master

    ok = Check("maxmemory-policy", "ok", "volatile-lru, maxmemory 1 bytes")
    bad = Check("maxmemory-policy", "fail", "allkeys-lru can evict")
    assert _each_master("m", [("a:1", ok)]) is ok
    assert _each_master("m", [("a:1", ok), ("a:2", ok)]).detail == (
        "volatile-lru, maxmemory 1 bytes (each of 2 masters)"
    )
    mixed = _each_master("m", [("a:1", ok), ("a:2", bad), ("a:3", bad)])
    assert mixed.status == "fail"
    assert mixed.detail == "a:2, a:3: allkeys-lru can evict (1 other master(s) ok)"


def test_a_password_in_a_url_is_never_printed(closed_url: str) -> None:
    url = closed_url.replace("redis://", "redis://user:s3cret@")
    result = runner.invoke(app, ["doctor", "--url", url])
    assert result.exit_code == 3
    assert "s3cret" not in result.output
    assert "user:***@127.0.0.1" in result.output


@pytest.mark.parametrize("namespace", ["a:b", "with space", "{x}", ""])
def test_an_invalid_namespace_is_a_usage_error(closed_url: str, namespace: str) -> None:
    result = runner.invoke(app, ["stats", "--url", closed_url, "--namespace", namespace])
    assert result.exit_code == 2, result.output
    assert "namespace must be" in result.stderr


def test_warmup_with_a_bad_loader_is_a_usage_error(closed_url: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("a\nb\n")
    for loader, says in [
        ("nocolon", "module:function"),
        ("no_such_module_xyz:f", "cannot import"),
        ("json:no_such_function", "has no 'no_such_function'"),
        ("json:__doc__", "is not callable"),
    ]:
        result = runner.invoke(
            app, ["warmup", "--url", closed_url, "--loader", loader, "--keys", str(keys)]
        )
        assert result.exit_code == 2, (loader, result.output)
        assert says in result.stderr, (loader, result.stderr)


def test_warmup_with_a_missing_keys_file_is_a_usage_error(closed_url: str, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["warmup", "--url", closed_url, "--loader", "json:dumps", "--keys", str(tmp_path / "x")],
    )
    assert result.exit_code == 2, result.output
    assert "cannot read the keys file" in result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("twotier 0.")


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("stats", "top", "invalidate", "delete", "clear", "doctor", "warmup"):
        assert command in result.stdout
    assert "demo" in result.stdout
    assert "bench" in result.stdout


def test_totals_add_counters_and_recompute_the_hit_rate() -> None:
    reports = [
        {
            "instance": "a",
            "hits": 3,
            "misses": 1,
            "hit_rate": 75.0,
            "pid": 10,
            "redis_available": True,
            "entries": 5,
            "breaker_state": "closed",
        },
        {
            "instance": "b",
            "hits": 1,
            "misses": 3,
            "hit_rate": 25.0,
            "pid": 11,
            "redis_available": False,
            "entries": 2,
            "reported_at": 1.0,
            "age": 3.0,
        },
    ]
    total = _ops.totals(reports)
    assert total["hits"] == 4
    assert total["misses"] == 4
    assert total["hit_rate"] == 50.0  # of the sums, not the mean of the rates by chance
    assert total["entries"] == 7
    assert total["instances"] == 2
    assert total["instances_connected"] == 1
    assert "pid" not in total
    assert "reported_at" not in total
    assert "redis_available" not in total


def test_totals_of_no_instance() -> None:
    assert _ops.totals([]) == {"hit_rate": 0.0, "instances": 0, "instances_connected": 0}


def test_redact_and_glob_escape() -> None:
    assert _ops.redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert _ops.redact("redis://:pw@h/0") == "redis://:***@h/0"
    assert _ops.redact("redis://h:1/0") == "redis://h:1/0"
    assert _ops.glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


def _main_without(hidden: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    code = (
        f"import sys; sys.modules[{hidden!r}] = None\n"
        "from twotier.cli import main\n"
        f"raise SystemExit(main({args!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_without_typer_the_ops_commands_name_the_extra() -> None:
    result = _main_without("typer", ["stats", "--url", "redis://127.0.0.1:1/0"])
    assert result.returncode == 2, result.stderr
    assert "pip install 'twotier[cli]'" in result.stderr


def test_without_typer_or_rich_demo_still_parses() -> None:
    for hidden in ("typer", "rich"):
        result = _main_without(hidden, ["demo", "--help"])
        assert result.returncode == 0, result.stderr
        assert "--server" in result.stdout
        result = _main_without(hidden, ["--help"])
        assert result.returncode == 0, result.stderr
        assert "demo" in result.stdout
        assert "twotier[cli]" in result.stdout
