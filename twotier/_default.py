"""The module-level default cache, configured from `TWOTIER_*` environment variables.

The drop-in for `from enhanced_cache_manager import cache`: memory-only unless
`TWOTIER_REDIS_URL` is set, started lazily on first use.

    TWOTIER_REDIS_URL       redis://… or rediss://… (unset: memory only)
    TWOTIER_NAMESPACE       key and channel prefix (default "twotier")
    TWOTIER_DEFAULT_TTL     seconds (default 300)
    TWOTIER_L1_MAXSIZE      entries (default 10000)
    TWOTIER_REDIS_TIMEOUT   seconds per Redis call (default 0.05)
    TWOTIER_MAX_STALE       seconds L1 may serve while Redis is away (default 5)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from ._cache import TwoTierCache
from ._exceptions import ConfigurationError

T = TypeVar("T")


def _parse(env: Mapping[str, str], name: str, kind: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigurationError(f"environment variable {name}={raw!r} is invalid: {exc}") from exc


def cache_from_env(env: Mapping[str, str]) -> TwoTierCache:
    return TwoTierCache(
        redis_url=env.get("TWOTIER_REDIS_URL") or None,
        namespace=env.get("TWOTIER_NAMESPACE") or "twotier",
        default_ttl=_parse(env, "TWOTIER_DEFAULT_TTL", float, 300.0),
        l1_maxsize=_parse(env, "TWOTIER_L1_MAXSIZE", int, 10_000),
        redis_timeout=_parse(env, "TWOTIER_REDIS_TIMEOUT", float, 0.05),
        max_stale=_parse(env, "TWOTIER_MAX_STALE", float, 5.0),
    )
