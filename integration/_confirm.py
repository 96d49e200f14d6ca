"""The WAIT confirmation check, shared by the Sentinel and the cluster suites."""

from __future__ import annotations

from tests.contract import eventually
from twotier import TwoTierCache
from twotier.testing import RedisServer


async def unconfirmed_change_stays_queued(url: str, namespace: str, replica: RedisServer) -> None:
    """With `confirm_replicas=1`, an invalidation that *replica* (the only
    replica of the control slot's master) did not confirm, since it is stopped,
    is applied on the master but kept queued, and sent again until confirmed."""
    async with (
        TwoTierCache(
            redis_url=url, namespace=namespace, redis_timeout=0.2, confirm_replicas=1
        ) as writer,
        TwoTierCache(redis_url=url, namespace=namespace) as other,
    ):
        await writer.invalidate_tag("warm-up")
        assert writer.get_stats()["queued_ops_pending"] == 0
        received = other.get_stats()["invalidations_received"]
        replica.pause()
        try:
            await writer.invalidate_tag("row")
            stats = writer.get_stats()
            assert stats["queued_ops_pending"] >= 1, stats  # unconfirmed: still queued
            assert "replica" in (stats["last_error"] or ""), stats
        finally:
            replica.resume()

        async def delivered() -> bool:
            return writer.get_stats()["queued_ops_pending"] == 0

        await eventually(delivered, timeout=10)
        assert other.get_stats()["invalidations_received"] > received
