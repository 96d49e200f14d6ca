"""The lean batch parser (`twotier/_batch.py`): the reply shapes twotier's scripts send."""

import asyncio
import time

import pytest
import redis.exceptions as redis_errors

from twotier._batch import Deadline, Incomplete, Push, bulk, command_head, parse, read_replies
from twotier._channel import _frame
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
