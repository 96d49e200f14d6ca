"""The tag-version mirror: each instance's copy of the versions of the tags it uses.

An L2 entry carries the versions its tags had when its value was loaded, and
the namespace generation (`_envelope.py`). Judging it needs the current
versions; v1 asked Redis on every read (a Lua script next to the entry, which
also tied the entry to the control keys' slot). The mirror answers locally:

* a tag's version is loaded from Redis the first time this instance needs it
  (one control-slot call for all the missing tags of a read), and
* kept current from the numbered change stream, whose messages carry the new
  versions (and a `clear()`'s new generation), with the stream's gap
  detection, replay and resync.

Versions only grow (a bump takes the change number, which never repeats), so
merging is `max`, and a load that raced a bump cannot put an older version
back: every load in flight records the bumps applied while it runs, and
merges them into its reply. A `clear()` or a reset while a load runs makes its
reply useless (another generation): it is fetched again.

While the mirror cannot be trusted — the invalidation link is down, a gap was
found, a resync runs — `current()` asks Redis every time and stores nothing,
so every L2 entry is judged against the authoritative versions (guarantee 2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from ._envelope import Envelope
from ._exceptions import BackendError

#: (generation, versions of the asked tags), straight from Redis.
Fetch = Callable[[tuple[str, ...]], Awaitable[tuple[str, tuple[str, ...]]]]

_RETRIES = 3  # loads spoiled by a clear in flight, before giving up (a miss)


class _Load:
    """One fetch of versions from Redis, for every caller that asked for it."""

    __slots__ = (
        "cleared",
        "cleared_to",
        "done",
        "dropped",
        "ready",
        "seen",
        "sent",
        "tags",
        "trusted",
    )

    def __init__(self, tags: tuple[str, ...]) -> None:
        self.tags = dict.fromkeys(tags)  # an ordered set: callers add theirs while it queues
        self.seen: dict[str, str] = {}  # bumps applied while the load ran
        self.dropped: set[str] = set()  # compacted while the load ran
        self.cleared = False  # a clear or reset while the load ran
        #: The generation the last clear while the load ran started (None after a
        #: reset): a reply from that generation was read after the clear, so it holds.
        self.cleared_to: str | None = None
        self.sent = False
        self.trusted = False  # the mirror was trusted when it was sent
        # A queued load is sent once the fetch in flight returns (`ready`), by
        # the first of its callers to wake; the others await its reply (`done`).
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[tuple[str, dict[str, str]]] = loop.create_future()


class _Abandoned(Exception):
    """The caller sending a shared load was cancelled: the others ask again."""


def _holds(load: _Load, generation: str) -> bool:
    """Whether *load*'s reply (on *generation*) still tells the current versions."""
    return not load.cleared or generation == load.cleared_to


def newer(a: str, b: str) -> str:
    """The later of two versions of one tag."""
    return a if int(a) >= int(b) else b


class VersionMirror:
    def __init__(self, fetch: Fetch, limit: int = 100_000) -> None:
        self._fetch = fetch
        self._limit = limit
        self.generation: str | None = None
        self._versions: dict[str, str] = {}
        self._loads: list[_Load] = []  # the loads whose fetch is in flight
        self._queued: _Load | None = None  # tags asked for while a fetch is in flight
        #: Set by the listener: True only while subscribed and in sync.
        self.trusted = False
        self.loads = 0  # fetches from Redis (a stat)

    def __len__(self) -> int:
        return len(self._versions)

    # -- judging entries -----------------------------------------------------------

    def judge(self, entry: Envelope) -> bool | None:
        """Whether *entry* is current; None when the mirror cannot tell (an
        unknown tag, or the mirror is not trusted now)."""
        if not self.trusted or self.generation is None:
            return None
        if entry.generation != self.generation:
            return False
        versions = self._versions
        for tag, version in zip(entry.tags, entry.versions, strict=True):
            known = versions.get(tag)
            if known is None:
                return None
            if known != version:
                return False
        return True

    async def current(self, tags: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """The generation and *tags*' versions now: from the mirror when it is
        trusted and knows them all, else from Redis (raises `BackendError`)."""
        if self.trusted and self.generation is not None:
            versions = self._versions
            known = tuple(versions.get(tag, "") for tag in tags)
            if all(known):
                return self.generation, known
        return await self._load(tags)

    async def _load(self, tags: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        for _ in range(_RETRIES):
            load, generation, merged = await self._fetched(tags)
            if not _holds(load, generation):
                continue  # read before a clear this instance has applied since
            return generation, tuple(merged[tag] for tag in tags)
        raise BackendError("the namespace was cleared during every version load")

    async def _fetched(self, tags: tuple[str, ...]) -> tuple[_Load, str, dict[str, str]]:
        """A fetch of *tags* (among others) sent after this call began: at once
        when none is in flight, else together with every tag asked for
        meanwhile, as soon as the one in flight returns (the read pipe's
        coalescing). So a burst of reads after a start or a resync, each
        judging against a mirror that knows nothing yet, costs Redis two
        fetches, not one script per read (a CI run's 200 reads ran 200
        `versions.lua` and timed out). Sent after the call began, never
        joined in flight: the reply holds every change completed before it.
        """
        if not self._loads:
            return await self._send(_Load(tags))
        load = self._queued
        if load is None:
            load = self._queued = _Load(())
        load.tags.update(dict.fromkeys(tags))
        await asyncio.shield(load.ready)
        if not load.sent:
            return await self._send(load)  # the first caller to wake sends it for all
        try:
            generation, merged = await asyncio.shield(load.done)
        except _Abandoned:
            return await self._fetched(tags)  # coalesced again, not one fetch each
        return load, generation, merged

    async def _send(self, load: _Load) -> tuple[_Load, str, dict[str, str]]:
        """Fetch *load*'s tags; merge the bumps applied meanwhile and remember
        the reply in the same step as it comes in. Its other callers wake
        turns later, when the load no longer records what is applied: had
        they remembered it, a bump or a clear applied in between would be
        undone (found by review; `tests/test_mirror.py`)."""
        load.sent, load.trusted = True, self.trusted
        self._loads.append(load)
        try:
            generation, versions = await self._fetch(tuple(load.tags))
        except BaseException as exc:
            load.done.set_exception(
                _Abandoned() if isinstance(exc, asyncio.CancelledError) else exc
            )
            load.done.exception()  # retrieved: no caller may be left to await it
            raise
        finally:
            self._loads.remove(load)
            queued, self._queued = self._queued, None
            if queued is not None:
                queued.ready.set_result(None)
        self.loads += 1
        merged = dict(zip(load.tags, versions, strict=True))
        for tag, seen in load.seen.items():
            merged[tag] = newer(merged[tag], seen)
        if _holds(load, generation) and load.trusted and self.trusted:
            self._remember(generation, tuple(merged), tuple(merged.values()), load.dropped)
        load.done.set_result((generation, merged))
        return load, generation, merged

    def _remember(
        self, generation: str, tags: tuple[str, ...], versions: tuple[str, ...], skip: set[str]
    ) -> None:
        if generation != self.generation:
            # Redis is on a generation no message has told us of yet (its
            # announcement is on its way): nothing known of the old one holds.
            self.generation = generation
            self._versions.clear()
        if len(self._versions) + len(tags) > self._limit:
            self._versions.clear()  # bounded: forgotten versions are loaded again
        for tag, version in zip(tags, versions, strict=True):
            if tag not in skip:
                self._versions[tag] = version

    # -- the change stream -----------------------------------------------------------

    def bumped(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Tags got new versions (an invalidation, ours or another instance's)."""
        versions, loads = self._versions, self._loads
        for tag, version in pairs:
            known = versions.get(tag)
            if known is not None:
                versions[tag] = newer(known, version)
            for load in loads:
                if tag in load.tags:
                    seen = load.seen.get(tag)
                    load.seen[tag] = version if seen is None else newer(seen, version)

    def cleared(self, generation: str) -> None:
        """A new namespace generation: every version so far is void."""
        self.reset()
        self.generation = generation
        for load in self._loads:
            # A reply from the new generation was read after the clear: it holds,
            # with the bumps seen from here on. Without this, a namespace cleared
            # now and then spoiled three loads in a row and a healthy Redis was
            # counted as failing (found by the model checker).
            load.cleared_to = generation
            load.seen.clear()
            load.dropped.clear()

    def dropped(self, tags: Iterable[str]) -> None:
        """Compaction removed these tags' versions in Redis (they read as 0 again)."""
        for tag in tags:
            self._versions.pop(tag, None)
            for load in self._loads:
                if tag in load.tags:
                    load.dropped.add(tag)

    def reset(self) -> None:
        """Forget everything (a resync that could not replay what was missed)."""
        self.generation = None
        self._versions.clear()
        for load in self._loads:
            load.cleared, load.cleared_to = True, None
