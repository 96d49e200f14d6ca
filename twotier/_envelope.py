"""The L2 entry: one Redis string, so that an L2 hit is one GET with a one-string reply.

    b"2" SEP expires_ms SEP generation [SEP tag SEP version]... RS payload

* ``2`` is the entry format (the key names carry it too: ``v2``);
* ``expires_ms``: when the entry ends, in the writer's wall-clock milliseconds
  (a GET does not return the TTL; Redis expires the key at the same moment);
* ``generation``: the namespace generation it was stored under (a `clear()`,
  or a Redis that may have lost changes, starts a new one);
* the tags with the versions they had when the value was loaded (the
  snapshot taken *before* the loader ran), judged against the reader's
  version mirror (`_mirror.py`).

Tags, generations and numbers are printable, so the header never contains
``SEP`` inside a field or ``RS`` at all: the first ``RS`` ends the header,
whatever bytes the payload holds.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ._tier import SEP

RS = b"\x1e"  # ASCII record separator: ends the header
_MAGIC = "2"


class Envelope(NamedTuple):
    expires_ms: int
    generation: str
    tags: tuple[str, ...]
    versions: tuple[str, ...]
    payload: bytes
    header: bytes  # the bytes up to and including RS: what `claim` compares

    def remaining(self, now_ms: int | None = None) -> float:
        """Seconds left to live (negative once expired)."""
        return (self.expires_ms - (now_ms if now_ms is not None else now_wall_ms())) / 1000


def now_wall_ms() -> int:
    return time.time_ns() // 1_000_000


def pack(
    ttl: float, generation: str, tags: tuple[str, ...], versions: tuple[str, ...], payload: bytes
) -> bytes:
    return header(ttl, generation, tags, versions) + payload


def header(ttl: float, generation: str, tags: tuple[str, ...], versions: tuple[str, ...]) -> bytes:
    """An entry's header, RS included: entries stored together (a warmup batch)
    share one, and differ only by their payloads."""
    fields = [_MAGIC, str(now_wall_ms() + max(1, int(ttl * 1000))), generation]
    for tag, version in zip(tags, versions, strict=True):
        fields.append(tag)
        fields.append(version)
    return SEP.join(fields).encode() + RS


def unpack(data: bytes) -> Envelope | None:
    """The entry, or None for anything that is not one of ours (garbage)."""
    head, found, payload = data.partition(RS)
    if not found:
        return None
    try:
        fields = head.decode().split(SEP)
        if fields[0] != _MAGIC or len(fields) % 2 == 0:
            return None
        expires = int(fields[1])
    except (UnicodeDecodeError, ValueError, IndexError):
        return None
    return Envelope(
        expires,
        fields[2],
        tuple(fields[3::2]),
        tuple(fields[4::2]),
        payload,
        head + RS,
    )
