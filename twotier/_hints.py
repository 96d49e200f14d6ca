"""Eviction hints: a change Redis cannot take yet, told to the others at once.

A change refused by a live server — a slot migrating slower than a change's
budget (`TRYAGAIN`), a cluster down for a moment — is queued and retried
(`_outbox.py`); meanwhile Redis still holds what it changes, and before
issue 21 no other instance heard of it until the slot was assigned: they
served their L1 copy, seconds stale. The writing instance publishes a *hint*
instead (an unnumbered message, like the end of a fill lease: it changes
nothing in Redis, and the channel's node takes a publish while a slot
migrates). The others evict what it names from L1 at once, and *hold* it:
an L2 entry of a held key, or carrying a held tag (every entry, for a
clear), is not served, since Redis may still hold the old one. A hold ends
when the numbered change arrives (it landed in Redis) or after `hold`
seconds; the writer hints again at every retry that is refused, so a hold
outlives a long migration and ends soon after a writer that died.

Reads of a held name are misses: a loader runs (reading the source of
truth, which the writer changed first), and its result may be cached, since
it is newer than the change on its way.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._types import Clock


class Holds:
    """Names whose L2 entries may be outdated by another instance's change on its way."""

    def __init__(self, clock: Clock, hold: float) -> None:
        self._clock = clock
        self._hold = hold
        self._keys: dict[str, float] = {}  # name → until (the clock's seconds)
        self._tags: dict[str, float] = {}
        self._all = float("-inf")  # a clear on its way: every entry, until then

    def hold(self, subject: str, names: Iterable[str]) -> None:
        """A hint: *names* are keys ("k") or tags ("t"), or a clear ("c")."""
        until = self._clock() + self._hold
        if subject == "c":
            self._all = until
        else:
            held = self._keys if subject == "k" else self._tags
            held.update(dict.fromkeys(names, until))

    def release(self, kind: str, names: Iterable[str]) -> None:
        """The numbered change of *kind* arrived: Redis has it now."""
        if kind == "c":
            self._all = float("-inf")
        elif kind == "k" or kind == "t":
            held = self._keys if kind == "k" else self._tags
            for name in names:
                held.pop(name, None)

    def holds(self, key: str, tags: tuple[str, ...]) -> bool:
        """Whether the L2 entry of *key*, carrying *tags*, must not be served."""
        if not (self._keys or self._tags or self._all > float("-inf")):
            return False  # the common case: nothing on its way
        now = self._clock()
        if self._all > now:
            return True
        return _held(self._keys, (key,), now) or _held(self._tags, tags, now)


def _held(held: dict[str, float], names: Iterable[str], now: float) -> bool:
    for name in names:
        until = held.get(name)
        if until is not None:
            if until > now:
                return True
            del held[name]  # expired: forgotten on the way
    return False
