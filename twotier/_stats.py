"""Counters, updated in one place and read as a plain snapshot (cachetools' CacheInfo)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(slots=True)
class Counters:
    # The seed manager's keys (its users read them): hits, misses, sets, deletes,
    # tag_invalidations. `hits` = l1_hits + l2_hits.
    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    sets: int = 0
    deletes: int = 0
    tag_invalidations: int = 0
    clears: int = 0
    loads: int = 0
    load_errors: int = 0
    joined_loads: int = 0
    stale_sets_refused: int = 0
    l2_errors: int = 0
    garbage_entries: int = 0
    invalidations_received: int = 0
    bad_messages: int = 0
    listener_errors: int = 0  # unexpected failures of the listener (each reconnects)
    resyncs: int = 0
    l1_clears: int = 0
    queued_ops: int = 0
    dropped_ops: int = 0
    stale_served: int = 0
    lease_waits: int = 0
    early_refreshes: int = 0
    oversized_values: int = 0  # values over max_value_size, kept in L1 only

    def reset(self) -> None:
        """Every counter back to zero (a forked child: a new instance counts anew)."""
        for counter in fields(self):
            setattr(self, counter.name, counter.default)

    def snapshot(self, **live: Any) -> dict[str, Any]:
        data: dict[str, Any] = asdict(self)
        hits = self.l1_hits + self.l2_hits
        lookups = hits + self.misses
        data["hits"] = hits
        data["hit_rate"] = round(100.0 * hits / lookups, 2) if lookups else 0.0
        data.update(live)
        return data
