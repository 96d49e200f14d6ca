"""The seam between the cache and its shared tier, and the invalidation message.

`RemoteTier` is implemented by the Redis tier and by the in-process memory tier
(used when `redis_url=None`). Every change method both persists the change and
broadcasts it to the other instances in one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

# Message kinds: the names of keys changed (set or delete), tags bumped, a clear;
# and "f", a fill lease that others waited on has ended (unnumbered: it changes
# nothing, it only wakes the waiters).
Kind = Literal["k", "t", "c", "f"]
KINDS: frozenset[str] = frozenset({"k", "t", "c", "f"})
FORMAT_VERSION = "1"
SEP = "\x1f"  # ASCII unit separator; keys and tags are printable, so never contain it


@dataclass(frozen=True, slots=True)
class Message:
    """An invalidation: small, versioned, never carrying a value (FusionCache's backplane)."""

    kind: Kind
    names: tuple[str, ...]
    origin: str
    seq: int

    def encode(self) -> bytes:
        fields = (FORMAT_VERSION, self.kind, str(self.seq), self.origin, *self.names)
        return SEP.join(fields).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Message:
        """Parse a message; `ValueError` for anything this version does not understand."""
        text = data.decode() if isinstance(data, bytes) else data
        version, kind, seq, origin, *names = text.split(SEP)
        if version != FORMAT_VERSION or kind not in KINDS:
            raise ValueError(f"unknown invalidation message format {version!r}/{kind!r}")
        return cls(kind, tuple(n for n in names if n), origin, int(seq))  # type: ignore[arg-type]


class ReadResult(NamedTuple):
    """What one L2 read returns.

    On a hit, `payload`, `ttl` (remaining seconds) and the entry's `tags`. On a
    miss, `snapshot`: the tag versions at the moment of the miss (the loader's
    result may only be stored under them) and `lease`, the token when this caller
    won the right to fill the key.
    """

    payload: bytes | None
    ttl: float
    tags: tuple[str, ...]
    snapshot: str | None
    lease: str | None
    garbage: bool = False  # foreign data was found under the key (and deleted)


MISSING_READ = ReadResult(None, 0.0, (), None, None)


class BatchRead(NamedTuple):
    """A batched read (warmup): per key one of the codes below, and for the keys
    whose lease it holds, the shared `token` and version `snapshot`."""

    codes: list[int]
    snapshot: str | None
    token: str | None


IN_L2 = 2  # a valid entry is in Redis already
FILL = 1  # a miss whose fill lease is ours (or, without L2, simply ours to load)
BUSY = 0  # a miss another caller is loading right now
FOREIGN = -1  # foreign data was found under the key, and deleted


class RemoteTier(Protocol):
    async def read(
        self, key: str, tags: tuple[str, ...], lease: bool, min_ttl: float = 0.0
    ) -> ReadResult:
        """The entry (if it lives at least *min_ttl* more), else a snapshot and maybe the lease."""
        ...

    async def fill(
        self, key: str, payload: bytes, ttl: float, tags: tuple[str, ...], snapshot: str, lease: str
    ) -> bool:
        """Store a loaded value only if the lease is still ours and no tag moved."""
        ...

    async def read_many(self, keys: list[str], tags: tuple[str, ...]) -> BatchRead:
        """`read(key, tags, lease=True)` for each key, batched (warmup)."""
        ...

    async def fill_many(
        self, read: BatchRead, ttl: float, tags: tuple[str, ...], fills: list[tuple[str, bytes]]
    ) -> list[bool]:
        """`fill` of (key, payload) pairs whose leases *read* took."""
        ...

    async def release(self, key: str, lease: str) -> None:
        """Give up a fill lease after the loader failed, waking any waiters."""
        ...

    async def write(self, key: str, payload: bytes, ttl: float, tags: tuple[str, ...]) -> None: ...

    async def delete(self, keys: tuple[str, ...]) -> None: ...

    async def invalidate(self, tags: tuple[str, ...]) -> None: ...

    async def clear(self) -> None: ...

    async def discard(self, key: str) -> None:
        """Remove an undecodable entry without broadcasting."""
        ...
