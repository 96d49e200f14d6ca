"""The exception tree. Every error twotier raises derives from `TwoTierError`.

TwoTierError
├── ConfigurationError      bad constructor or decorator arguments
│   └── TemplateError       a key/tag template names an unknown parameter
├── InvalidKeyError         a key or tag that is empty, too long, not printable
├── InvalidTTLError         a TTL that is not a positive number of seconds
├── SerializationError      a value the serializer cannot encode
├── DeserializationError    bytes that cannot be decoded or verified (internal:
│                           the cache turns it into a counted miss)
├── LoaderTimeoutError      a loader overran its `hard_timeout` and was cancelled
├── BackendError            Redis failed (internal: the guard turns it into a
│   ├── BackendUnavailable  fallback, never an exception in the caller)
│   └── BackendTimeout
├── EventLoopError          the cache was used from a second, running event loop
└── CacheClosedError        the cache was used after `close()`
"""

from __future__ import annotations


class TwoTierError(Exception):
    """Root of every exception raised by twotier."""


class ConfigurationError(TwoTierError, ValueError):
    """A constructor or decorator argument is invalid."""


class TemplateError(ConfigurationError):
    """A key or tag template refers to a parameter the function does not have."""


class InvalidKeyError(TwoTierError, ValueError):
    """A cache key or tag is not a non-empty, printable, bounded string."""


class InvalidTTLError(TwoTierError, ValueError):
    """A TTL is not a positive, finite number of seconds."""


class SerializationError(TwoTierError, TypeError):
    """A value cannot be encoded by the configured serializer; nothing was stored."""


class DeserializationError(TwoTierError):
    """Stored bytes cannot be decoded or failed their signature check."""


class LoaderTimeoutError(TwoTierError, TimeoutError):
    """A loader ran past the `hard_timeout` of its `@cached` policy and was cancelled."""


class BackendError(TwoTierError):
    """A Redis call failed."""


class BackendUnavailable(BackendError):
    """Redis cannot be reached, or the circuit breaker is open."""


class BackendTimeout(BackendError):
    """A Redis call did not answer within the configured timeout."""


class EventLoopError(TwoTierError, RuntimeError):
    """A cache belongs to one event loop at a time, and another one is using it.

    Its Redis connections, tasks and futures live on the loop that started it;
    a second loop waiting on them would hang. Once that loop is closed (the end
    of an `asyncio.run`), the next loop takes the cache over. Threads without a
    loop use `cache.sync`, which hands calls to the cache's loop.
    """


class CacheClosedError(TwoTierError, RuntimeError):
    """The cache was used after `close()`."""
