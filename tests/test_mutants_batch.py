"""The lean batch path (`_batch.py`) on its own, with no server: the packing,
the hand-written reply parser and its resumable `Reader` held to hiredis, the
choice of hiredis' reader, the batch deadline, and `run_on`'s handling of the
connection.

Written for the mutation run (.ci/mutation.py, module `batch`); each test
names in its docstring the mutants it kills (ids from `--list`). The random
comparison with hiredis is in tests/test_resp_fuzz.py; these are the cases it
finds only by luck, fixed.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import hiredis
import pytest
import redis.exceptions as redis_errors

from tests.conftest import Handed
from tests.test_batch import PUSH, Chunks
from tests.test_resp_fuzz import _agree
from twotier import _batch
from twotier._batch import Deadline, Incomplete, Reader, command, parse, read_replies


def test_a_command_is_packed_byte_exactly_strings_as_utf8_integers_in_decimal() -> None:
    """Every script call goes out through `command`: bytes as they are, text
    as UTF-8 (its length in bytes), integers in decimal, negative ones too.
    Kills: batch-98f0f3 (no array header), batch-2104d5 (text not encoded),
    batch-ba8c69 (integer not formatted), batch-ed06d2 (no arguments),
    batch-f12063 (nothing returned)."""
    assert command(b"EVALSHA", "ké", 42, -1, b"") == (
        b"*5\r\n$7\r\nEVALSHA\r\n$3\r\nk\xc3\xa9\r\n$2\r\n42\r\n$2\r\n-1\r\n$0\r\n\r\n"
    )


# Single replies whose reading hinges on one comparison of the parser:
# counts and lengths at the edges of hiredis' `string2ll`, the type byte of a
# line not yet in, the RESP3 scalars. Each is held to hiredis whole, and cut
# at every byte boundary (the `Reader` resuming), and a byte at a time.
EDGES = [
    b"*0\r\n",
    b"*10\r\n" + b":1\r\n" * 10,
    b"*01\r\n:1\r\n",
    b"*-1\r\n",
    b"*2\r\n*0\r\n$-1\r\n",
    b":0\r\n",
    b":12\r\n",
    b":-5\r\n",
    b":-0\r\n",
    b":-\r\n",
    b":-x\r\n",
    b":x\r\n",
    b":9223372036854775807\r\n",
    b":9223372036854775808\r\n",
    b":-9223372036854775808\r\n",
    b":-9223372036854775809\r\n",
    b":99999999999999999999\r\n",
    b"$0\r\n\r\n",
    b"$10\r\n0123456789\r\n",
    b"$ 5\r\nabcde\r\n",
    b"$1_0\r\n0123456789\r\n",
    b"$-1\r\n",
    b"$-0\r\n",
    b"$9223372036854775807\r\n",
    b"$9223372036854775808\r\n",
    b"$99999999999999999999\r\n",
    b"+OK\r\n",
    b"-ERR wrong\r\n",
    b"_\r\n",
    b"#t\r\n",
    b"#f\r\n",
    b"#\x00\r\n",
    b"#tt\r\n",
    b"x",
    b"x1\r\n",
    b"*1\r\n" * 1024 + b"*",
    b"*1\r\n" * 1024 + b">",
    b"*1\r\n" * 1024 + b":",
    b"*1\r\n" * 1023 + b"*",
    b"*1\r\n" * 1023 + b">1\r\n:1",
    b"*1",
    b">1",
]


@pytest.mark.parametrize("data", EDGES, ids=lambda data: repr(data[-24:]))
def test_edge_replies_read_as_hiredis_reads_them_whole_and_cut_anywhere(data: bytes) -> None:
    """What hiredis returns, the parser returns (same values, same types);
    what hiredis refuses, the parser refuses with InvalidResponse; where
    hiredis waits, so does it — whole, cut in two anywhere, a byte at a time.
    Kills: batch-f42b22 (`*10` refused), batch-14b33c and batch-44e3a3 (`*0`
    refused, `*01` taken), batch-76007c and batch-44a1b5 (`:-` and `:-x`:
    ValueError), batch-8ebb8c, batch-60e305, batch-3296d5, batch-8637f3
    (`:-5` refused), batch-f02a21 and batch-c4a512 (a bad type byte waited
    on, or a good one refused, before its line is in), batch-d00a1e,
    batch-b9a5aa, batch-11e8e1, batch-32067e, batch-1c7c87, batch-15f2ce (the
    nesting bound judged at the type byte of an aggregate, only of an
    aggregate, only at 1,024 deep), batch-f81c7c (`*0` read as nil),
    batch-33b449, batch-457e0d, batch-c42fc6 (`$ 5`, `$1_0`, and lengths
    past 2**63 taken by the fast path), batch-b52387 (a CRLF cut after a
    chunk taken whole, never seen)."""
    _agree(data, [data])
    for cut in range(max(1, len(data) - 40), len(data)):  # (the nesting cases: near the end)
        _agree(data, [data[:cut], data[cut:]])
    if len(data) < 100:
        _agree(data, [data[i : i + 1] for i in range(len(data))])


def test_an_array_as_long_as_hiredis_allows_waits_for_its_items_and_a_longer_one_is_refused() -> (
    None
):
    """hiredis' bound on an aggregate's length is 2**32 - 1 elements
    (REDIS_READER_MAX_ARRAY_ELEMENTS): that long an array is read (its
    items awaited), one more is a protocol error. (hiredis' Python reader
    cannot be the oracle here: it allocates the whole list up front.)
    Kills: batch-b14856 (`>` -> `>=`: the longest array refused)."""
    with pytest.raises(Incomplete):
        parse(b"*4294967295\r\n", 0)
    with pytest.raises(redis_errors.InvalidResponse, match="out of range"):
        parse(b"*4294967296\r\n", 0)


def test_error_replies_come_back_typed_and_a_malformed_one_as_invalid_response() -> None:
    """An error reply is returned (not raised) as redis-py types it, and one
    whose arguments redis-py cannot read (`-MOVED` alone) as InvalidResponse,
    returned too: by the parser and through hiredis (which calls `_error`,
    so the comparison with hiredis cannot see these).
    Kills: batch-fa8c90 (None for every error), batch-8ee3d6 (None for a
    malformed MOVED)."""
    (error, _) = parse(b"-ERR wrong\r\n", 0)
    assert type(error) is redis_errors.ResponseError
    assert str(error) == "wrong"
    (malformed, _) = parse(b"-MOVED\r\n", 0)
    assert type(malformed) is redis_errors.InvalidResponse
    assert "malformed error reply" in str(malformed)
    reader = _batch.new_reader()
    reader.feed(b"-MOVED\r\n-NOSCRIPT No matching script.\r\n")
    assert type(reader.gets()) is redis_errors.InvalidResponse
    assert type(reader.gets()) is redis_errors.NoScriptError


def _feed_all(reader: Reader, data: bytes, piece: int) -> list[Any]:
    replies = []
    for i in range(0, len(data), piece):
        reader.feed(data[i : i + piece])
        while (reply := reader.gets()) is not _batch.MORE:
            replies.append(reply)
    return replies


def test_a_bulk_string_full_of_crlfs_in_many_pieces_is_parsed_once(handed: Handed) -> None:
    """A bulk string waits for all its bytes, not for the next CRLF: data
    that holds CRLFs (any binary value may), fed 1 KiB at a time, is handed
    to the parser a bounded number of times, not once per piece (200 KiB
    in 200 pieces: 20 MB handed, were it parsed again on every one).
    Kills: batch-3dcd66 (a cut bulk string reported as a cut line)."""
    value = b"\r\n" * 100_000
    data = _batch.bulk(value)
    with pytest.raises(Incomplete) as cut:
        parse(data[:1000], 0)
    assert not cut.value.line
    assert _feed_all(Reader(), data, 1024) == [value]
    assert handed.size <= 2 * len(data)


def test_a_long_line_in_many_pieces_is_parsed_once(handed: Handed) -> None:
    """A line waits for its CRLF: the pieces before it (none holding a
    CRLF) are kept aside, not joined and parsed again one by one.
    Kills: batch-b18e11 (`in` -> `not in`: a piece without CRLF set off a
    new attempt)."""
    line = b"-ERR " + b"x" * 200_000 + b"\r\n"
    (error,) = _feed_all(Reader(), line, 1000)
    assert str(error) == "x" * 200_000
    assert handed.size <= 2 * len(line)


def test_a_malformed_line_of_lone_crs_in_many_pieces_is_refused_in_linear_work(
    handed: Handed,
) -> None:
    """A hostile line whose every piece ends in a lone CR (no LF after it)
    is refused once its CRLF comes — as hiredis refuses it — after being
    parsed once, not once per piece: the CR only counts with an LF right
    after it.
    Kills: batch-f6cb8f (`and` -> `or`: a CR at a piece's end set off a new
    attempt whatever followed)."""
    pieces = [b"+" + b"x" * 998 + b"\r", *[b"y" * 999 + b"\r"] * 199, b"\r\n"]
    line = b"".join(pieces)
    assert _agree(line, [line])[1] == "error"
    before = handed.size
    reader = Reader()
    for piece in pieces[:-1]:
        reader.feed(piece)
        assert reader.gets() is _batch.MORE
    reader.feed(pieces[-1])
    with pytest.raises(redis_errors.InvalidResponse, match="simple string"):
        reader.gets()
    assert handed.size - before <= 2 * len(line)


def test_asking_again_with_nothing_new_does_not_parse_again(handed: Handed) -> None:
    """`gets` after MORE, with nothing fed since, answers MORE without
    parsing the pending line again (a caller polling a 100 KB pending line
    would otherwise pay 100 KB per call).
    Kills: batch-ecf06c (`or` -> `and`), batch-a8960e (the early MORE
    deleted)."""
    reader = Reader()
    reader.feed(b"+" + b"x" * 100_000)
    assert reader.gets() is _batch.MORE
    for _ in range(100):
        assert reader.gets() is _batch.MORE
    assert handed.size <= 2 * 100_001
    reader.feed(b"\r\n")
    assert reader.gets() == b"x" * 100_000


def test_a_reply_that_ends_the_data_fed_lets_its_buffer_go() -> None:
    """Once a reply that ends the data is returned, the reader holds none of
    it: an 8 MiB reply, joined from two reads, is not kept alive by an idle
    reader until the next read.
    Kills: batch-7f8226 (`>=` -> `>`), batch-5d986f (the release deleted)."""
    data = _batch.bulk(b"v" * (8 << 20))
    half = len(data) // 2
    tracemalloc.start()
    try:
        reader = Reader()
        reader.feed(data[:half])
        assert reader.gets() is _batch.MORE
        reader.feed(data[half:])
        reply = reader.gets()
        assert len(reply) == 8 << 20
        del reply
        held, _ = tracemalloc.get_traced_memory()
        assert held < 1 << 20
        assert reader.gets() is _batch.MORE
    finally:
        tracemalloc.stop()


def test_an_empty_read_and_reads_fed_before_asking_are_taken_in_order() -> None:
    """hiredis' `feed` takes an empty chunk as nothing, and any number of
    chunks before the next `gets`, in order; so does the reader's.
    Kills: batch-edd6be (an empty chunk while a line is pending: IndexError),
    batch-514c1a (a chunk fed after another without a `gets` between went
    in front of it)."""
    reader = Reader()
    reader.feed(b":12")
    assert reader.gets() is _batch.MORE
    reader.feed(b"")
    reader.feed(b"3\r")
    reader.feed(b"\n:4")
    assert reader.gets() == 123
    reader = Reader()
    reader.feed(b"")
    reader.feed(b":1")
    reader.feed(b"\r\n")
    reader.feed(b":2\r\n")
    assert [reader.gets(), reader.gets(), reader.gets()] == [1, 2, _batch.MORE]


def test_hiredis_reads_the_replies_when_installed_and_strict() -> None:
    """hiredis (here 3.5 or later: bounded nesting, push frames) is the
    reader of every batch and of the channel, 6 to 16 times faster than the
    hand-written one, and its push frame type is the one skipped.
    Kills: batch-69dd20, batch-801f7c, batch-23b3a3 (the strictness probe
    not fed, fed one level short, or not read: hiredis passed over),
    batch-0072c9, batch-6ee2bb (hiredis passed over), batch-052ba0 (the
    hand-written reader chosen with hiredis there), batch-20001a (hiredis'
    push frames not told apart)."""
    assert _batch._hiredis() is not None
    assert type(_batch.new_reader()) is hiredis.Reader
    assert _batch._PUSH is hiredis.PushNotification


async def test_a_reply_hiredis_cannot_build_fails_the_batch_with_invalid_response() -> None:
    """A map keyed by an array makes hiredis raise TypeError: the batch
    fails with InvalidResponse, as on any malformed reply (the callers drop
    the connection on it), not with a TypeError.
    Kills: batch-3ddd8a (`refused` returns None: a TypeError), batch-bc911d
    (the failure swallowed)."""
    chunks = Chunks(b"%1\r\n*1\r\n:1\r\n:2\r\n")
    with pytest.raises(redis_errors.InvalidResponse, match="cannot build"):
        await read_replies(chunks, 1, Deadline(chunks, None))  # type: ignore[arg-type]


class _Arrivals:
    """A deadline that counts the arrivals it is told of."""

    def __init__(self) -> None:
        self.count = 0

    def arrived(self) -> None:
        self.count += 1


async def test_every_read_that_brings_data_restarts_the_deadline(backend: str) -> None:
    """The bound is on a wait with no data coming: each chunk read tells the
    deadline, so a large batch arriving steadily is not cut off.
    Kills: batch-c6cec5 (arrivals not told)."""
    chunks = Chunks(b"*3\r\n:1", b"\r\n:2\r", b"\n:3\r\n")
    deadline: Any = _Arrivals()
    assert await read_replies(chunks, 1, deadline) == [[1, 2, 3]]  # type: ignore[arg-type]
    assert deadline.count == 3


async def test_a_connection_closed_before_the_last_reply_is_a_connection_error(
    backend: str,
) -> None:
    """The server hanging up mid-batch (an empty read) fails the batch at
    once with ConnectionError, not a wait or a wrong count.
    Kills: batch-dd1c63 (the empty read fed, and read again for ever),
    batch-f1e722 (every read taken for a close)."""
    stream = asyncio.StreamReader()
    stream.feed_data(b":1\r\n:2")
    stream.feed_eof()
    with pytest.raises(redis_errors.ConnectionError, match="closed"):
        await read_replies(stream, 2, Deadline(stream, None))


async def test_whole_push_frames_then_a_stray_reply_after_the_last_one_fail_at_once(
    backend: str,
) -> None:
    """After the last reply, whole push frames are skipped, and a reply
    under way behind them is a stream out of step: it fails the batch with
    no further read (which would wait on a server with nothing more to
    say), with either reader.
    Kills: batch-0fc92f (hiredis' doubt settled, but the push frames the
    hand-written reader holds first not read: the stray reply waited on)."""
    chunks = Chunks(b":1\r\n" + PUSH + b":3")
    with pytest.raises(redis_errors.InvalidResponse, match="more replies than commands"):
        await read_replies(chunks, 1, Deadline(chunks, None))  # type: ignore[arg-type]


async def test_a_batch_hiredis_reads_to_its_end_is_not_read_again(handed: Handed) -> None:
    """Only a batch left in doubt after its last reply (a push frame cut
    short, a stream out of step) is read a second time by the hand-written
    parser; one that ends cleanly, or with whole push frames, costs hiredis'
    reading alone.
    Kills: batch-9a3d10, batch-cb9fe5, batch-0b0fbc, batch-b8516e,
    batch-784f65 (every batch read again)."""
    for data in (b":1\r\n$1\r\na\r\n", b":1\r\n$1\r\na\r\n" + PUSH):
        chunks = Chunks(data[:3], data[3:])
        assert await read_replies(chunks, 2, Deadline(chunks, None)) == [1, b"a"]  # type: ignore[arg-type]
    assert handed.calls == 0


# The deadline, on a clock of the test's own: when the read fails is exact.


class _Timer:
    def __init__(self, when: float, callback: Any) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Clock:
    """The loop as `Deadline` uses it: its time, and timers."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_Timer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any) -> _Timer:
        timer = _Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[float]:
        return sorted(t.when for t in self.timers if not t.cancelled)

    def fire(self, at: float | None = None) -> None:
        """Run the earliest timer, at its time (or later: a loop running late)."""
        timer = min((t for t in self.timers if not t.cancelled), key=lambda t: t.when)
        self.timers.remove(timer)
        self.now = max(self.now, timer.when if at is None else at)
        timer.callback()


class _Stream:
    """What `Deadline` sees of a StreamReader: its buffer, its failure."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.failed: BaseException | None = None

    def set_exception(self, exc: BaseException) -> None:
        self.failed = exc


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(asyncio, "get_running_loop", lambda: clock)
    return clock


def _deadline(stream: _Stream, timeout: float | None) -> Deadline:
    anything: Any = stream
    return Deadline(anything, timeout)


def test_a_read_with_no_data_fails_when_the_timeout_passes(clock: _Clock) -> None:
    """No data at all: the pending read fails with TimeoutError exactly one
    timeout after the batch was sent, not before.
    Kills: batch-5306d5 (no time of last data: AttributeError),
    batch-88c2a7, batch-d05bb1 (the stream or the timeout forgotten),
    batch-35fde3, batch-e510e8 (no timer), batch-a05db8 (assertion
    inverted), batch-23bf69 (the read never failed)."""
    stream = _Stream()
    _deadline(stream, 2.0)
    assert clock.pending() == [2.0]
    clock.fire()
    assert isinstance(stream.failed, TimeoutError)
    assert clock.pending() == []


def test_the_timeout_counts_from_the_last_data(clock: _Clock) -> None:
    """Data that came in moves the bound: at the first expiry the timer
    waits on for what is left of a timeout after that data, and fails the
    read exactly then, not a whole timeout later.
    Kills: batch-6b6756 (arrivals not recorded: failed at the first expiry),
    batch-ffc54c, batch-b0e6a2 (NameError), batch-b15f61 (no new timer: never
    failed), batch-311532 (`>` -> `>=`: at the bound, another turn waited),
    batch-995650 (`and` -> `or`: the same)."""
    stream = _Stream()
    deadline = _deadline(stream, 2.0)
    clock.now = 1.25
    deadline.arrived()
    clock.fire()
    assert stream.failed is None
    assert clock.pending() == [3.25]
    clock.fire()
    assert isinstance(stream.failed, TimeoutError)


def test_a_timer_late_past_the_bound_fails_the_read_at_once(clock: _Clock) -> None:
    """A loop late past the bound (the data long stopped, nothing waiting
    in the stream) fails the read when the timer runs, not later.
    Kills: batch-995650 (`and` -> `or`: a timer set in the past, again and
    again)."""
    stream = _Stream()
    deadline = _deadline(stream, 2.0)
    clock.now = 0.5
    deadline.arrived()
    clock.fire(at=3.0)
    assert isinstance(stream.failed, TimeoutError)


def test_data_waiting_in_the_stream_when_the_timer_runs_is_no_timeout(clock: _Clock) -> None:
    """The loop was late, and the data came in the same turn as the timer:
    no failure; the timer waits a whole timeout again, and fails the read
    only if nothing more comes.
    Kills: batch-f28ddb (no new timer: never failed), batch-682624 (failed
    with the data there)."""
    stream = _Stream()
    _deadline(stream, 2.0)
    stream._buffer += b":1\r\n"
    clock.fire(at=2.5)
    assert stream.failed is None
    assert clock.pending() == [4.5]
    stream._buffer.clear()
    clock.fire()
    assert isinstance(stream.failed, TimeoutError)


def test_a_cancelled_deadline_never_fails_a_read(clock: _Clock) -> None:
    """Cancelled once the batch is read, the timer is gone: it cannot fail
    the next batch's read on the same connection. Without a bound there is
    no timer, and cancelling is harmless.
    Kills: batch-21a73e (`is not` -> `is`), batch-b11e59 (not cancelled),
    batch-9f4c42 (no handle without a bound: AttributeError)."""
    stream = _Stream()
    _deadline(stream, 2.0).cancel()
    assert clock.pending() == []
    unbounded = _deadline(stream, None)
    assert clock.pending() == []
    unbounded.cancel()
    assert stream.failed is None


# run and run_on, on fakes of redis-py's pool, connection and writer.


class _Transport:
    def __init__(self, buffered: int) -> None:
        self.buffered = buffered

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Writer:
    def __init__(self, events: list[str], buffered: int = 0, fails: bool = False) -> None:
        self.events = events
        self.written = b""
        self.fails = fails
        self.transport = _Transport(buffered)

    def write(self, data: bytes) -> None:
        if self.fails:
            raise RuntimeError("the transport is closed")
        self.events.append("write")
        self.written += data

    async def drain(self) -> None:
        self.events.append("drain")


class _Reader(Chunks):
    def __init__(self, events: list[str], *chunks: bytes) -> None:
        super().__init__(*chunks)
        self.events = events

    async def read(self, n: int) -> bytes:
        self.events.append("read")
        return await super().read(n)


class _Connection:
    def __init__(
        self, reader: Any, writer: Any, connected: bool = True, timeout: float | None = 5.0
    ) -> None:
        self.events: list[str] = []
        self._parts = (reader, writer)
        self._reader, self._writer = (reader, writer) if connected else (None, None)
        self.is_connected = connected
        self.socket_timeout = timeout
        self.dropped: list[bool] = []

    async def connect(self) -> None:
        self.events.append("connect")
        self._reader, self._writer = self._parts
        self.is_connected = True

    async def disconnect(self, nowait: bool = False) -> None:
        self.dropped.append(nowait)


class _Pool:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.released: list[_Connection] = []

    async def get_connection(self) -> _Connection:
        return self.connection

    async def release(self, connection: _Connection) -> None:
        self.released.append(connection)


PACKED = command("GET", "a") + command("GET", "b")


@pytest.mark.parametrize("connected", [True, False])
async def test_a_batch_is_written_whole_its_replies_returned_and_the_connection_given_back(
    connected: bool,
) -> None:
    """`run` borrows a connection (connecting it if it is not, and only
    then), writes the packed commands as they are, returns the replies in
    order and gives the connection back, kept.
    Kills: batch-7005b9, batch-543c49 (None returned), batch-e5622f (not
    given back), batch-1c52e0, batch-76766b (connected when connected, or
    never), batch-ad0a27, batch-723866, batch-f3e085 (NameError),
    batch-749f83, batch-6eb34d (nothing written), batch-4c30ab (None)."""
    events: list[str] = []
    connection = _Connection(
        _Reader(events, b":1\r\n", b"$1\r\nb\r\n"), _Writer(events), connected=connected
    )
    pool = _Pool(connection)
    assert await _batch.run(pool, PACKED, 2) == [1, b"b"]
    assert connection._writer.written == PACKED
    assert pool.released == [connection]
    assert connection.dropped == []
    assert connection.events == ([] if connected else ["connect"])


@pytest.mark.parametrize("missing", ["reader", "writer"])
async def test_a_connection_without_its_streams_is_refused_and_dropped(missing: str) -> None:
    """A connection that says it is connected but lacks a stream fails the
    batch with ConnectionError (not an AttributeError) and is dropped.
    Kills: batch-1ae609, batch-f85a80, batch-fb9cfe (the check inverted or
    needing both missing), batch-78b8c3 (not refused)."""
    events: list[str] = []
    connection = _Connection(_Reader(events, b":1\r\n"), _Writer(events))
    setattr(connection, f"_{missing}", None)
    with pytest.raises(redis_errors.ConnectionError, match="unconnected"):
        await _batch.run_on(connection, PACKED[:20], 1)
    assert connection.dropped == [True]
    assert events == []


async def test_a_malformed_reply_fails_the_batch_and_drops_the_connection_at_once() -> None:
    """Replies may still be on their way after a failure: the connection
    is dropped without waiting (`nowait`), and the error reaches the caller.
    Kills: batch-383a41 (not dropped), batch-b3ae8b (dropped waiting),
    batch-33e74b (the error swallowed)."""
    events: list[str] = []
    connection = _Connection(_Reader(events, b":x\r\n"), _Writer(events))
    with pytest.raises(redis_errors.InvalidResponse):
        await _batch.run_on(connection, PACKED[:20], 1)
    assert connection.dropped == [True]


async def test_a_batch_with_no_reply_in_time_raises_redis_timeout_error() -> None:
    """No reply within the connection's socket timeout: redis-py's
    TimeoutError (what the callers catch), and the connection dropped.
    Kills: batch-d1fc10 (the timeout swallowed: None returned)."""
    stream = asyncio.StreamReader()
    connection = _Connection(stream, _Writer([]), timeout=0.05)
    with pytest.raises(redis_errors.TimeoutError):
        await _batch.run_on(connection, PACKED[:20], 1)
    assert connection.dropped == [True]


async def test_the_deadline_is_cancelled_once_the_batch_is_read() -> None:
    """The connection goes back to the pool with no timer left on its
    stream: a timer left would fail the next batch's read there.
    Kills: batch-f34a65 (the deadline not cancelled)."""
    stream = asyncio.StreamReader()
    stream.feed_data(b":1\r\n")
    connection = _Connection(stream, _Writer([]), timeout=0.05)
    assert await _batch.run_on(connection, PACKED[:20], 1) == [1]
    await asyncio.sleep(0.15)
    assert stream.exception() is None


async def test_a_closed_transport_is_a_connection_error() -> None:
    """Writing to a closed transport raises RuntimeError in asyncio: the
    batch fails with ConnectionError, and the connection is dropped.
    Kills: batch-3991a4 (the failure swallowed, the batch read anyway)."""
    events: list[str] = []
    connection = _Connection(_Reader(events, b":1\r\n"), _Writer(events, fails=True))
    with pytest.raises(redis_errors.ConnectionError, match="writing"):
        await _batch.run_on(connection, PACKED[:20], 1)
    assert connection.dropped == [True]
    assert events == []


@pytest.mark.parametrize("buffered", [0, 1])
async def test_a_write_the_kernel_does_not_take_at_once_is_drained_before_reading(
    buffered: int,
) -> None:
    """Only a write left in the transport's buffer waits for it to drain
    (flow control: a large batch is not piled up in memory), and before the
    replies are read.
    Kills: batch-6832a2 (never drained)."""
    events: list[str] = []
    connection = _Connection(_Reader(events, b":1\r\n"), _Writer(events, buffered))
    assert await _batch.run_on(connection, PACKED[:20], 1) == [1]
    assert events == (["write", "read"] if buffered == 0 else ["write", "drain", "read"])
