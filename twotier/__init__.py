"""twotier: a two-tier (in-process L1 + shared Redis L2) coherent async cache."""

import os as _os

from ._cache import TwoTierCache
from ._changes import Invalidation
from ._decorator import CachedFunction
from ._default import cache_from_env
from ._exceptions import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    CacheClosedError,
    ConfigurationError,
    DeserializationError,
    EventLoopError,
    InvalidKeyError,
    InvalidTTLError,
    LoaderTimeoutError,
    SerializationError,
    TemplateError,
    TwoTierError,
)
from ._serialization import MsgpackSerializer, PickleSerializer, Serializer
from ._types import MISS

__version__ = "0.1.0"

#: The default instance (`from twotier import cache`), configured from TWOTIER_* variables.
cache: TwoTierCache = cache_from_env(_os.environ)

__all__ = [
    "MISS",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CacheClosedError",
    "CachedFunction",
    "ConfigurationError",
    "DeserializationError",
    "EventLoopError",
    "InvalidKeyError",
    "InvalidTTLError",
    "Invalidation",
    "LoaderTimeoutError",
    "MsgpackSerializer",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "TemplateError",
    "TwoTierCache",
    "TwoTierError",
    "__version__",
    "cache",
    "cache_from_env",
]
