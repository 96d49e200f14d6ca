"""The seam between the cache and its shared tier, and the invalidation message.

`RemoteTier` is implemented by the Redis tier and by the in-process memory tier
(used when `redis_url=None`). Every change method both persists the change and
broadcasts it to the other instances in one atomic step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

# Message kinds: the names of keys changed (set or delete), tags bumped, a clear,
# tag versions compacted away ("x"); and two unnumbered ones, which change
# nothing in Redis: "f", a fill lease that others waited on has ended (it wakes
# the waiters), and "h", a hint that a change Redis refused for now is on its
# way (`_hints.py`: the others evict and hold what it names).
Kind = Literal["k", "t", "c", "x", "f", "h"]
KINDS: frozenset[str] = frozenset({"k", "t", "c", "x", "f", "h"})
HINTED = ("k", "t", "c")  # what a hint's names are: keys, tags, or a clear
FORMAT_VERSION = "2"
SEP = "\x1f"  # ASCII unit separator; keys and tags are printable, so never contain it


@dataclass(frozen=True, slots=True)
class Message:
    """A change: small, versioned, never carrying a value (FusionCache's backplane).

    `names` are keys ("k", "f") or tags ("t", "x"). `versions` are the bumped
    tags' new versions ("t"), or the new namespace generation ("c"): the
    receivers' version mirrors take them from here; for a hint ("h"), the
    kind of change on its way (one of `HINTED`), whose names are `names`. `sent_at` is the sender's
    wall clock (seconds), for the propagation lag.
    """

    kind: Kind
    names: tuple[str, ...]
    origin: str
    seq: int
    versions: tuple[str, ...] = ()
    sent_at: float = 0.0

    def encode(self) -> bytes:
        if self.kind == "t":
            body = [f for pair in zip(self.names, self.versions, strict=True) for f in pair]
        elif self.kind == "c":
            body = list(self.versions)
        elif self.kind == "h":
            body = [*self.versions, *self.names]
        else:
            body = list(self.names)
        sent = str(int(self.sent_at * 1000))
        return SEP.join(
            (FORMAT_VERSION, self.kind, str(self.seq), self.origin, sent, *body)
        ).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Message:
        """Parse a message; `ValueError` for anything this version does not understand.

        Anyone who may publish on the channel can send anything: numbers are
        decimal digits that fit 64 bits (Redis's own counters), else a 400-digit
        `sent` overflowed a float and a 5,000-digit version passed Python's
        int-parsing limit, each an exception that stopped the listener."""
        text = data.decode() if isinstance(data, bytes) else data
        fields = text.split(SEP)
        if len(fields) < 5:
            raise ValueError("an invalidation message has at least five fields")
        version, kind, seq, origin, sent, *body = fields
        if version != FORMAT_VERSION or kind not in KINDS:
            raise ValueError(f"unknown invalidation message format {version!r}/{kind!r}")
        if not (_is_number(seq) and _is_number(sent)):
            raise ValueError("a message's sequence number and time are 64-bit numbers")
        names: tuple[str, ...] = ()
        versions: tuple[str, ...] = ()
        if kind == "t":
            if len(body) % 2 or not all(_is_number(v) for v in body[1::2]):
                raise ValueError("a tag message needs tag/version pairs")
            names, versions = tuple(body[0::2]), tuple(body[1::2])
        elif kind == "c":
            if len(body) != 1 or not body[0]:
                raise ValueError("a clear message carries the new generation")
            versions = (body[0],)
        elif kind == "h":
            if not body or body[0] not in HINTED:
                raise ValueError("a hint says what is on its way: keys, tags or a clear")
            versions, names = (body[0],), tuple(n for n in body[1:] if n)
        else:
            names = tuple(n for n in body if n)
        return cls(kind, names, origin, int(seq), versions, int(sent) / 1000)  # type: ignore[arg-type]


def _is_number(text: str) -> bool:
    """Decimal digits of a 64-bit counter (what Redis's INCR gives), nothing else."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


class Claim(NamedTuple):
    """The answer to a fill-lease claim after an L2 miss."""

    status: int  # GRANTED, HELD or STORED
    entry: bytes | None = None  # STORED: the entry someone stored since our read


GRANTED = 1  # the lease is ours: load, then fill
HELD = 0  # another caller is loading the key: wait for it
STORED = 2  # an entry was stored since our read: judge that one


class RemoteTier(Protocol):
    """The shared tier. Entries are opaque bytes here (`_envelope.py`); versions
    and generations are strings (`_mirror.py`)."""

    async def get(self, key: str) -> bytes | None:
        """The entry stored under *key* (one GET; concurrent ones are coalesced)."""
        ...

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The entries of *keys*, in one round trip (warmup)."""
        ...

    async def versions(
        self, tags: tuple[str, ...], horizon: float = 0.0
    ) -> tuple[str, tuple[str, ...]]:
        """The namespace generation and *tags*' versions, from Redis."""
        ...

    async def claim(self, key: str, token: str, rejected: bytes) -> Claim:
        """Take *key*'s fill lease for *token*, unless another caller holds it, or
        an entry other than the *rejected* one (its header; b"" for none) is there."""
        ...

    async def lease_many(self, keys: list[str], token: str) -> list[bool]:
        """Take the fill lease of each of *keys* that nobody holds one for (warmup)."""
        ...

    async def fill(self, key: str, entry: bytes, ttl: float, token: str) -> bool:
        """Store a loaded value only if *token* still holds the lease."""
        ...

    async def fill_many(
        self, fills: list[tuple[str, bytes]], ttl: float, token: str
    ) -> list[bool]: ...

    async def release(self, key: str, token: str, *, uncertain: bool = False) -> None:
        """Give up a fill lease after the loader failed, waking any waiters.

        *uncertain*: an earlier fill or release of this lease lost its reply,
        so it may have ended the lease with waiters that nobody told: wake
        them even if the lease is gone (a needless wake costs them one read).
        """
        ...

    async def write(self, key: str, entry: bytes, ttl: float, horizon: float) -> None:
        """Store *entry*, revoke any fill lease, announce the change."""
        ...

    async def delete(self, keys: tuple[str, ...]) -> None: ...

    async def hint(self, subject: str, names: tuple[str, ...]) -> None:
        """Tell the other instances that a change Redis refused for now is on
        its way (*subject*: "k" keys, "t" tags, "c" a clear; `_hints.py`)."""
        ...

    async def invalidate(self, tags: tuple[str, ...]) -> list[tuple[str, str]]:
        """Bump *tags*; their new versions."""
        ...

    async def clear(self) -> str:
        """Start a new namespace generation; the generation."""
        ...

    async def drop(self, key: str, header: bytes) -> None:
        """Delete *key*'s entry if it is still the one with this *header* (outdated)."""
        ...

    async def discard(self, key: str) -> None:
        """Remove garbage found under *key* without broadcasting."""
        ...
