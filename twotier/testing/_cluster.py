"""A Redis Cluster on loopback, built from plain server processes in about two
seconds: masters with a replica each, the slots split evenly among the masters.

    with LocalCluster.start() as cluster:       # 3 masters, 3 replicas
        cache = TwoTierCache(redis_url=cluster.url)  # any node: cluster mode is detected
        cluster.kill(cluster.owner_of("{ns:v2}:seq"))   # a shard master dies
        cluster.failover(cluster.owner_of(...))          # CLUSTER FAILOVER by its replica

The cluster is made with cluster commands (ADDSLOTSRANGE, MEET, REPLICATE), so
no `redis-cli` is needed. `--cluster-node-timeout 1000` makes a dead master's
replica take over within about two seconds; diskless replication without delay
keeps the first sync short.
"""

from __future__ import annotations

import functools
import time

import redis

from ._process import Launchable, wait_until
from ._server import PortTaken, RedisServer, free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 1000

_CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    str(NODE_TIMEOUT_MS),
    # a replica may always take over, however long it was cut off (tests kill
    # masters that have been idle)
    "--cluster-replica-validity-factor",
    "0",
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
)


class LocalCluster(Launchable):
    """`masters` masters with `replicas` replicas each, one process per node."""

    def __init__(self, flavour: str | None = None, masters: int = 3, replicas: int = 1) -> None:
        count = masters * (1 + replicas)
        self._flavour = flavour
        self._bus_ports = [free_port() for _ in range(count)]
        self.servers = [self._node(bus) for bus in self._bus_ports]
        self.flavour = self.servers[0].flavour
        self._masters = masters

    @property
    def url(self) -> str:
        """A node's URL: the cache finds the others itself."""
        return self.servers[0].url

    def launch(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for index, server in enumerate(self.servers):
            for attempt in range(5):
                try:
                    server.launch()
                    break
                except PortTaken:  # the bus port: taken since it was chosen
                    if attempt == 4:
                        raise
                    server.stop()
                    self._bus_ports[index] = free_port()
                    server = self.servers[index] = self._node(self._bus_ports[index])
        masters, replicas = self.servers[: self._masters], self.servers[self._masters :]
        per_master = SLOTS // len(masters)
        for index, server in enumerate(masters):
            first = index * per_master
            last = SLOTS - 1 if index == len(masters) - 1 else first + per_master - 1
            with self._client(server) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                # distinct config epochs up front: no collision to resolve later
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        for server in self.servers[1:]:
            with self._client(server) as client:
                client.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.servers[0].port, self._bus_ports[0]
                )
        wait_until(deadline, self._everyone_knows_everyone, "nodes meeting")
        for index, server in enumerate(replicas):
            master_id = self.node_id(masters[index % len(masters)])
            wait_until(deadline, functools.partial(self._knows, server, master_id), "replica setup")
            with self._client(server) as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)
        self.wait_healthy(deadline - time.monotonic())

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok and every replica is in sync."""
        wait_until(time.monotonic() + timeout, self._healthy, "a healthy cluster")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    # -- looking at it -----------------------------------------------------------

    def node_id(self, server: RedisServer) -> str:
        with self._client(server) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def owner_of(self, key: str) -> RedisServer:
        """The master that holds *key*'s slot now."""
        for server in self.live():
            with self._client(server) as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
                for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return self._by_port(int(master[1]))
        raise RuntimeError("no live node answers")

    def masters(self) -> list[RedisServer]:
        return [s for s in self.live() if self._role(s) == "master"]

    def replica_of(self, master: RedisServer) -> RedisServer:
        master_id = self.node_id(master)
        for server in self.live():
            with self._client(server) as client:
                info = client.info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                return server
        raise RuntimeError(f"master {master_id} has no live replica")

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def flush(self) -> None:
        """FLUSHALL on every master: a clean slate for the next test."""
        for server in self.masters():
            with self._client(server) as client:
                client.flushall()

    # -- scaling it --------------------------------------------------------------

    def add_master(self, timeout: float = 30.0) -> RedisServer:
        """Scale out: a new, empty master joins; it holds no slot until some
        are moved to it (`CLUSTER SETSLOT`, `MIGRATE`, as a resharding tool does)."""
        deadline = time.monotonic() + timeout
        for attempt in range(5):
            bus = free_port()
            server = self._node(bus)
            try:
                server.launch()
                break
            except PortTaken:  # the bus port: taken since it was chosen
                server.stop()
                if attempt == 4:
                    raise
        known = self.live()[0]
        known_bus = self._bus_ports[self.servers.index(known)]
        with self._client(server) as client:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", known.port, known_bus)
        self.servers.append(server)
        self._bus_ports.append(bus)
        wait_until(deadline, self._everyone_knows_everyone, "the new master meeting the others")
        self.wait_healthy(deadline - time.monotonic())  # it has learned who serves every slot
        return server

    def remove(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Scale in: a node that holds no slot any more leaves (every other node
        forgets it) and stops."""
        node_id = self.node_id(server)
        index = self.servers.index(server)
        del self.servers[index], self._bus_ports[index]
        for other in self.live():
            with self._client(other) as client:
                client.execute_command("CLUSTER", "FORGET", node_id)
        server.stop()
        self.wait_healthy(timeout)

    # -- breaking it -------------------------------------------------------------

    def failover(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """A manual failover (CLUSTER FAILOVER on its replica); the new master."""
        replica = self.replica_of(master)
        with self._client(replica) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        wait_until(
            time.monotonic() + timeout,
            lambda: self._role(replica) == "master" and self._role(master) == "slave",
            "failover",
        )
        self.wait_healthy(timeout)  # the old master in sync as the new one's replica
        return replica

    def take_over(
        self, master: RedisServer, stall: float = 0.5, timeout: float = 20.0
    ) -> RedisServer:
        """A master stalled (SIGSTOP, as in a VM pause) and, *stall* seconds
        later, replaced by an operator's `CLUSTER FAILOVER TAKEOVER` on its
        replica, without waiting for the cluster to agree; the stalled node
        then resumes and learns it was demoted. Returns the new master."""
        replica = self.replica_of(master)
        deadline = time.monotonic() + timeout
        master.pause()
        try:
            time.sleep(stall)
            with self._client(replica) as client:
                client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            wait_until(deadline, lambda: self._role(replica) == "master", "takeover")
        finally:
            master.resume()
        wait_until(deadline, lambda: self._role(master) == "slave", "the stalled master demoted")
        self.wait_healthy(deadline - time.monotonic())
        return replica

    def kill(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """SIGKILL a master; returns its replica once that has taken over."""
        replica = self.replica_of(master)
        master.kill()
        wait_until(time.monotonic() + timeout, lambda: self._role(replica) == "master", "takeover")
        self.wait_healthy(timeout)
        return replica

    # -- internals ---------------------------------------------------------------

    def _node(self, bus_port: int) -> RedisServer:
        # The cluster bus port is given, not derived (port + 10000 overflows
        # for the high ports the OS hands out).
        args = (*_CLUSTER_ARGS, "--cluster-port", str(bus_port))
        return RedisServer(self._flavour, extra_args=args)

    @staticmethod
    def _client(server: RedisServer) -> redis.Redis:
        return redis.Redis(port=server.port, socket_timeout=2, decode_responses=True)

    def _by_port(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def _role(self, server: RedisServer) -> str:
        try:
            with self._client(server) as client:
                return str(client.info("replication").get("role", ""))
        except redis.RedisError:
            return ""

    def _knows(self, server: RedisServer, node_id: str) -> bool:
        with self._client(server) as client:
            return node_id in str(client.execute_command("CLUSTER", "NODES"))

    def _everyone_knows_everyone(self) -> bool:
        for server in self.servers:
            with self._client(server) as client:
                nodes = client.execute_command("CLUSTER", "NODES")
            lines = [line for line in str(nodes).splitlines() if line.strip()]
            if len(lines) < len(self.servers) or "handshake" in str(nodes):
                return False
        return True

    def _healthy(self) -> bool:
        for server in self.live():
            try:
                with self._client(server) as client:
                    if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                        return False
                    info = client.info("replication")
            except redis.RedisError:
                return False
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True
