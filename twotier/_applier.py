"""Applying changes to this instance: its own at once, others' from the bus.

A change evicts L1 (keys, tags, or all of it), revokes the loads in flight
that it makes outdated (their results must not be stored, guarantee 3), and
wakes the callers waiting on a lease of a changed key. A message also moves
the version mirror, against which L2 entries are judged (guarantee 2).
Everything here is synchronous: each change is applied in one step of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ._events import Events
from ._flights import Flights
from ._hints import Holds
from ._local import LocalTier
from ._shared import SharedTier
from ._tier import Kind, Message
from ._types import Clock


class Applier:
    """Applies changes to L1, the loads in flight, lease waiters and the mirror."""

    def __init__(
        self,
        local: LocalTier,
        flights: Flights,
        shared: SharedTier,
        events: Events,
        *,
        wake_lease_waiters: Callable[[Iterable[str] | None], None],
        clock: Clock,
        holds: Holds,
    ) -> None:
        self._local = local
        self._flights = flights
        self._shared = shared  # its mirror changes with the link (`TwoTierCache._use_remote`)
        self._events = events
        self._wake_lease_waiters = wake_lease_waiters
        self._clock = clock
        self._holds = holds  # another instance's refused changes on their way

    def apply_local(self, kind: Kind, names: tuple[str, ...]) -> None:
        if kind == "k":
            self._local.evict_keys(names)
            self._flights.invalidate_keys(names)
            self._wake_lease_waiters(names)
        elif kind == "t":
            self._local.evict_tags(names)
            self._flights.invalidate_tags(names)
        elif kind == "c":
            self.clear_local()
        # "x": versions compacted away concern only the mirror

    def apply_message(self, message: Message) -> None:
        """Another instance's change (or the server's): the mirror, then L1."""
        if message.kind == "h":
            # A change Redis refused for now: evicted here, and its old entries
            # in Redis not served until it lands (`_hints.py`).
            subject: Kind = message.versions[0]  # type: ignore[assignment]  # one of HINTED
            self._holds.hold(subject, message.names)
            self.apply_local(subject, message.names)
            return
        self.mirror_message(message)
        self.apply_local(message.kind, message.names)
        self._holds.release(message.kind, message.names)
        self._events.invalidation_received(message)

    def mirror_message(self, message: Message) -> None:
        """A change's new versions into the mirror (also for our own changes,
        which L1 has applied already: cheap, and idempotent)."""
        mirror = self._shared.mirror
        if message.kind == "t":
            mirror.bumped(zip(message.names, message.versions, strict=False))
        elif message.kind == "c":
            if message.versions:
                mirror.cleared(message.versions[0])
            else:
                mirror.reset()
        elif message.kind == "x":
            mirror.dropped(message.names)

    def clear_local(self) -> None:
        self._local.clear()
        self._flights.invalidate_all()

    def suspend_local(self, suspended: bool) -> None:
        self._local.suspended = suspended

    def bound_local(self, seconds: float) -> None:
        self._local.cap_expiry(self._clock() + seconds)
