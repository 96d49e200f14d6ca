"""twotier logs through the standard `logging` module, logger "twotier".

Every record carries two extra attributes, so a format such as
``%(asctime)s %(process)d %(levelname)s [%(instance)s/%(tier)s] %(message)s``
tells which process, which instance and which part spoke: `tier` is "cache"
(degradation, recovery, fork), "l2" (Redis calls, the circuit breaker), "bus"
(the invalidation link) or "loader" (warmup). `%(process)d` is logging's own
pid attribute. State changes are logged once per transition, not per call.

The library installs no handler but a `NullHandler` (the convention for
libraries, in the `logging` HOWTO): where records go and how they look is the
application's choice, and docs/deployment.md shows the set-up for gunicorn,
uvicorn and Django's `LOGGING`. Without it, Python's last-resort handler
printed warnings to stderr as bare messages, without level, time, pid or
instance (issue 18, item 7); with it, an application that configures no
logging at all sees none of twotier's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

logger = logging.getLogger("twotier")
logger.addHandler(logging.NullHandler())

Log = logging.LoggerAdapter[logging.Logger]


class Identity:
    """The instance id records carry, shared by every adapter of one cache.

    Mutable because a forked child becomes a new instance (DESIGN §4,
    guarantee 11): the cache gives it a new id, and every adapter made for the
    cache, the ones its parts hold included, says so from then on.
    """

    __slots__ = ("instance",)

    def __init__(self, instance: str) -> None:
        self.instance = instance


class _Extra(Mapping[str, object]):
    """A record's `instance` and `tier`, read when the record is made."""

    __slots__ = ("_identity", "_tier")

    def __init__(self, identity: Identity, tier: str) -> None:
        self._identity = identity
        self._tier = tier

    def __getitem__(self, name: str) -> object:
        if name == "instance":
            return self._identity.instance
        if name == "tier":
            return self._tier
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(("instance", "tier"))

    def __len__(self) -> int:
        return 2


def tier_log(instance: str | Identity, tier: str) -> Log:
    identity = instance if isinstance(instance, Identity) else Identity(instance)
    return logging.LoggerAdapter(logger, _Extra(identity, tier))
