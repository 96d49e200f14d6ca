"""Small shared types: the miss sentinel, the injectable clock, an L1 store."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final, Literal


class _Missing(enum.Enum):
    """A typed sentinel (dogpile's NO_VALUE): a cached `None` is a hit, `MISS` is not."""

    MISS = enum.auto()

    def __repr__(self) -> str:
        return "twotier.MISS"

    def __bool__(self) -> Literal[False]:
        return False


MISS: Final = _Missing.MISS
Missing = Literal[_Missing.MISS]

#: Seconds from an arbitrary origin, like `time.monotonic` (cachetools' `timer=`).
Clock = Callable[[], float]

#: Renders an entry's tags, called only when they are needed: a decorated
#: function's L2 hit never renders them (the entry carries its own).
RenderTags = Callable[[], tuple[str, ...]]

#: Stores a value in L1: key, value, payload, ttl, tags, copy_on_read.
StoreLocal = Callable[[str, Any, bytes, float, tuple[str, ...], bool], None]
