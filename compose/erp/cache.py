"""The service's cache: twotier's default instance, configured from TWOTIER_* variables
(TWOTIER_REDIS_URL, TWOTIER_NAMESPACE, ...; memory-only without a Redis URL) —
the drop-in for the seed's `from enhanced_cache_manager import cache`."""

from twotier import cache

__all__ = ["cache"]
