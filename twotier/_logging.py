"""twotier logs through the standard `logging` module, logger "twotier".

Every record carries two extra attributes, so a format such as
``%(asctime)s %(levelname)s [%(instance)s/%(tier)s] %(message)s`` tells which
instance and which part spoke: `tier` is "cache" (degradation, recovery),
"l2" (Redis calls, the circuit breaker), "bus" (the invalidation link) or
"loader" (warmup). State changes are logged once per transition, not per call.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("twotier")

Log = logging.LoggerAdapter[logging.Logger]


def tier_log(instance: str, tier: str) -> Log:
    return logging.LoggerAdapter(logger, {"instance": instance, "tier": tier})
