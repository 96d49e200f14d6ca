"""The link to Redis: the clients, the guard, the Redis tier and the listener,
and the one decision that depends on all of them — what L1 may serve when part
of the link is away.

    link state                      L1                          L2
    up                              served                      validated reads
    pub/sub link lost, Redis up     suspended until the resync  validated reads
    Redis down (breaker open)       served for ≤ max_stale      none; loaders
    back (breaker closed + resync)  repaired (replay or wipe)   validated reads

The link tells the cache's local side what to do through callbacks, so it never
reaches into L1 itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._events import Events
from ._exceptions import BackendError
from ._guard import Guard
from ._logging import tier_log
from ._mirror import VersionMirror
from ._redis import Layout, RedisTier
from ._stats import Counters
from ._subscriber import RedisListener
from ._tier import Message
from ._topology import Clients, MasterWatch, Target


class RedisLink:
    def __init__(
        self,
        target: Target,
        namespace: str,
        instance_id: str,
        counters: Counters,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        compaction_interval: float,
        health_interval: float,
        max_stale: float,
        lease_ttl: float,
        log_maxlen: int,
        apply_message: Callable[[Message], None],
        mirror_message: Callable[[Message], None],
        clear_local: Callable[[], None],
        suspend_local: Callable[[bool], None],
        bound_local: Callable[[float], None],
        wake_lease_waiters: Callable[[Iterable[str] | None], None],
        flush_outbox: Callable[[], None],
        release_later: Callable[[str, str], None],
        report: Callable[[], dict[str, Any]] = dict,
        heartbeat_interval: float = 5.0,
        events: Events | None = None,
        confirm_replicas: int = 0,
        listen_on_replicas: bool = False,
    ) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._compaction_interval = compaction_interval
        self._report = report
        self._heartbeat_interval = heartbeat_interval
        self._max_stale = max_stale
        self._suspend_local = suspend_local
        self._bound_local = bound_local
        self._wake_lease_waiters = wake_lease_waiters
        self._flush_outbox = flush_outbox
        self._log = tier_log(instance_id, "cache")
        self._events = events if events is not None else Events((), self._log)
        self.degraded = False
        self.clients = Clients(
            target,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            prepare=self._prepare_connection,
            listen_on_replicas=listen_on_replicas,
        )
        self._client = self.clients.data
        layout = Layout(namespace)
        self.guard = Guard(
            timeout=timeout,
            ping=self._ping,
            on_open=self._on_redis_down,
            on_recover=self._on_redis_back,
            probe_max_interval=health_interval,  # recover as fast as we notice loss
            probe_timeout=connect_timeout + timeout,
            tls=target.tls,
            log=tier_log(instance_id, "l2"),
        )
        self.tier = RedisTier(
            self._client,
            self.guard,
            layout,
            instance_id,
            lease_ttl=lease_ttl,
            log_maxlen=log_maxlen,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
            compaction_margin=max(compaction_interval, health_interval * 10),
            orphaned=release_later,
            make_connection=self.clients.make_connection,
            sharded=self.clients.bus.sharded,
            confirm_replicas=confirm_replicas,
        )
        self.mirror = VersionMirror(self.tier.versions)
        self.tier.on_bumped = self.mirror.bumped
        self.tier.on_cleared = self.mirror.cleared
        shard_log = tier_log(instance_id, "l2")
        self.tier.on_shard_repair = lambda node, keys: shard_log.warning(
            "cluster node %s may have lost %d logged change(s) of its keys "
            "(a promoted replica, or a restore): deleting and announcing them again",
            node,
            keys,
        )
        # The listener gets its own client: a pub/sub connection must not share
        # the socket timeout of data calls (it waits for messages by design).
        self.listener = RedisListener(
            self.clients.bus,
            self.tier,
            instance_id,
            self.mirror,
            apply=apply_message,
            apply_own=mirror_message,
            clear_local=clear_local,
            suspend_local=suspend_local,
            on_link_lost=self._on_link_lost,
            on_synced=self._on_synced,
            on_lease_end=wake_lease_waiters,
            counters=counters,
            health_interval=health_interval,
            log=tier_log(instance_id, "bus"),
            describe=self.guard.describe_error,
            on_resync=self._events.resynced,
        )
        self._listener_task: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # Sentinel: the master's moves, as the sentinels announce them.
        self._watch = (
            MasterWatch(
                self.clients, self._master_moved, health_interval, tier_log(instance_id, "l2")
            )
            if self.clients.sentinel is not None
            else None
        )
        self._closing = False

    async def _ping(self) -> object:
        """The health probe: the server itself, or in a cluster the master of the
        namespace's control slot (a PING would go to every node)."""
        if self.clients.kind == "cluster":
            return await self._client.exists(self.tier.layout.seq)
        return await self._client.ping()

    async def ping(self) -> object:
        return await self._ping()

    async def _master_moved(self) -> None:
        """Sentinel promoted another server: leave the old master at once.

        The old one can go on accepting writes for seconds (a manual failover
        demotes it only on the sentinels' next poll), and what it takes then is
        lost. Every connection is dropped; new ones ask the sentinels where the
        master is; the listener resubscribes there and resyncs.
        """
        self._log.warning("Sentinel moved the master; reconnecting")
        await self._client.connection_pool.disconnect()
        await self.tier.reconnect()
        await self.listener.reconnect()

    async def _prepare_connection(self, connection: Any) -> None:
        await self.tier.prepare(connection)

    @property
    def last_error(self) -> str | None:
        """Why Redis is not usable, when it is not (a cause, not just "unreachable")."""
        causes = dict.fromkeys(e for e in (self.guard.last_error, self.listener.last_error) if e)
        return "; ".join(causes) or None

    @property
    def available(self) -> bool:
        """Redis answers and the invalidation link is up."""
        return self.guard.available and self.listening

    @property
    def listening(self) -> bool:
        return self.listener.connected.is_set()

    async def start(self) -> None:
        # Connections first: meeting the server may start a new generation
        # (see RedisTier.prepare), which had better precede the subscription.
        await self._warm_pool()
        loop = asyncio.get_running_loop()
        self._listener_task = loop.create_task(self.listener.run())
        self._compactor = loop.create_task(self._compact_periodically())
        self._heartbeat = loop.create_task(self._report_periodically())
        if self._watch is not None:
            self._watch.start()
        try:
            # Wait briefly for the subscription; a dead Redis must not block start-up.
            async with asyncio.timeout(max(1.0, 2 * self._connect_timeout + 10 * self._timeout)):
                await self.listener.connected.wait()
        except TimeoutError:
            self._log.warning(
                "Redis not usable at start (%s); running degraded",
                self.last_error or "no answer",
            )
            self._degrade()

    async def _warm_pool(self) -> None:
        """Open the read pipe's connection (the server met, the scripts there)
        before the first request needs it. Only that one: it carries commands
        as well as reads, and pool connections open under load (issue 20,
        item 3; four were warmed here before, and each held for good)."""
        # Redis not usable yet: `start` runs degraded and the listener retries.
        with contextlib.suppress(BackendError):
            await self.tier.open_reads()

    async def _compact_periodically(self) -> None:
        """Drop tag versions no live entry can carry (guarantee 10), now and then.

        Every instance does it, at jittered times; the script is idempotent and
        cheap when there is nothing to drop.
        """
        while not self._closing:
            interval = self._compaction_interval
            await asyncio.sleep(interval * (0.5 + random.random()))  # noqa: S311  # not crypto
            if self.guard.available:
                with contextlib.suppress(BackendError):
                    await self.tier.compact()

    async def _report_periodically(self) -> None:
        """Each instance's stats in Redis, with a TTL of three intervals, so that
        `twotier stats` sees every live instance of the namespace and no dead one."""
        await self.listener.connected.wait()  # the first report after a working start
        while not self._closing:
            if self.guard.available:
                report = {**self._report(), "host": socket.gethostname(), "pid": os.getpid()}
                report["reported_at"] = time.time()
                with contextlib.suppress(BackendError):
                    await self.tier.heartbeat(
                        json.dumps(report).encode(), 3 * self._heartbeat_interval
                    )
                # Pool connections opened by a burst are given back once idle.
                await self.tier.trim()
            await asyncio.sleep(self._heartbeat_interval)

    async def close(self) -> None:
        self._closing = True
        for task in (self._compactor, self._heartbeat):
            # A cancellation that lands in a Redis call can come back as a
            # connection error, which these loops survive: cancel until done.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=self._timeout)
        if self.guard.available:
            with contextlib.suppress(BackendError):
                await self.tier.forget_heartbeat()
        if self._listener_task is not None:
            await self.listener.stop(self._listener_task)
        if self._watch is not None:
            await self._watch.stop()
        await self.guard.close()
        await self.tier.close()
        await self.clients.aclose()

    def _on_link_lost(self) -> None:
        """The invalidation link dropped. Changes may be missed from now on.

        While Redis itself still answers, L1 is suspended: reads go to L2, which
        validates every entry, until the resync on reconnect has repaired L1
        (issue 3: "replays or clears before serving L1 again"). Only when Redis
        is down altogether (`_on_redis_down`) does L1 serve, and only within
        `max_stale`. Waiters on another instance's fill lease stop waiting:
        the message that would wake them may be lost.
        """
        self._wake_lease_waiters(None)
        if self.guard.available:
            self._suspend_local(True)
        else:
            self._degrade()

    def _on_redis_down(self) -> None:
        """The breaker opened: nobody can tell us about changes, and L2 is gone too."""
        self._events.breaker_changed("open")
        self._suspend_local(False)
        self._degrade()

    def _degrade(self) -> None:
        if self.degraded:
            return
        self.degraded = True
        self._bound_local(self._max_stale)
        self._log.warning(
            "degraded: L1 entries are served for at most %.1f s more", self._max_stale
        )

    def _on_synced(self) -> None:
        if self.guard.available:
            self._recovered()

    async def _on_redis_back(self) -> None:
        self._events.breaker_changed("closed")
        if self.listening:
            self._recovered()
        self._flush_outbox()  # the changes queued meanwhile: Redis takes them again

    def _recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            self._log.warning("recovered: Redis and the invalidation link are back")
        self._flush_outbox()
