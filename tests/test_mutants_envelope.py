"""The L2 entry's format on its own: what is ours is read back whole, anything
else is garbage (None), never a mis-decoded entry.

Written for the mutation run (.ci/mutation.py, module `envelope`); each test
names in its docstring the mutants it kills (ids from `--list`).
"""

from __future__ import annotations

import time

import pytest

from twotier._envelope import RS, Envelope, header, now_wall_ms, pack, unpack
from twotier._tier import SEP


def test_an_entry_reads_back_with_its_generation_tags_versions_and_payload() -> None:
    """Kills: envelope-7a6e2f, envelope-d4fa5c, envelope-3d1295, envelope-715880,
    envelope-75cfea, envelope-112ff4, envelope-ce5724, envelope-f1cb8f,
    envelope-06a3ba, envelope-d1d89f (the round trip's steps)."""
    payload = b"any bytes \x1e\x1f even separators"
    before = now_wall_ms()
    data = pack(30, "g7", ("a", "b"), ("3", "11"), payload)
    entry = unpack(data)
    assert entry is not None
    assert entry.generation == "g7"
    assert entry.tags == ("a", "b")
    assert entry.versions == ("3", "11")
    assert entry.payload == payload  # the first RS ends the header, whatever follows
    # (built again, the header may carry a later millisecond: compared without it)
    fresh = header(30, "g7", ("a", "b"), ("3", "11")).split(b"\x1f")
    assert (
        entry.header.split(b"\x1f")[:1] + entry.header.split(b"\x1f")[2:] == fresh[:1] + fresh[2:]
    )
    assert entry.header.endswith(RS)
    assert data == entry.header + payload
    assert before + 30_000 <= entry.expires_ms <= now_wall_ms() + 30_000


def test_an_entry_without_tags_reads_back() -> None:
    entry = unpack(pack(1, "g1", (), (), b"x"))
    assert entry is not None
    assert (entry.generation, entry.tags, entry.versions, entry.payload) == ("g1", (), (), b"x")


def test_the_header_refuses_tags_without_their_versions() -> None:
    """A tag stored without its version would be judged against the wrong one.
    Kills: envelope-fc3bd6 (zip(strict=False))."""
    with pytest.raises(ValueError, match="shorter"):
        header(1, "g1", ("a", "b"), ("1",))


def test_a_ttl_under_a_millisecond_still_lives_a_millisecond() -> None:
    entry = unpack(pack(0.0001, "g1", (), (), b""))
    assert entry is not None
    assert entry.expires_ms >= now_wall_ms() - 1000  # not in the past by the ttl's rounding


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(f"2{SEP}123{SEP}g1".encode(), id="no record separator"),
        pytest.param(f"3{SEP}123{SEP}g1".encode() + RS + b"x", id="another format"),
        pytest.param(f"2{SEP}123{SEP}g1{SEP}tag".encode() + RS + b"x", id="a tag without version"),
        pytest.param(f"2{SEP}soon{SEP}g1".encode() + RS + b"x", id="expiry not a number"),
        pytest.param(b"2\x1f\xff\xfe\x1fg1" + RS + b"x", id="header not utf-8"),
        pytest.param(b"2" + RS + b"x", id="no expiry"),
        pytest.param(b"x" + RS, id="foreign"),
    ],
)
def test_anything_not_an_entry_of_ours_is_garbage(data: bytes) -> None:
    """None, never an exception or a mis-decoded entry.
    Kills: envelope-4d8c6b, envelope-4d8bd3 (no RS), envelope-6e8c30,
    envelope-3102c9, envelope-6a18d4 (format and field count), envelope-750d5d
    (the decode errors)."""
    assert unpack(data) is None


def test_remaining_counts_from_the_given_moment_or_now() -> None:
    """Kills: envelope-4da640 (no result), envelope-3dd65f (`is not` -> `is`)."""
    entry = Envelope(10_000, "g1", (), (), b"", b"")
    assert entry.remaining(4_000) == 6.0
    assert entry.remaining(12_500) == -2.5
    live = Envelope(now_wall_ms() + 60_000, "g1", (), (), b"", b"")
    assert 59 < live.remaining() <= 60


def test_wall_clock_milliseconds() -> None:
    """Kills: envelope-2f901d."""
    assert abs(now_wall_ms() - time.time() * 1000) < 5_000
