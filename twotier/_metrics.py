"""The counters of `get_stats()` that the exporters publish, and their names.

Shared by `twotier.prometheus` and `twotier.otel` (which renames
`twotier_x` to `twotier.x`); imports nothing, so neither extra needs the other.
"""

from __future__ import annotations

#: `get_stats()` key → (metric name without `_total`, help). Exported as counters.
COUNTERS: dict[str, tuple[str, str]] = {
    "sets": ("twotier_sets", "Values stored (set, and loader results cached)."),
    "deletes": ("twotier_deletes", "Keys deleted."),
    "tag_invalidations": ("twotier_tag_invalidations", "Tags invalidated by this instance."),
    "clears": ("twotier_clears", "Namespace clears by this instance."),
    "loads": ("twotier_loads", "Loader runs (misses of both tiers, and early refreshes)."),
    "load_errors": ("twotier_load_errors", "Loader runs that raised."),
    "joined_loads": ("twotier_joined_loads", "Callers that waited for a load in this instance."),
    "stale_sets_refused": (
        "twotier_stale_sets_refused",
        "Loader results not cached because the key or a tag changed meanwhile.",
    ),
    "l2_errors": ("twotier_l2_errors", "Redis calls that failed (timeouts, refusals, outages)."),
    "garbage_entries": ("twotier_garbage_entries", "Undecodable L2 entries, deleted."),
    "invalidations_received": (
        "twotier_invalidations_received",
        "Changes from other instances applied to L1.",
    ),
    "bad_messages": ("twotier_bad_messages", "Unreadable invalidation messages."),
    "resyncs": ("twotier_resyncs", "Resynchronisations of the invalidation link."),
    "l1_clears": ("twotier_l1_clears", "L1 wiped because a resync could not replay."),
    "queued_ops": ("twotier_queued_changes", "Changes queued while Redis was away."),
    "dropped_ops": (
        "twotier_dropped_changes",
        "Queued changes collapsed into a clear, or never delivered.",
    ),
    "stale_served": ("twotier_stale_served", "Stale values served (stale_if_error)."),
    "lease_waits": ("twotier_lease_waits", "Waits for another instance's fill lease."),
    "early_refreshes": ("twotier_early_refreshes", "Early (XFetch) refreshes started."),
    "oversized_values": (
        "twotier_oversized_values",
        "Values over max_value_size, kept in L1 only.",
    ),
}
