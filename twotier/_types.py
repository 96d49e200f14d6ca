"""Small shared types: the miss sentinel and the injectable clock."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Literal


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
