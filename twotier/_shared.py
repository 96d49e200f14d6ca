"""L2 as the cache sees it: entries judged against the version mirror, fill
leases, and the conditional fill.

An L2 hit is one GET (coalesced with concurrent ones, `_pipe.py`) and a local
judgement: the entry's generation and tag versions against the mirror
(`_mirror.py`). Only a miss pays more: a claim of the key's fill lease, then
the fill, each on the entry's own hash slot.

The no-stale-set guard (guarantee 3) has two halves. Key-level: `set` and
`delete` remove the fill lease, so a fill whose lease is gone is refused by
Redis. Tag-level: the versions are snapshotted *before* the loader runs and
stored with the entry; an invalidation during the load bumps a version, so
every reader whose mirror holds the bump rejects the entry — and the filler
itself does not store it once its own mirror has the bump.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from ._envelope import Envelope, pack, unpack
from ._events import Events
from ._exceptions import BackendError, DeserializationError
from ._logging import Log
from ._mirror import VersionMirror
from ._serialization import Serializer
from ._stats import Counters
from ._tier import GRANTED, HELD, STORED, RemoteTier
from ._types import MISS, Clock


class Found(NamedTuple):
    """What an L2 lookup found."""

    value: Any  # the decoded value, or MISS
    entry: Envelope | None  # the entry the value came from
    #: The header of an entry found but passed over (outdated, expiring), b""
    #: when there was none; None when L2 cannot be used right now.
    rejected: bytes | None


NOT_USABLE = Found(MISS, None, None)
#: An early refresh found the key being loaded elsewhere, and gave way.
GAVE_WAY = Found(MISS, None, None)


class Snapshot(NamedTuple):
    """The versions a loader's result will be stored under, taken before it runs."""

    generation: str
    versions: tuple[str, ...]


class SharedTier:
    def __init__(
        self,
        remote: RemoteTier,
        mirror: VersionMirror,
        serializer: Serializer,
        counters: Counters,
        log: Log,
        *,
        lease_ttl: float,
        retry_delay: float,
        max_retry_delay: float,
        clock: Clock,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        blocked: Callable[[], bool],
        events: Events,
        held: Callable[[str, tuple[str, ...]], bool],
    ) -> None:
        self._events = events
        self.remote = remote
        self.mirror = mirror
        self._serializer = serializer
        self._counters = counters
        self._log = log
        self._lease_ttl = lease_ttl
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._clock = clock
        self._spawn = spawn
        # True while this instance has changes Redis has not taken yet: what
        # Redis holds may be what we invalidated, so nothing is read from it.
        self._blocked = blocked
        # Whether another instance's change of a key or tag is on its way to
        # Redis, refused for now (`_hints.py`): its old entry must not be served.
        self._held = held
        self._horizon: tuple[str | None, float] = (None, 0.0)

    # -- reads -----------------------------------------------------------------------

    async def lookup(self, key: str, min_ttl: float = 0.0, *, drop: bool = True) -> Found:
        """The entry for *key* if it is current (and lives *min_ttl* more).

        An outdated entry is deleted in the background (*drop*), unless the
        caller is about to replace it (a miss with a loader: its fill
        overwrites it, and a stampede's every instance would delete it)."""
        if self._blocked():
            return NOT_USABLE
        read = self.remote.get(key)
        try:
            data = await (self._events.l2_read(read) if self._events else read)
        except BackendError:
            self._counters.l2_errors += 1
            return NOT_USABLE
        return await self.judged(key, data, min_ttl, drop=drop)

    async def judged(
        self,
        key: str,
        data: bytes | None,
        min_ttl: float = 0.0,
        *,
        drop: bool = True,
        hold: bool = True,
    ) -> Found:
        if data is None:
            return Found(MISS, None, b"")
        entry = unpack(data)
        if entry is None:
            await self._garbage(key, "not a twotier entry")
            return Found(MISS, None, b"")
        current = self.mirror.judge(entry)  # the hit path: no await
        if current is None:
            try:
                current = await self.judge(entry)
            except BackendError:
                self._counters.l2_errors += 1
                return NOT_USABLE
        if not current and drop:
            self._spawn(self._drop(key, entry.header))
        if not current or entry.remaining() <= min_ttl or (hold and self._held(key, entry.tags)):
            return Found(MISS, None, entry.header)
        try:
            value = self._serializer.loads(entry.payload)
        except DeserializationError as exc:
            # Foreign data, an old format or a bad signature: a counted miss, deleted.
            await self._garbage(key, str(exc))
            return Found(MISS, None, b"")
        self._counters.l2_hits += 1
        return Found(value, entry, b"")

    async def judge(self, entry: Envelope) -> bool:
        """Whether *entry*'s versions are the current ones (raises `BackendError`)."""
        verdict = self.mirror.judge(entry)
        if verdict is None:  # a tag not in the mirror yet, or the mirror is not trusted
            generation, versions = await self.mirror.current(entry.tags)
            verdict = generation == entry.generation and versions == entry.versions
        return verdict

    async def _drop(self, key: str, header: bytes) -> None:
        """Free an outdated entry's memory now, not at its TTL (in the background:
        the caller has its answer; if another entry is there by then, it stays)."""
        try:
            await self.remote.drop(key, header)
        except BackendError:
            self._counters.l2_errors += 1

    async def _garbage(self, key: str, why: str) -> None:
        self._counters.garbage_entries += 1
        self._log.warning("L2 entry %r is not readable (%s); deleted", key, why)
        try:
            await self.remote.discard(key)
        except BackendError:
            self._counters.l2_errors += 1

    # -- fill leases -------------------------------------------------------------------

    async def claim(self, key: str, rejected: bytes) -> tuple[Found, str | None, bool]:
        """After a miss: (an entry stored meanwhile, our lease token, whether
        another caller is loading the key). The token is None when no lease
        was taken (another holds it, or Redis is away)."""
        try:
            generation, _ = await self.mirror.current(())
            token = self.new_token(generation)
            claim = await self.remote.claim(key, token, rejected)
        except BackendError:
            self._counters.l2_errors += 1
            return NOT_USABLE, None, False
        if claim.status == GRANTED:
            return Found(MISS, None, rejected), token, False
        if claim.status == STORED:
            # Stored since our read, by a load or a set: newer than any hint.
            return await self.judged(key, claim.entry, 0.0, drop=False, hold=False), None, False
        return Found(MISS, None, rejected), None, claim.status == HELD

    async def snapshot(self, tags: tuple[str, ...], ttl: float | None = None) -> Snapshot | None:
        """The versions to store a load under; None when Redis cannot say (then
        the result goes to L1 only).

        Before a load (*ttl* given), Redis first learns how long its entry may
        live, lease time included: compaction must not drop a version the
        entry may be judged by while the loader runs, however long its lease.
        """
        try:
            if ttl is not None and tags:
                await self.note_horizon(ttl)
            return Snapshot(*await self.mirror.current(tags))
        except BackendError:
            self._counters.l2_errors += 1
            return None

    async def fill(
        self,
        key: str,
        tags: tuple[str, ...],
        snapshot: Snapshot,
        payload: bytes,
        ttl: float,
        token: str,
    ) -> bool:
        """Store a loaded value unless its key or a tag changed since *snapshot*.
        False: it is outdated already and must not be cached anywhere."""
        try:
            if tuple(await self.mirror.current(tags)) != snapshot:
                self.release_later(key, token)
                return False
            stored = await self.remote.fill(
                key, pack(ttl, snapshot.generation, tags, snapshot.versions, payload), ttl, token
            )
        except BackendError:
            # Redis is away, or refused the write (maxmemory): L1 alone decides,
            # under the flight's guard. The fill may not have run, so its lease
            # is released, else every reader elsewhere would wait out its TTL;
            # or it ran and its reply was lost, so the waiters are woken anyway.
            self._counters.l2_errors += 1
            self.release_later(key, token, uncertain=True)
            return True
        except BaseException:
            self.release_later(key, token, uncertain=True)  # cancelled mid-write
            raise
        return stored

    @staticmethod
    def new_token(generation: str) -> str:
        """A fill lease's token: random, and naming the generation it is taken in."""
        return f"{secrets.token_hex(8)}@{generation}"

    async def note_horizon(self, ttl: float) -> None:
        """Make sure Redis knows tagged entries may now live *ttl* (plus the lease
        time a fill may take): compaction's horizon. Once per longer lifetime
        and generation."""
        seconds = ttl + self._lease_ttl
        generation, noted = self._horizon
        if generation == self.mirror.generation and seconds <= noted:
            return
        await self.remote.versions((), horizon=seconds)
        self._horizon = (self.mirror.generation, seconds)

    def release_later(self, key: str, token: str, *, uncertain: bool = False) -> None:
        """Release a fill lease in the background: for a caller that timed out,
        was cancelled, or failed, and cannot wait for Redis itself (*uncertain*:
        see `RemoteTier.release`)."""
        self._spawn(self.release(key, token, uncertain=uncertain))

    async def release(self, key: str, token: str, *, uncertain: bool = False) -> None:
        """Give a lease back, retrying while Redis stalls; the release is keyed by
        the token, so running it twice, or after the lease ended, does nothing.

        A lease nobody releases stalls that key on every instance for
        `lease_ttl` (issue 7, item 1): a claim that timed out after Redis ran
        it, during a 250 ms fork stall, must give its lease back once Redis
        answers again, not 10 s later. Likewise its waiters: an attempt whose
        reply was lost may have ended the lease unseen, so the next one wakes
        them whatever it finds.
        """
        deadline = self._clock() + self._lease_ttl
        delay = self._retry_delay
        while True:
            try:
                await self.remote.release(key, token, uncertain=uncertain)
                return
            except BackendError:
                uncertain = True
                self._counters.l2_errors += 1
                if self._clock() + delay > deadline:
                    return  # by then the lease has expired by itself
            await asyncio.sleep(delay)
            delay = min(2 * delay, self._max_retry_delay)
