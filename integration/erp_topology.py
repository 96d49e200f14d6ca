"""The deployment of compose/docker-compose.yml, as processes: uvicorn instances of
compose/erp sharing one database and one Redis, nginx in front, and a PostgreSQL
server run by an unprivileged user. Used by integration/test_erp.py."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from twotier.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited at start:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@dataclass
class Instance:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Fleet:
    """ERP instances (and maybe nginx) sharing a database and a Redis."""

    env: dict[str, str]
    workdir: Path
    instances: list[Instance] = field(default_factory=list)
    nginx: subprocess.Popen[bytes] | None = None
    nginx_port: int = 0

    def start_instance(self) -> Instance:
        port = free_port()
        log = self.workdir / f"erp-{port}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "erp.app:app", "--app-dir", str(COMPOSE),
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                cwd=self.workdir, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        instance = Instance(port, process, log)
        self.instances.append(instance)
        return instance

    def start(self, count: int) -> None:
        # The first instance creates and seeds the database; the others start together.
        first = self.start_instance()
        wait_for(first.url + "/health", first.process, first.log)
        rest = [self.start_instance() for _ in range(count - 1)]
        for instance in rest:
            wait_for(instance.url + "/health", instance.process, instance.log)

    def start_nginx(self) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError(
                "nginx is not installed: .ci/run installs it (apt-get install nginx)"
            )
        self.nginx_port = free_port()
        prefix = self.workdir / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        upstreams = "\n".join(f"    server 127.0.0.1:{i.port};" for i in self.instances)
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(user=user, upstreams=upstreams, port=self.nginx_port, prefix=prefix)
        )
        log = prefix / "logs" / "stdout.log"
        with log.open("ab") as out:
            self.nginx = subprocess.Popen(
                [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(f"http://127.0.0.1:{self.nginx_port}/health", self.nginx, log)

    @property
    def lb(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        for instance in self.instances:
            instance.stop()


# The same load balancing as compose/nginx.conf, on loopback ports.
NGINX_CONF = """
{user}
worker_processes 1;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream erp {{
{upstreams}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://erp;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""


@contextlib.contextmanager
def fleet(env: dict[str, str], count: int, nginx: bool = False) -> Iterator[Fleet]:
    workdir = Path(tempfile.mkdtemp(prefix="twotier-erp-"))
    os.chmod(workdir, 0o755)  # nginx's workers (nobody) read nothing here, but may traverse
    # Only the caller's TWOTIER_* and DATABASE_URL, none inherited from the shell.
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_") and k != "DATABASE_URL"
    }
    full_env = {**inherited, **env}
    group = Fleet(full_env, workdir)
    try:
        group.start(count)
        if nginx:
            group.start_nginx()
        yield group
    finally:
        group.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- PostgreSQL --------------------------------------------------------------------------


def _pg_bindir() -> Path:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, check=True, text=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port; yields its asyncpg URL.

    PostgreSQL refuses to run as root, so as root the cluster belongs to, and
    runs as, the unprivileged `postgres` user (or `nobody`). Never the
    machine's own server on 5432.
    """
    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="twotier-pg-"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        name = next(n for n in ("postgres", "nobody") if _user_exists(n))
        entry = pwd.getpwnam(name)
        for path in (base, sockets):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(base, 0o755)
        prefix = ["runuser", "-u", name, "--"]
    port = free_port()
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-t", "60",
         "-l", str(base / "server.log"), "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
