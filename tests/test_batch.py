"""The lean batch parser (`twotier/_batch.py`): the reply shapes twotier's scripts send."""

import pytest
import redis.exceptions as redis_errors

from twotier._batch import Incomplete, Push, bulk, command_head, parse
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
