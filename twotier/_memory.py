"""The in-process tier used when `redis_url=None`: no L2, a synchronous bus.

Instances with the same namespace in one process share a `MemoryHub`, so they
stay coherent exactly like instances sharing a Redis: a change on one is applied
to every other before the changing call returns.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable

from ._tier import GRANTED, Claim, Kind, Message

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
    """A `RemoteTier` that stores nothing and broadcasts on the hub.

    The cache never reads from it (there is no L2 to read); its changes reach
    the other instances of the process through the hub.
    """

    def __init__(self, hub: MemoryHub, origin: str) -> None:
        self._hub = hub
        self._origin = origin

    async def get(self, key: str) -> bytes | None:
        return None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [None] * len(keys)

    async def versions(
        self, tags: tuple[str, ...], horizon: float = 0.0
    ) -> tuple[str, tuple[str, ...]]:
        return "0", ("0",) * len(tags)

    async def claim(self, key: str, token: str, rejected: bytes) -> Claim:
        return Claim(GRANTED)

    async def lease_many(self, keys: list[str], token: str) -> list[bool]:
        return [True] * len(keys)

    async def fill(self, key: str, entry: bytes, ttl: float, token: str) -> bool:
        return True

    async def fill_many(self, fills: list[tuple[str, bytes]], ttl: float, token: str) -> list[bool]:
        return [True] * len(fills)

    async def release(self, key: str, token: str, *, uncertain: bool = False) -> None:
        return None

    async def write(self, key: str, entry: bytes, ttl: float, horizon: float) -> None:
        self._hub.publish("k", (key,), self._origin)

    async def delete(self, keys: tuple[str, ...]) -> None:
        self._hub.publish("k", keys, self._origin)

    async def invalidate(self, tags: tuple[str, ...]) -> list[tuple[str, str]]:
        self._hub.publish("t", tags, self._origin)
        return []

    async def hint(self, subject: str, names: tuple[str, ...]) -> None:
        return None  # the hub never refuses a change: nothing is ever on its way

    async def clear(self) -> str:
        self._hub.publish("c", (), self._origin)
        return "0"

    async def drop(self, key: str, header: bytes) -> None:
        return None

    async def discard(self, key: str) -> None:
        return None
