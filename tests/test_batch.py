"""The lean batch parser (`twotier/_batch.py`): the reply shapes twotier's scripts send."""

import asyncio
import time
from typing import Any

import pytest
import redis.exceptions as redis_errors

from tests.conftest import Handed
from twotier import _batch, _channel
from twotier._batch import Deadline, Incomplete, Push, bulk, command_head, parse, read_replies
from twotier._channel import Subscription, _frame
from twotier._pipe import _replies


def _all(buf: bytes) -> list[object]:
    out, pos = [], 0
    while pos < len(buf):
        reply, pos = parse(buf, pos)
        out.append(reply)
    return out


def test_packing_is_resp() -> None:
    assert bulk(b"ab\r\nc") == b"$5\r\nab\r\nc\r\n"
    assert command_head(3, b"GET") + bulk(b"k") == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n"


def test_resp2_and_resp3_replies() -> None:
    replies = _all(
        b":1\r\n"  # integer
        b"$5\r\na\r\nbc\r\n"  # a bulk string holding CRLF
        b"$0\r\n\r\n"  # empty
        b"$-1\r\n"  # RESP2 nil
        b"_\r\n"  # RESP3 null
        b"*2\r\n:2\r\n$1\r\nx\r\n"  # claim's {2, entry}
        b"*-1\r\n"  # nil array
        b"#t\r\n"  # RESP3 true
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"  # push: not a reply
    )
    assert replies[:8] == [1, b"a\r\nbc", b"", None, None, [2, b"x"], None, 1]
    assert type(replies[8]) is Push
    assert replies[8] == [b"message", b"c", b"m"]


def test_errors_are_returned_not_raised_and_typed_as_redis_py_types_them() -> None:
    noscript, oom, moved, other = _all(
        b"-NOSCRIPT No matching script.\r\n-OOM command not allowed\r\n"
        b"-MOVED 3999 127.0.0.1:6381\r\n-WRONGTYPE Operation against a key\r\n"
    )
    assert isinstance(noscript, redis_errors.NoScriptError)
    assert isinstance(oom, redis_errors.OutOfMemoryError)  # the guard names the cause by type
    assert isinstance(moved, redis_errors.MovedError)
    assert type(other) is redis_errors.ResponseError
    assert str(other).startswith("WRONGTYPE")


@pytest.mark.parametrize("cut", [b":1", b"$5\r\nab", b"*2\r\n:2\r\n", b"*2\r\n:2\r\n$1\r\n"])
def test_a_reply_cut_short_asks_for_more(cut: bytes) -> None:
    with pytest.raises(Incomplete):
        parse(cut, 0)


def test_an_unknown_reply_type_is_refused() -> None:
    with pytest.raises(redis_errors.InvalidResponse):
        parse(b"%1\r\n:1\r\n:2\r\n", 0)


def test_error_replies_typed_as_connection_errors_are_raised_by_the_pipe_and_the_channel() -> None:
    """LOADING parses to redis-py's BusyLoadingError, a ConnectionError, not a
    ResponseError: the read pipe and the channel raise it like any error reply
    (an outage for the guard and the listener), never pass it on as data."""
    (loading,) = _all(b"-LOADING Redis is loading the dataset in memory\r\n")
    assert isinstance(loading, redis_errors.BusyLoadingError)
    with pytest.raises(redis_errors.BusyLoadingError):
        _replies([b"entry", loading])
    with pytest.raises(redis_errors.BusyLoadingError):
        _frame(loading)


async def test_a_reply_that_stalls_halfway_times_out_a_timeout_after_its_last_byte() -> None:
    """Found by review: data that came in just after the deadline was set
    bought a whole second period, so a reply that stalled halfway failed up
    to twice the timeout after its last byte (here 2 s, not 1 s). The server
    is a loopback socket that sends 3 bytes of a 10-byte reply, then nothing."""
    timeout = 1.0

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        await asyncio.sleep(0.02)
        writer.write(b"$10\r\nabc")
        await asyncio.sleep(10)
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        writer.write(command_head(2, b"GET") + bulk(b"k"))
        deadline = Deadline(reader, timeout)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await read_replies(reader, 1, deadline)
        deadline.cancel()
        assert time.monotonic() - started < 1.5 * timeout  # 2 × timeout before the fix
    finally:
        writer.close()
        server.close()


# Issue 17, case 10: malformed replies, and a push frame after the last one.


class Chunks:
    """A connection's reader that hands out the given chunks, one per read
    (as the socket delivered them), and nothing more: a read past them fails."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self._buffer = b""  # (what `Deadline` looks at)

    async def read(self, n: int) -> bytes:
        assert self.chunks, "read past the data the server sent"
        chunk = self.chunks.pop(0)
        assert len(chunk) <= n
        return chunk


async def _read(chunks: Chunks, count: int) -> list[Any]:
    stream: Any = chunks  # read_replies only reads
    return await read_replies(stream, count, Deadline(stream, None))


MALFORMED = [
    b":x\r\n",
    b"$abc\r\n",
    b"#x\r\n",
    b"#tt\r\n",
    b"_x\r\n",
    b"$-5\r\n",
    b"$-0\r\n",
    b"$03\r\nabc\r\n",
    b":+5\r\n",
    b":1_0\r\n",
    b": 5\r\n",
    b":5 \r\n",
    b":007\r\n",
    b":-0\r\n",
    b":9223372036854775808\r\n",  # past a signed 64-bit integer
    b"*-2\r\n",
    b"*1 \r\n:1\r\n",
    b"*4294967296\r\n",
    b"+a\rb\r\n",
    b"-ERR a\nb\r\n",
    b"x\r\n",
    b"!3\r\nerr\r\n",
    b"*1\r\n" * 5000 + b":1\r\n",  # RecursionError before
]


@pytest.mark.parametrize("data", MALFORMED, ids=lambda data: repr(data[:12]))
def test_malformed_replies_raise_invalid_response(data: bytes) -> None:
    """Issue 17, case 10: `:x` raised ValueError, 5,000 nested arrays a
    RecursionError, and `#x`, `$-5`, `:+5`, `:1_0` were taken as values;
    hiredis refuses each, and so does the parser now, with the error the
    callers take as a broken connection."""
    with pytest.raises(redis_errors.InvalidResponse):
        parse(data, 0)


@pytest.mark.parametrize("data", MALFORMED, ids=lambda data: repr(data[:12]))
async def test_malformed_replies_fail_a_batch_with_invalid_response(
    backend: str, data: bytes
) -> None:
    with pytest.raises(redis_errors.InvalidResponse):
        await _read(Chunks(data), 1)


@pytest.mark.parametrize("kind", b"%~,(|")
def test_resp3_types_twotier_never_gets_are_refused(kind: int) -> None:
    with pytest.raises(redis_errors.InvalidResponse, match="unexpected reply type"):
        parse(bytes([kind]) + b"1\r\n:1\r\n:2\r\n", 0)


@pytest.mark.parametrize(
    ("data", "value"),
    [
        pytest.param(b"=7\r\ntxt:abc\r\n", b"abc", id="text"),
        pytest.param(b"=4\r\nmkd:\r\n", b"", id="empty"),
        pytest.param(b"=-1\r\n", None, id="nil"),
    ],
)
def test_a_verbatim_string_reads_as_its_text(data: bytes, value: bytes | None) -> None:
    """RESP3's verbatim string (`INFO` answers with one, on the listener's
    replica check): its text, the 4 bytes of format dropped, as hiredis
    reads it (without hiredis, the replica check failed on every node)."""
    assert parse(data, 0) == (value, len(data))


@pytest.mark.parametrize("data", [b"=3\r\ntxt\r\n", b"=4\r\ntxtx\r\n", b"=0\r\n\r\n"])
def test_a_verbatim_string_without_its_format_is_refused(data: bytes) -> None:
    with pytest.raises(redis_errors.InvalidResponse, match="Verbatim string"):
        parse(data, 0)


def test_nesting_is_bounded_as_in_hiredis() -> None:
    deepest = b"*1\r\n" * _batch.MAX_DEPTH + b":1\r\n"
    reply, _ = parse(deepest, 0)
    for _ in range(_batch.MAX_DEPTH):
        (reply,) = reply
    assert reply == 1
    with pytest.raises(redis_errors.InvalidResponse, match="nesting"):
        parse(b"*1\r\n" + deepest, 0)


def test_the_values_are_as_hiredis_returns_them() -> None:
    assert parse(b"#t\r\n", 0) == (True, 4)
    assert parse(b"#F\r\n", 0) == (False, 4)  # hiredis takes upper case too
    assert type(parse(b"#t\r\n", 0)[0]) is bool
    assert parse(b":-9223372036854775808\r\n", 0)[0] == -(2**63)
    assert parse(b"$2\r\nabXY", 0) == (b"ab", 8)  # the CRLF after the data is not checked
    nested = parse(b"*2\r\n>1\r\n:1\r\n:2\r\n", 0)[0]
    assert type(nested) is list
    assert type(nested[0]) is Push  # (as hiredis returns it)


def test_an_incomplete_reply_tells_how_much_it_needs() -> None:
    with pytest.raises(Incomplete) as bulk_cut:
        parse(b"*2\r\n:1\r\n$10\r\nab", 0)
    assert bulk_cut.value.needed == 25  # all of the bulk string and its CRLF
    assert bulk_cut.value.at == 8  # where the unfinished item starts
    with pytest.raises(Incomplete) as line_cut:
        parse(b":12", 0)
    assert line_cut.value.needed == 4
    assert line_cut.value.line


PUSH = b">4\r\n$6\r\nMOVING\r\n:7\r\n:15\r\n$13\r\n10.0.0.1:6379\r\n"


@pytest.mark.parametrize("cut", range(1, len(PUSH)))
async def test_a_push_frame_cut_after_the_last_reply_is_read_to_its_end(
    backend: str, cut: int
) -> None:
    """Issue 17, case 10: a RESP3 push (redis-py 8 turns on maintenance
    notifications) cut after the batch's last reply raised "more replies than
    commands". It is read to its end and skipped, and the stream is left in
    step: the next batch on the connection reads its own reply."""
    chunks = Chunks(b"$1\r\na\r\n:2\r\n" + PUSH[:cut], PUSH[cut:], b":9\r\n")
    assert await _read(chunks, 2) == [b"a", 2]
    assert chunks.chunks == [b":9\r\n"]  # the rest of the push read, nothing more
    assert await _read(chunks, 1) == [9]


@pytest.mark.parametrize("cut", [1, 3, 5, 9, 14])
async def test_a_push_frame_in_pieces_after_the_last_reply_is_read_to_its_end(
    backend: str, cut: int
) -> None:
    """The same, with the push's rest coming a byte per read, and a whole
    push frame before the cut one."""
    pieces = [PUSH[i : i + 1] for i in range(cut, len(PUSH))]
    chunks = Chunks(b":1\r\n" + PUSH + PUSH[:cut], *pieces, b":9\r\n")
    assert await _read(chunks, 1) == [1]
    assert chunks.chunks == [b":9\r\n"]


@pytest.mark.parametrize("extra", [b":3\r\n", b"*2\r\n:3\r\n", b"$5\r\nab", b">1\r\n:1\r\n:3"])
async def test_anything_but_a_push_after_the_last_reply_is_a_stream_out_of_step(
    backend: str, extra: bytes
) -> None:
    chunks = Chunks(b":1\r\n" + extra, b"\r\n", b"\r\n")
    with pytest.raises(redis_errors.InvalidResponse, match="more replies than commands"):
        await _read(chunks, 1)


class _Connection:
    """What `Subscription` borrows of a redis-py connection: its reader."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader


async def test_the_channel_refuses_a_malformed_frame(backend: str) -> None:
    frame = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n:x\r\n"
    subscription = Subscription(_Connection(Chunks(frame)), "c", sharded=False, timeout=1)
    with pytest.raises(redis_errors.InvalidResponse):
        await subscription.next()


async def test_the_channel_reads_frames_cut_anywhere(backend: str) -> None:
    frames = (
        b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
        b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nab\r\nc\r\n"
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n+PONG\r\n"
    )
    for cut in range(1, len(frames)):
        chunks = Chunks(frames[:cut], frames[cut:])
        subscription = Subscription(_Connection(chunks), "c", sharded=False, timeout=1)
        got = [await subscription.next() for _ in range(4)]
        assert got == [
            ("subscribed", b""),
            ("message", b"ab\r\nc"),
            ("message", b""),
            ("pong", b""),
        ]


# Issue 17, case 11: reading linear in the reply's size. Counted, not timed:
# the bytes the parser is handed over all its calls for one reply (the
# `handed` fixture, tests/conftest.py).


def _streamed(data: bytes) -> asyncio.StreamReader:
    """A stream holding *data*: each read takes up to 64 KiB of it."""
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return stream


async def test_a_32_mib_reply_is_parsed_once_not_on_every_read(
    monkeypatch: pytest.MonkeyPatch, handed: Handed
) -> None:
    """Issue 17, case 11: the pending buffer was copied and parsed again on
    every 64 KiB read (512 times for 32 MiB: 8.6 GB handed to the parser,
    1.3–2.1 s). The reader now waits until the bulk string is all in."""
    monkeypatch.setattr(_batch, "new_reader", _batch.Reader, raising=False)
    value = bytes(range(256)) * (1 << 17)  # 32 MiB
    stream = _streamed(bulk(value))
    assert await read_replies(stream, 1, Deadline(stream, None)) == [value]
    assert handed.calls <= 3
    assert handed.size <= 2 * len(value)


async def test_a_long_array_is_parsed_once_not_on_every_read(
    monkeypatch: pytest.MonkeyPatch, handed: Handed
) -> None:
    """An array of 200,000 integers over 21 reads: each read resumes where the
    last stopped, instead of parsing the array again from its start."""
    monkeypatch.setattr(_batch, "new_reader", _batch.Reader, raising=False)
    data = b"*200000\r\n" + b"".join(b":%d\r\n" % i for i in range(200_000))
    stream = _streamed(data)
    assert await read_replies(stream, 1, Deadline(stream, None)) == [list(range(200_000))]
    assert handed.size <= 2 * len(data)


async def test_a_large_publish_is_parsed_once_by_the_channel(
    monkeypatch: pytest.MonkeyPatch, handed: Handed
) -> None:
    """Issue 17, case 11: a 24 MiB publish kept the listener busy for 0.85 s."""
    monkeypatch.setattr(_channel, "new_reader", _batch.Reader, raising=False)
    payload = b"m" * (24 << 20)
    frame = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n" + bulk(payload)
    connection = _Connection(_streamed(frame + b"+PONG\r\n"))
    subscription = Subscription(connection, "c", sharded=False, timeout=1)
    assert await subscription.next() == ("message", payload)
    assert await subscription.next() == ("pong", b"")
    assert handed.size <= 2 * len(frame)


def test_a_line_cut_in_many_pieces_is_joined_once() -> None:
    """A line (a long error message) whose CRLF comes a piece at a time, and
    one cut between its CR and LF: the pieces wait, unjoined, for the CRLF."""
    line = b"-ERR " + b"x" * 100_000
    reader = _batch.Reader()
    for i in range(0, len(line), 1000):
        reader.feed(line[i : i + 1000])
        assert reader.gets() is _batch.MORE
        assert len(reader._parts) <= 1 + i // 1000  # kept aside, not joined
    reader.feed(b"\r")
    assert reader.gets() is _batch.MORE
    reader.feed(b"\n")
    error = reader.gets()
    assert isinstance(error, redis_errors.ResponseError)
    assert str(error) == line[5:].decode()
