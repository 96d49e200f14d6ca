"""A Sentinel set on loopback: one master, one replica, three sentinels, in
about two seconds.

    with LocalSentinel.start() as sentinel:
        cache = TwoTierCache(redis_url=sentinel.url)   # redis+sentinel://…/twotier
        sentinel.failover()        # SENTINEL FAILOVER: the old master lingers
        sentinel.kill_master()     # SIGKILL: the replica takes over after ~1 s

The sentinels start only once the replica has synced: a sentinel that meets
the master first learns about the replica on its next INFO poll, ten seconds
later. `down-after-milliseconds` is 1,000, so a killed master is replaced
within about two seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from ._process import Launchable, wait_until
from ._server import RedisServer

SERVICE = "twotier"
DOWN_AFTER_MS = 1000

_REPLICATION_ARGS = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


class LocalSentinel(Launchable):
    def __init__(
        self, flavour: str | None = None, sentinels: int = 3, password: str | None = None
    ) -> None:
        # One password, if any, for master, replica and sentinels alike.
        self.password = password
        auth = ("--requirepass", password, "--masterauth", password) if password else ()
        self._data_args = (*_REPLICATION_ARGS, *auth)
        self.master = RedisServer(flavour, extra_args=self._data_args)
        self.flavour = self.master.flavour
        self.replica = RedisServer(self.flavour)  # told whom to follow once the master is up
        self.servers = [self.master, self.replica]
        self.sentinels: list[RedisServer] = []  # made once the master's port is final
        self._count = sentinels

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.password is None:
            return f"redis+sentinel://{hosts}/{SERVICE}"
        secret = self.password
        return f"redis+sentinel://:{secret}@{hosts}/{SERVICE}?sentinel_password={secret}"

    def launch(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        self.master.launch()
        self.replica.extra_args = (
            *self._data_args,
            "--replicaof",
            "127.0.0.1",
            str(self.master.port),
        )
        self.replica.launch()
        try:
            wait_until(
                deadline, lambda: _in_sync(self.replica, self.password), "the replica's first sync"
            )
        except RuntimeError as exc:  # say why: the replica's view and both logs
            raise RuntimeError(f"{exc}: {self._replication_report()}") from None
        quorum = self._count // 2 + 1
        config = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        if self.password:  # to the data servers, and the sentinels' own
            config += f"sentinel auth-pass {SERVICE} {self.password}\nrequirepass {self.password}\n"
        self.sentinels = [
            RedisServer(self.flavour, extra_args=("--sentinel",), config=config)
            for _ in range(self._count)
        ]
        for sentinel in self.sentinels:
            sentinel.launch()
        wait_until(deadline, self._sentinels_agree, "the sentinels to see master and replica")

    def stop(self) -> None:
        for server in (*self.sentinels, *self.servers):
            server.stop()

    def _replication_report(self) -> str:
        try:
            with _client(self.replica, self.password) as client:
                info = client.info("replication")
        except redis.RedisError as exc:
            info = {"error": repr(exc)}
        logs = {
            name: _tail(server)
            for name, server in (("master", self.master), ("replica", self.replica))
        }
        return f"replica {self.replica.port} INFO replication {info}; logs {logs}"

    def current_master(self) -> RedisServer:
        """The master the sentinels name now."""
        with _client(self.sentinels[0], self.password) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return next(s for s in self.servers if s.port == int(port))

    def failover(self, timeout: float = 20.0) -> RedisServer:
        """`SENTINEL FAILOVER`: the replica is promoted at once, while the old
        master stays a master, accepting writes, until a sentinel demotes it on
        its next INFO poll (about 10 s): the split brain. Returns the new master."""
        old = self.current_master()
        new = next(s for s in self.servers if s is not old)
        with _client(self.sentinels[0], self.password) as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        wait_until(
            time.monotonic() + timeout,
            lambda: _role(new, self.password) == "master" and self._named_by_all(new),
            "the failover",
        )
        return new

    def kill_master(self, timeout: float = 20.0) -> RedisServer:
        """SIGKILL the master; returns the replica once the sentinels promoted it."""
        old = self.current_master()
        new = next(s for s in self.servers if s is not old)
        old.kill()
        wait_until(
            time.monotonic() + timeout,
            lambda: _role(new, self.password) == "master" and self._named_by_all(new),
            "the takeover",
        )
        return new

    def wait_demoted(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Until *server* (a former master) replicates from the current one."""
        wait_until(
            time.monotonic() + timeout,
            lambda: _in_sync(server, self.password),
            "the old master's demotion",
        )

    def _named_by_all(self, server: RedisServer) -> bool:
        for sentinel in self.sentinels:
            with _client(sentinel, self.password) as client:
                _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            if int(port) != server.port:
                return False
        return True

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with _client(sentinel, self.password) as client:
                fields = client.sentinel_master(SERVICE)  # parsed: num_slaves, ...
                if int(fields.get("num-slaves", 0)) < 1:
                    return False
                if int(fields.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                    return False
        return True


def _client(server: RedisServer, password: str | None) -> redis.Redis:
    return redis.Redis(port=server.port, password=password, socket_timeout=2, decode_responses=True)


def _role(server: RedisServer, password: str | None) -> str:
    try:
        with _client(server, password) as client:
            return str(client.info("replication").get("role", ""))
    except redis.RedisError:
        return ""


def _in_sync(server: RedisServer, password: str | None) -> bool:
    with _client(server, password) as client:
        info = client.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


def _tail(server: RedisServer, lines: int = 8) -> str:
    log = Path(server.dir) / "server.log"
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return repr(exc)
