"""The in-process tier used when `redis_url=None`: no L2, a synchronous bus.

Instances with the same namespace in one process share a `MemoryHub`, so they
stay coherent exactly like instances sharing a Redis: a change on one is applied
to every other before the changing call returns.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable

from ._tier import FILL, MISSING_READ, BatchRead, Kind, Message, ReadResult

Handler = Callable[[Message], None]


class MemoryHub:
    def __init__(self) -> None:
        self._subscribers: dict[str, Handler] = {}
        self._seq = itertools.count(1)

    def subscribe(self, origin: str, handler: Handler) -> None:
        self._subscribers[origin] = handler

    def unsubscribe(self, origin: str) -> None:
        self._subscribers.pop(origin, None)

    def publish(self, kind: Kind, names: tuple[str, ...], origin: str) -> None:
        message = Message(kind, names, origin, next(self._seq))
        for subscriber, handler in list(self._subscribers.items()):
            if subscriber != origin:
                handler(message)


_hubs: weakref.WeakValueDictionary[str, MemoryHub] = weakref.WeakValueDictionary()


def hub_for(namespace: str) -> MemoryHub:
    hub = _hubs.get(namespace)
    if hub is None:
        hub = _hubs[namespace] = MemoryHub()
    return hub


class MemoryTier:
    """A `RemoteTier` that stores nothing and broadcasts on the hub."""

    def __init__(self, hub: MemoryHub, origin: str) -> None:
        self._hub = hub
        self._origin = origin

    async def read(
        self, key: str, tags: tuple[str, ...], lease: bool, min_ttl: float = 0.0
    ) -> ReadResult:
        return MISSING_READ

    async def fill(
        self, key: str, payload: bytes, ttl: float, tags: tuple[str, ...], snapshot: str, lease: str
    ) -> bool:
        return False

    async def read_many(self, keys: list[str], tags: tuple[str, ...]) -> BatchRead:
        return BatchRead([FILL] * len(keys), None, None)  # no L2: every key is ours to load

    async def fill_many(
        self, read: BatchRead, ttl: float, tags: tuple[str, ...], fills: list[tuple[str, bytes]]
    ) -> list[bool]:
        return [False] * len(fills)

    async def release(self, key: str, lease: str) -> None:
        return None

    async def write(self, key: str, payload: bytes, ttl: float, tags: tuple[str, ...]) -> None:
        self._hub.publish("k", (key,), self._origin)

    async def delete(self, keys: tuple[str, ...]) -> None:
        self._hub.publish("k", keys, self._origin)

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        self._hub.publish("t", tags, self._origin)

    async def clear(self) -> None:
        self._hub.publish("c", (), self._origin)

    async def discard(self, key: str) -> None:
        return None
