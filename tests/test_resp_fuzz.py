"""The hand-written RESP parser (`twotier/_batch.py`) against hiredis' `Reader`.

twotier reads replies with hiredis when it is installed and with its own
parser when not; the two must not differ on anything twotier reads
(issue 17, "What to build" 3). So random replies — RESP2 and RESP3 — and
random malformed bytes are fed to both, split at random boundaries, and:

* what hiredis accepts of the types twotier reads (integers, bulk and
  simple strings, nil, arrays, errors, RESP3 null, boolean, verbatim string
  and push), the parser accepts, with the same values of the same types;
* what hiredis refuses (a protocol error), the parser refuses with
  `InvalidResponse`, at the same reply;
* where hiredis waits for more data, so does the parser;
* the RESP3 types twotier never gets (map, set, double, big number,
  attribute) the parser refuses, wherever they occur.

The stateless `parse` and the resumable `Reader` are held to the same.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import pytest
import redis.exceptions as redis_errors
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from twotier import _batch

_SETTINGS = settings(
    max_examples=200,
    deadline=None,  # a loaded CI machine must not fail a correct example
    suppress_health_check=[HealthCheck.too_slow],
)
_MORE = object()
_UNUSED = b"%~,(|"  # the RESP3 types twotier never gets


def _normal(reply: Any) -> Any:
    """A reply with its types spelled out, so that True ≠ 1 and a push frame
    ≠ an array (both parsers' values compare equal across those otherwise)."""
    if isinstance(reply, Exception):
        return ("error", type(reply).__name__, str(reply))
    if isinstance(reply, list):
        kind = "array" if type(reply) is list else "push"
        return (kind, [_normal(item) for item in reply])
    return (type(reply).__name__, reply)


Outcome = tuple[list[Any], str]  # the replies, then "more", "error" or "unused"


def _hiredis(chunks: Sequence[bytes]) -> Outcome:
    reader = hiredis.Reader(
        protocolError=redis_errors.InvalidResponse,
        replyError=_batch._error,  # (redis-py's typing, as both readers use it)
        notEnoughData=_MORE,
    )
    replies: list[Any] = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (reply := reader.gets()) is not _MORE:
                replies.append(_normal(reply))
    except (redis_errors.InvalidResponse, *_batch.HIREDIS_FAILURES):
        return replies, "error"  # (a map keyed by an array: TypeError)
    return replies, "more"


def _verdict(exc: redis_errors.InvalidResponse) -> str:
    return "unused" if str(exc).startswith("unexpected reply type") else "error"


def _reader(chunks: Sequence[bytes]) -> Outcome:
    reader = _batch.Reader()
    replies: list[Any] = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (reply := reader.gets()) is not _batch.MORE:
                replies.append(_normal(reply))
    except redis_errors.InvalidResponse as exc:
        return replies, _verdict(exc)
    return replies, "more"


def _parse(data: bytes) -> Outcome:
    """The stateless `parse`, over the whole of *data*."""
    replies: list[Any] = []
    pos = 0
    try:
        while True:
            reply, pos = _batch.parse(data, pos)
            replies.append(_normal(reply))
    except _batch.Incomplete:
        return replies, "more"
    except redis_errors.InvalidResponse as exc:
        return replies, _verdict(exc)


def _agree(data: bytes, chunks: Sequence[bytes]) -> Outcome:
    """Assert that the parser, fed *chunks*, and hiredis agree; the outcome."""
    expected = _hiredis(chunks)
    got = _reader(chunks)
    assert _parse(data) == got, "parse and Reader differ"
    replies, verdict = got
    if verdict == "unused":
        # Refused on sight, wherever it occurs: hiredis read the replies
        # before it alike, and reads that reply as something (or refuses it).
        assert any(kind in data for kind in _UNUSED)
        assert expected[0][: len(replies)] == replies
        assert len(expected[0]) >= len(replies)
    else:
        assert got == expected
    return got


def _cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* split at random places (some empty pieces, some single bytes)."""
    if not data:
        return [data]
    points = draw(st.lists(st.integers(0, len(data)), max_size=12))
    points = sorted({0, len(data), *points})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [data]


# Valid replies, of the types twotier reads: RESP2's, and RESP3's (which adds
# the null, the boolean and the push frame).
_line = st.binary(max_size=40).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
_scalar2 = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda n: b":%d\r\n" % n),
    st.binary(max_size=300).map(lambda raw: b"$%d\r\n%s\r\n" % (len(raw), raw)),
    _line.map(lambda raw: b"+" + raw + b"\r\n"),
    st.sampled_from([b"ERR", b"NOSCRIPT", b"MOVED", b"OOM", b"LOADING", b"WRONGTYPE"]).flatmap(
        lambda prefix: _line.map(lambda raw: b"-" + prefix + b" " + raw + b"\r\n")
    ),
    st.sampled_from([b"$-1\r\n", b"*-1\r\n"]),
)
_scalar3 = st.one_of(
    _scalar2,
    st.sampled_from([b"_\r\n", b">-1\r\n", b"#t\r\n", b"#f\r\n", b"#T\r\n", b"#F\r\n"]),
    # A verbatim string (`INFO`'s answer): a 3-byte format, ':', the text.
    st.tuples(st.sampled_from([b"txt", b"mkd"]), st.binary(max_size=300)).map(
        lambda parts: b"=%d\r\n%s:%s\r\n" % (len(parts[1]) + 4, parts[0], parts[1])
    ),
)


def _aggregate(kinds: bytes) -> Any:
    def extend(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        return st.tuples(st.sampled_from(kinds), st.lists(children, max_size=5)).map(
            lambda kind_items: (
                b"%c%d\r\n" % (kind_items[0], len(kind_items[1])) + b"".join(kind_items[1])
            )
        )

    return extend


_REPLIES = {
    "resp2": st.recursive(_scalar2, _aggregate(b"*"), max_leaves=30),
    "resp3": st.recursive(_scalar3, _aggregate(b"*>"), max_leaves=30),
}
_reply = _REPLIES["resp3"]


@pytest.mark.parametrize("protocol", ["resp2", "resp3"])
@_SETTINGS
@given(st.data())
def test_valid_replies_read_as_hiredis_reads_them(protocol: str, data: st.DataObject) -> None:
    whole = b"".join(data.draw(st.lists(_REPLIES[protocol], min_size=1, max_size=6)))
    chunks = _cuts(data.draw, whole)
    replies, verdict = _agree(whole, chunks)
    assert verdict == "more"  # all read, nothing refused
    assert replies  # (at least one)


@_SETTINGS
@given(st.data())
def test_valid_replies_cut_short_wait_for_more(data: st.DataObject) -> None:
    whole = b"".join(data.draw(st.lists(_reply, min_size=1, max_size=4)))
    end = data.draw(st.integers(0, len(whole) - 1))
    cut = whole[:end]
    _agree(cut, _cuts(data.draw, cut))


# Malformed input: soups of RESP tokens, and valid replies with a few bytes
# changed. hiredis' lists are allocated at their announced length at once,
# so counts past a million (which the soup rarely makes) are left out.
_TOKENS = st.one_of(
    st.sampled_from(
        [
            *(b":", b"$", b"+", b"-", b"*", b">", b"_", b"#", b"\r\n", b"\r", b"\n"),
            *(b"0", b"1", b"-1", b"2", b"9", b" ", b"t", b"f", b"T", b"x", b"\x00", b"\xff"),
            *(b"%", b"~", b",", b"(", b"=", b"|", b"!", b"9223372036854775808"),
        ]
    ),
    st.integers(-3, 40).map(lambda n: b"%d" % n),
    st.binary(max_size=4),
)
_HUGE_COUNT = re.compile(rb"[*>%~|]-?\d{7,}")


@st.composite
def _soup(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(_TOKENS, max_size=60)))
    assume(not _HUGE_COUNT.search(data))
    return _cuts(draw, data)


@st.composite
def _mutated(draw: st.DrawFn) -> list[bytes]:
    data = bytearray(b"".join(draw(st.lists(_reply, min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from(b":$+-*>_#\r\n0123456789 x%~,(=|"))
        if edit == "insert":
            data[at:at] = bytes([byte])
        elif at < len(data):
            data[at : at + 1] = bytes([byte]) if edit == "replace" else b""
    assume(not _HUGE_COUNT.search(data))
    return _cuts(draw, bytes(data))


@_SETTINGS
@given(_soup())
def test_token_soups_are_refused_or_read_as_hiredis_does(chunks: list[bytes]) -> None:
    _agree(b"".join(chunks), chunks)


@_SETTINGS
@given(_mutated())
def test_damaged_replies_are_refused_or_read_as_hiredis_does(chunks: list[bytes]) -> None:
    _agree(b"".join(chunks), chunks)


# The RESP3 types twotier never gets: hiredis reads them, the parser refuses them.
_unused = st.sampled_from(
    [
        b"%1\r\n+a\r\n:1\r\n",  # map
        b"~2\r\n:1\r\n:2\r\n",  # set
        b",1.5\r\n",  # double
        b"(12345678901234567890\r\n",  # big number
    ]
)


@_SETTINGS
@given(st.data())
def test_types_twotier_never_gets_are_refused(data: st.DataObject) -> None:
    host = data.draw(_reply.filter(lambda raw: raw[:1] in b"*>" and raw[1:3] != b"0\r"))
    unused = data.draw(_unused)
    # In place of the host aggregate's first item, or as a reply of its own.
    at = host.index(b"\r\n") + 2
    whole = data.draw(st.sampled_from([host[:at] + unused + host[at:], unused]))
    before = data.draw(_reply)
    chunks = _cuts(data.draw, before + whole)
    _, verdict = _agree(before + whole, chunks)
    assert verdict == "unused"


# The same replies through `read_replies`, with either reader, push frames
# anywhere among them and after the last one.


class _Stream:
    """A connection's reader handing out the given chunks, one per read."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self._buffer = b""  # (what `Deadline` looks at)

    async def read(self, n: int) -> bytes:
        assert self.chunks, "read past the data the server sent"
        return self.chunks.pop(0)


_push = st.lists(_reply, max_size=4).map(lambda items: b">%d\r\n" % len(items) + b"".join(items))
_answer = _reply.filter(lambda raw: raw[:1] != b">")  # a reply to a command


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for all the examples (a new one each costs more than the example)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize("reader", ["hiredis", "hand-written"])
@settings(_SETTINGS, max_examples=100)
@given(st.data())
def test_read_replies_skips_push_frames_wherever_they_fall(
    loop: asyncio.AbstractEventLoop, reader: str, data: st.DataObject
) -> None:
    answers = data.draw(st.lists(_answer, min_size=1, max_size=5))
    stream = b""
    for answer in answers:
        stream += b"".join(data.draw(st.lists(_push, max_size=2))) + answer
    trailing = b"".join(data.draw(st.lists(_push, max_size=2)))
    chunks = [piece for piece in _cuts(data.draw, stream + trailing) if piece]  # (b"": closed)
    expected = _hiredis([b"".join(answers)])[0]
    follows = b":12345\r\n"  # the next batch's reply, sent later

    async def run() -> tuple[list[Any], list[Any], list[bytes]]:
        source: Any = _Stream([*chunks, follows])
        if reader == "hand-written":
            new, push = _batch.Reader, _batch.Push
        else:
            new, push = _batch.new_reader, _batch._PUSH
        saved = _batch.new_reader, _batch._PUSH
        _batch.new_reader, _batch._PUSH = new, push
        try:
            got = await _batch.read_replies(source, len(answers), _batch.Deadline(source, None))
            # The next batch on the connection: push frames that came after
            # the first one returned it skips; it must find its reply in step.
            then = await _batch.read_replies(source, 1, _batch.Deadline(source, None))
        finally:
            _batch.new_reader, _batch._PUSH = saved
        return got, then, source.chunks

    got, then, left = loop.run_until_complete(run())
    assert [_normal(reply) for reply in got] == expected
    assert then == [12345]
    assert left == []
