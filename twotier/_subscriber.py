"""The Redis invalidation listener: pub/sub in, sequence checks, resync.

Pub/sub is at-most-once. Every message carries the sequence number Redis gave
the change, so the listener knows exactly when it missed something:

* next number            → apply it;
* a number it has seen   → ignore it (only its own replay can cause that);
* a jump                 → fetch the missing changes from the log and apply them;
* a reconnect, a new server run id, or an idle link whose counter moved
                         → the same replay, from the last number applied.

When the log no longer reaches back, or the server is a new one, the only safe
answer is to clear L1. While a resync is under way L1 is suspended (neither
served nor filled), so nothing stale is served "before the repair lands".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import redis.exceptions as redis_errors

from ._channel import Subscription, not_following
from ._exceptions import BackendError
from ._logging import Log
from ._mirror import VersionMirror
from ._redis import RedisTier
from ._stats import Counters
from ._tier import Message
from ._topology import Bus


def _seq(data: bytes) -> int:
    """The counter's value; 0 for foreign data (as `RedisTier.current_seq`)."""
    try:
        return int(data)
    except ValueError:
        return 0


_FIRST_BACKOFF = 0.01  # seconds: the first reconnect's bound; doubles up to health_interval
# Health intervals between a displaced listener's looks for a replica (one
# wanted, and none was ready, or the one there failed the last subscription:
# after a failover it may have been resyncing, not broken).
_BACK_TO_A_REPLICA = 10


class RedisListener:
    def __init__(
        self,
        bus: Bus,
        tier: RedisTier,
        origin: str,
        mirror: VersionMirror,
        *,
        apply: Callable[[Message], None],
        apply_own: Callable[[Message], None],
        clear_local: Callable[[], None],
        suspend_local: Callable[[bool], None],
        on_link_lost: Callable[[], None],
        on_synced: Callable[[], None],
        on_lease_end: Callable[[tuple[str, ...] | None], None],
        counters: Counters,
        health_interval: float,
        log: Log,
        describe: Callable[[BaseException], str] = repr,
        on_resync: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._bus = bus
        self._subscription: Subscription | None = None
        self._tier = tier
        self._origin = origin
        # Trusted only while this listener is subscribed and in sync: the
        # mirror's versions are then as current as the change stream.
        self._mirror = mirror
        self._apply = apply
        self._apply_own = apply_own
        self._clear_local = clear_local
        self._suspend_local = suspend_local
        self._on_link_lost = on_link_lost
        self._on_synced = on_synced
        self._on_lease_end = on_lease_end
        self._counters = counters
        self._health_interval = health_interval
        self._log = log
        self._describe = describe
        self._on_resync = on_resync
        self._last_seq: int | None = None
        # Numbers in (floor, last] were applied by the last replay and may still
        # arrive over pub/sub; a number at or below the floor means the counter
        # went back (FLUSHALL, a restart) and forces a resync.
        self._replay_floor = 0
        self._server_id: str | None = None
        self.connected = asyncio.Event()
        # A flag besides task.cancel(): redis-py and asyncio.timeout can swallow a
        # cancellation that races a read timeout, and this loop must still end.
        self._stopping = False
        self._backoff = _FIRST_BACKOFF
        self.last_error: str | None = None

    async def run(self) -> None:
        """Listen until cancelled; reconnect with a short backoff after any failure."""
        try:
            await self._run()
        except asyncio.CancelledError:
            self._mirror.trusted = False
            if not self._stopping:
                # Cancelled by its event loop's shutdown (the end of an
                # asyncio.run), not by close(): from now on nobody tells L1
                # about changes, so it must not serve, even to the next loop.
                self.connected.clear()
                self._suspend_local(True)
            raise

    async def _run(self) -> None:
        while not self._stopping:
            if self.last_error is not None:
                await self._back_off()
            try:
                await self._listen_once()
            except (
                redis_errors.RedisError,
                redis_errors.RedisClusterException,  # e.g. no cluster node answers at all
                OSError,
                BackendError,
                TimeoutError,
            ) as exc:
                cause = self._describe(exc)
                if self.connected.is_set() or cause != self.last_error:
                    self._log.warning("invalidation link lost or refused (%s)", cause)
                self.last_error = cause
                self._lost()
            except Exception as exc:
                # Anything else — a frame no parser expected, a bug on the way to
                # L1 — must not end the listener: it ended silently once and the
                # instance served stale values for good (issue 17, case 4). What
                # was applied is unknown, so L1 is wiped and suspended until the
                # resync.
                self._counters.listener_errors += 1
                self.last_error = f"unexpected {self._describe(exc)}"[:200]
                self._log.error(
                    "invalidation listener failed; reconnecting and resyncing", exc_info=exc
                )
                self._suspend_local(True)
                # A message that failed half-way was counted already: the resync
                # would find nothing missing, and what it changed would stay in L1.
                self._wipe("the listener failed applying a message")
                self._lost()

    def _lost(self) -> None:
        self.connected.clear()
        self._mirror.trusted = False
        self._on_link_lost()  # the cache decides what L1 may serve meanwhile

    async def _back_off(self) -> None:
        """Wait before reconnecting: a random share of the backoff ("full
        jitter"), so that a fleet cut off at once (a failover, a restart)
        comes back spread over the interval, not in the same millisecond,
        each instance with its connect, `server.lua`, counter read and log
        replay (issue 20, item 6)."""
        await asyncio.sleep(random.uniform(0.0, self._backoff))  # noqa: S311  # not crypto
        self._backoff = min(self._backoff * 2, self._health_interval)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """End the loop running in *task*, even if a cancellation gets lost on the way."""
        self._stopping = True
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=self._health_interval)
        self.connected.clear()  # a closed cache hears nothing: not available

    async def reconnect(self) -> None:
        """Drop the subscription (the server it is on is no longer the master):
        the loop subscribes again where the channel is now, and resyncs."""
        if self._subscription is not None:
            await self._subscription.close()

    async def _listen_once(self) -> None:
        channel = self._tier.layout.channel
        # Wait for the confirmation: only from here on is no change missed,
        # so the resync below reads the counter after it. Bounded, because a
        # hung server (SIGSTOP) still accepts TCP connections and never answers.
        async with asyncio.timeout(2 * self._health_interval):
            subscription = await self._bus.subscription(channel, self._health_interval)
        self._subscription = subscription
        try:
            async with asyncio.timeout(2 * self._health_interval):
                await subscription.open(
                    self._tier.layout.seq if self._bus.sharded else None,
                    replica=self._bus.on_replica,
                )
            await self._resync("connected")
            self.last_error = None
            self.connected.set()
            self._on_synced()
            self._backoff = _FIRST_BACKOFF  # a later loss reconnects quickly again
            await self._listen(subscription)
        finally:
            self._subscription = None
            await subscription.close()

    async def _listen(self, subscription: Subscription) -> None:
        """Apply the channel's messages as they come; on a whole health interval
        without a frame, ping, and see whether the counter moved.

        One idle timer per interval, not a timeout per read: it fires every
        interval, and only an interval in which no frame came counts as idle.
        It is off while a resync runs (a resync is never cut short by it)."""
        loop = asyncio.get_running_loop()
        pending_ping = False
        back_to_a_replica = loop.time() + _BACK_TO_A_REPLICA * self._health_interval
        while not self._stopping:
            if self._bus.displaced and loop.time() > back_to_a_replica:
                if await self._bus.replica_ready(self._tier.layout.channel):
                    # A planned move, not a failure: no warning, no backoff;
                    # L1 is suspended until the new subscription has resynced.
                    self._log.info("moving the invalidation channel back to a replica")
                    self._lost()
                    return
                back_to_a_replica = loop.time() + _BACK_TO_A_REPLICA * self._health_interval
            frames = subscription.frames
            idle = asyncio.timeout(self._health_interval)
            try:
                async with idle:
                    while not self._stopping:
                        kind, data = await subscription.next()
                        resync: str | None = None
                        if kind == "message":
                            resync = self._handle(data)
                        elif kind == "pong" or kind == "counter":
                            pending_ping = False
                            if kind == "counter" and _seq(data) != self._last_seq:
                                resync = "counter moved while idle"
                        elif kind == "replica" and data != b"up":
                            # Cut off from its master, or promoted: it hears
                            # no more changes. Subscribe elsewhere, and resync.
                            raise not_following(data)
                        elif kind == "unsubscribed":
                            # The server dropped the shard channel: its slot moved to another
                            # node (a failover or a resharding). Subscribe where it is now.
                            raise redis_errors.ConnectionError(
                                "the channel's slot moved to another node"
                            )
                        if resync is not None:
                            idle.reschedule(None)
                            await self._resync(resync)
                            idle.reschedule(loop.time() + self._health_interval)
            except TimeoutError:
                if not idle.expired():
                    raise  # a Redis call of the resync timed out
            if subscription.frames > frames:
                pending_ping = False  # not idle: traffic came in this interval
                continue
            # Idle for a whole interval: prove the link is alive, and catch a
            # lost last message (no later number reveals it). Over RESP3, one
            # command on the subscription does both, its answer compared when
            # it comes (in order after the messages published before it);
            # over RESP2, a PING there and a read of the counter elsewhere.
            if pending_ping:
                raise TimeoutError("no answer to the health check")
            pending_ping = True
            if subscription.reads_counter:
                if self._bus.on_replica:
                    await subscription.check_replica()
                await subscription.read_counter(self._tier.layout.seq)
                continue
            await subscription.ping()
            if await self._tier.current_seq() != self._last_seq:
                await self._resync("counter moved while idle")

    def _handle(self, data: bytes) -> str | None:
        """Apply one message; the reason to resync instead, if it calls for one."""
        try:
            message = Message.decode(data)
        except ValueError:  # UnicodeDecodeError too
            self._counters.bad_messages += 1
            self._log.warning("unreadable invalidation message %r; clearing L1", data[:80])
            self._clear_local()
            return None
        if message.kind == "f":
            self._on_lease_end(message.names)
            return None
        if message.kind == "h":  # unnumbered too: a refused change on its way
            if message.origin != self._origin:
                self._apply(message)
            return None
        last = self._last_seq or 0
        if message.seq == last + 1:
            self._deliver(message)
            # Pub/sub is ordered: once the next new number arrives, no late copy
            # of a replayed change can follow it.
            self._replay_floor = message.seq
        elif message.seq > last + 1:
            return f"gap {last}→{message.seq}"
        elif message.seq <= self._replay_floor:
            # Not a late copy of something the last replay applied: the counter
            # went back (Redis flushed or restarted under our feet).
            return f"sequence went back {last}→{message.seq}"
        # else: a change the last replay already applied, arriving late over pub/sub
        return None

    def _deliver(self, message: Message) -> None:
        self._last_seq = message.seq
        if message.origin != self._origin:
            self._counters.invalidations_received += 1
            self._apply(message)
        else:  # applied to L1 at once; the mirror takes the versions (idempotent)
            self._apply_own(message)

    async def _resync(self, reason: str) -> None:
        self._suspend_local(True)
        self._mirror.trusted = False
        # The end of a fill lease ('f') is not numbered and not logged: one
        # published while this listener was away or behind is gone. Waiters
        # look again (one read) instead of waiting out the lease.
        self._on_lease_end(None)
        server_id = await self._tier.server_id()
        current = await self._tier.current_seq()
        last = self._last_seq
        replayed = False
        if last is None:
            # First connection: L1 holds nothing learned under another one.
            # Changes made between the subscription and reading the counter
            # still arrive, as numbers at or below it: late copies, not a
            # counter that went back (the idle check catches a flush meanwhile).
            self._server_id = server_id
            self._last_seq, self._replay_floor = current, 0
            self._synced()
            return
        elif server_id != self._server_id or current < last:
            self._counters.resyncs += 1
            self._on_resync(reason)
            self._wipe(f"{reason}; Redis restarted or was flushed")
        elif current > last:
            self._counters.resyncs += 1
            self._on_resync(reason)
            missed = await self._tier.log_after(last)
            if not missed or missed[-1].seq < current:
                self._wipe(f"{reason}; the log does not reach back")
            else:
                self._replay_floor = last
                for message in missed:
                    self._deliver(message)
                replayed = True
                self._log.info("resynced by replaying %d change(s) (%s)", len(missed), reason)
        self._server_id = server_id
        if not replayed:  # a replay has already advanced _last_seq, maybe beyond `current`
            self._last_seq = self._replay_floor = current
        self._synced()

    def _synced(self) -> None:
        self._mirror.trusted = True
        self._suspend_local(False)

    def _wipe(self, why: str) -> None:
        self._counters.l1_clears += 1
        self._log.warning("clearing L1 and the version mirror: %s", why)
        self._mirror.reset()
        self._clear_local()
