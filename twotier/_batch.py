"""Lean commands: packed by hand, written straight to the socket, replies parsed in bulk.

Used for every script call (one command) and for warmup's batches (a thousand
script calls of one kind, each on one key's slot). Through redis-py most of
their cost was the client's: packing each command argument by argument, one
parser coroutine per reply, and — on connections with a socket timeout —
an `asyncio.wait_for` around each write, which in Python 3.11 is a new task
and a whole extra turn of the event loop before the command leaves: 60 µs of
an invalidation's 120 µs before its first byte was sent. Here a command or a
batch is one buffer written to the connection's transport; only a write the
kernel does not take at once waits (bounded), and the replies are parsed
straight out of the bytes as they arrive — one coroutine per chunk of 64 KiB,
not per reply. The replies of twotier's scripts are few shapes: integers,
bulk strings, nil, arrays of those, errors (RESP2 and RESP3 alike; RESP3
push frames are skipped). Errors come back typed as redis-py types them
(`NoScriptError`, `OutOfMemoryError`, `MovedError`...), not raised.

The replies are read by hiredis' `Reader` when hiredis is installed (the
`hiredis` extra; 6 to 16 times faster on a batch: figures in
docs/decisions.md), else by `Reader` here, a hand-written parser that
accepts exactly what hiredis accepts of those shapes, refuses the rest with
`InvalidResponse` and reads a reply in time linear in its size
(`tests/test_resp_fuzz.py` holds it to hiredis).

The connection is borrowed from redis-py's pool and returned with nothing
pending; on any failure (a timeout, a reset, a malformed reply) it is
disconnected first, since replies may still be on their way. Reading takes
the connection's own socket timeout as the longest wait for data, as
redis-py does for each reply (`Deadline`).

Each command keeps to one key's slot: `RedisTier` groups nothing across slots,
so a cluster client can send a batch per node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import redis.exceptions as redis_errors
from redis._parsers.base import BaseParser

_CRLF = b"\r\n"
_READ = 1 << 16


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def command_head(count: int, *fixed: bytes) -> bytes:
    """The start of a command of *count* arguments whose first ones are *fixed*."""
    return b"*%d\r\n" % count + b"".join(bulk(part) for part in fixed)


def command(*parts: bytes | str | int) -> bytes:
    """One command, packed (strings as UTF-8, integers in decimal)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, int):
            part = b"%d" % part
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Incomplete(Exception):
    """The buffer ends inside a reply: read more.

    *at* is where the unfinished item starts (the reply's own start for a
    stateless `parse`), *needed* the length the buffer must reach before
    another attempt can get further: all of a bulk string, or one more byte
    when *line* (a line's CRLF has not come yet)."""

    def __init__(self, at: int, needed: int, line: bool) -> None:
        super().__init__(at, needed, line)
        self.at = at
        self.needed = needed
        self.line = line


class Push(list[Any]):
    """A RESP3 push frame (an out-of-band message): not the reply to a command."""


# hiredis refuses an aggregate nested deeper than this (its "Max nesting depth
# exceeded"); twotier's replies nest one deep (a script's table, a channel
# frame). The same bound keeps the hand-written parser in agreement with
# hiredis, and its explicit stack has no recursion to exhaust (issue 17: 5,000
# nested `*1` ended the listener with a RecursionError).
MAX_DEPTH = 1024
_INT64 = 1 << 63
_MAX_ELEMENTS = (1 << 32) - 1  # hiredis' bound on an aggregate's length
_LINE_TYPES = frozenset(b":$=+-*>_#")  # the reply types twotier reads
_UNUSED_TYPES = frozenset(b"%~,(|")  # RESP3 types hiredis reads and twotier never gets


def _integer(digits: bytes, what: str) -> int:
    """*digits* as hiredis reads an integer (`string2ll`): an optional minus,
    no plus, no leading zero, no `-0`, no space or underscore (which Python's
    `int()` would take), within a signed 64-bit integer."""
    if digits.isdigit():  # ASCII digits only, and False for b""
        if digits[0] != 48 or len(digits) == 1:
            value = int(digits)
            if value < _INT64:
                return value
    elif digits[:1] == b"-" and digits[1:].isdigit() and digits[1] != 48:
        value = -int(digits[1:])
        if value >= -_INT64:
            return value
    raise redis_errors.InvalidResponse(f"Bad {what}: {digits[:32]!r}")


def _simple(buf: bytes, start: int, end: int) -> bytes:
    """A simple string or error line; like hiredis, a lone CR or LF in it is refused."""
    line = buf[start:end]
    if b"\r" in line or b"\n" in line:
        raise redis_errors.InvalidResponse("Bad simple string value")
    return line


def _error(message: str) -> redis_errors.RedisError:
    """An error reply, typed as redis-py types it (`NoScriptError`,
    `MovedError`...). One whose arguments redis-py cannot read (a `-MOVED`
    without slot and node: issue 17, case 4) comes back as `InvalidResponse`
    — returned like every error reply, and raised by every caller, since
    none handles it. Not raised here: it would reach callers as a raw
    ValueError, and through hiredis (which calls this) as a SystemError."""
    try:
        return BaseParser.parse_error(message)  # type: ignore[no-untyped-call,no-any-return,unused-ignore]  # unannotated before redis 8.2
    except ValueError:  # MovedError and AskError split their arguments
        return redis_errors.InvalidResponse(f"malformed error reply: {message[:64]!r}")


def _refuse_type(kind: int) -> redis_errors.InvalidResponse:
    if kind in _UNUSED_TYPES:
        return redis_errors.InvalidResponse(f"unexpected reply type {chr(kind)!r}")
    return redis_errors.InvalidResponse(f"Protocol error, got {chr(kind)!r} as reply type byte")


def parse(buf: bytes, pos: int, stack: list[list[Any]] | None = None) -> tuple[Any, int]:
    """The reply starting at *pos*, and where the next one starts.

    Integers come back as int, bulk, verbatim (without its format) and
    simple strings as bytes, nil as None,
    arrays as lists (push frames as `Push`), RESP3 booleans as bool,
    errors as redis-py's `ResponseError` subclasses (not raised): what
    hiredis' `Reader` returns. Raises `Incomplete` when *buf* ends first, and
    `InvalidResponse` for anything hiredis refuses and for the RESP3 types
    twotier never gets (maps, sets, doubles, big numbers, attributes);
    `tests/test_resp_fuzz.py` holds it to hiredis.

    *stack* holds the aggregates under way: after `Incomplete`, calling again
    with the same stack and `pos=exc.at` on a longer buffer resumes where it
    stopped, so a reply is parsed once however many reads it takes (`Reader`).
    A loop, not recursion: the depth is bounded by `MAX_DEPTH`, not the C stack.
    """
    if stack is None:
        stack = []
    size = len(buf)
    while True:
        end = buf.find(_CRLF, pos)
        if end < 0:
            if pos < size:  # hiredis judges the type byte before the line is in
                kind = buf[pos]
                if kind not in _LINE_TYPES:
                    raise _refuse_type(kind)
                if (kind == 42 or kind == 62) and len(stack) >= MAX_DEPTH:
                    raise redis_errors.InvalidResponse("Max nesting depth exceeded")
            raise Incomplete(pos, size + 1, True)
        kind = buf[pos]
        if kind == 36 or kind == 61:  # '$' bulk string, '=' RESP3 verbatim string (INFO's)
            digits = buf[pos + 1 : end]
            # The usual length inline, `_integer` for the rest (nil, errors):
            # 1 to 18 digits without a leading zero are below 2**63.
            if digits.isdigit() and end - pos < 20 and (digits[0] != 48 or end - pos == 2):
                length = int(digits)
            else:
                length = _integer(digits, "bulk string length")
            if length >= 0:
                start = end + 2
                stop = start + length
                if size < stop + 2:
                    raise Incomplete(pos, stop + 2, False)
                # The two bytes after the data are skipped, not checked: hiredis
                # (and redis-py's parser) do the same, and a stream out of step
                # shows at the next type byte.
                value: Any = buf[start:stop]
                if kind == 61:  # 'txt:' first: hiredis hands out what follows it
                    if length < 4 or buf[start + 3] != 58:
                        raise redis_errors.InvalidResponse(
                            "Verbatim string 4 bytes of content type are missing or "
                            "incorrectly encoded."
                        )
                    value = value[4:]
                pos = stop + 2
            elif length == -1:
                value = None
                pos = end + 2
            else:
                raise redis_errors.InvalidResponse("Bulk string length out of range")
        elif kind == 58:  # ':' integer
            digits = buf[pos + 1 : end]
            if digits.isdigit() and end - pos < 20 and (digits[0] != 48 or end - pos == 2):
                value = int(digits)
            else:
                value = _integer(digits, "integer value")
            pos = end + 2
        elif kind == 42 or kind == 62:  # '*' array, '>' RESP3 push
            if len(stack) >= MAX_DEPTH:
                raise redis_errors.InvalidResponse("Max nesting depth exceeded")
            count = _integer(buf[pos + 1 : end], "multi-bulk length")
            if count < -1 or count > _MAX_ELEMENTS:
                raise redis_errors.InvalidResponse("Multi-bulk length out of range")
            pos = end + 2
            if count < 0:
                value = None
            else:
                value = Push() if kind == 62 else []  # (nested too, as hiredis has it)
                if count:
                    stack.append([value, count])
                    continue
        elif kind == 43:  # '+' simple string (OK)
            value = _simple(buf, pos + 1, end)
            pos = end + 2
        elif kind == 45:  # '-' error
            value = _error(_simple(buf, pos + 1, end).decode(errors="replace"))
            pos = end + 2
        elif kind == 95:  # '_' RESP3 null
            if end != pos + 1:
                raise redis_errors.InvalidResponse("Bad nil value")
            value = None
            pos = end + 2
        elif kind == 35:  # '#' RESP3 boolean (a Lua true, in RESP3)
            # (NUL too, read as false: hiredis checks with strchr("tTfF", c),
            # which finds the string's terminator. Both readers stay alike.)
            if end != pos + 2 or buf[pos + 1] not in b"tTfF\x00":
                raise redis_errors.InvalidResponse("Bad bool value")
            value = buf[pos + 1] in b"tT"
            pos = end + 2
        else:
            raise _refuse_type(kind)
        while stack:  # the item completes the aggregates it ends
            frame = stack[-1]
            frame[0].append(value)
            frame[1] -= 1
            if frame[1]:
                break
            value = stack.pop()[0]
        else:
            return value, pos


MORE: Any = object()  # `Reader.gets()`: no whole reply yet (hiredis' `notEnoughData`)
_LINE = 1 << 62  # `Reader._need` while a line's CRLF has not arrived


class Reader:
    """Replies out of a stream fed in chunks, in time linear in their size.

    The interface of hiredis' `Reader` (`feed`, `gets`). A reply cut short
    is not parsed again from its start when more data comes (issue 17: a
    32 MiB entry took 1.3–2.1 s, the pending buffer copied and parsed again
    on every 64 KiB read): the aggregates under way stay on a stack, the
    chunks that follow are kept aside unjoined until the unfinished item can
    be finished (all of a bulk string, or a CRLF for a line), and only then
    joined, once. So every byte is copied a bounded number of times.

    After `InvalidResponse` the reader is spoiled: the caller drops the
    connection.
    """

    __slots__ = ("_buf", "_cr", "_need", "_parts", "_pos", "_stack", "_waiting")

    def __init__(self) -> None:
        self._buf = b""  # the data being parsed; what is before _pos is consumed
        self._pos = 0
        self._stack: list[list[Any]] = []  # aggregates under way
        self._parts: list[bytes] = []  # data fed after _buf, not joined yet
        self._waiting = 0  # its size
        self._need = 0  # bytes from _pos the next attempt needs (_LINE: a CRLF)
        self._cr = False  # the data ends in CR (a CRLF may straddle two chunks)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._pos >= len(self._buf) and not self._parts:
            self._buf, self._pos, self._need = data, 0, 0  # the usual case: no copy
            return
        self._parts.append(data)
        self._waiting += len(data)
        if self._need == _LINE:
            if (self._cr and data[0] == 10) or _CRLF in data:
                self._need = 0
            self._cr = data[-1] == 13

    def gets(self) -> Any:
        """The next whole reply, or `MORE`."""
        if self._parts:
            if len(self._buf) - self._pos + self._waiting < self._need:
                return MORE
            # (bytes.join takes the memoryview as it is: the tail is copied once)
            self._buf = b"".join([memoryview(self._buf)[self._pos :], *self._parts])
            self._pos = self._waiting = self._need = 0
            self._parts = []
        elif self._need or self._pos >= len(self._buf):
            return MORE  # nothing came since the last attempt fell short
        try:
            reply, pos = parse(self._buf, self._pos, self._stack)
        except Incomplete as short:
            self._pos = short.at
            self._need = _LINE if short.line else short.needed - short.at
            self._cr = self._buf.endswith(b"\r")
            return MORE
        if pos >= len(self._buf):
            self._buf, pos = b"", 0  # let a large reply's data go
        self._pos = pos
        return reply

    def unfinished(self) -> int | None:
        """The type byte of the top-level reply under way (`ord(">")`: a push
        frame), None when the data fed ends at a reply's end."""
        if self._stack:
            return 62 if type(self._stack[0][0]) is Push else 42
        if self._pos < len(self._buf):
            return self._buf[self._pos]
        if self._parts:
            return self._parts[0][0]
        return None


class ReplyReader(Protocol):
    """What `read_replies` and the channel read with: hiredis' `Reader`, or the
    hand-written `Reader` above."""

    def feed(self, data: bytes, /) -> None: ...

    def gets(self) -> Any: ...


def _hiredis() -> tuple[Callable[[], ReplyReader], type[list[Any]]] | None:
    """hiredis' reader factory and push frame type, if hiredis is installed."""
    try:
        import hiredis
    except ImportError:  # an optional extra: `pip install twotier[hiredis]`
        return None

    def make() -> ReplyReader:
        return hiredis.Reader(
            protocolError=redis_errors.InvalidResponse,
            replyError=_error,
            notEnoughData=MORE,  # not False: that is what `#f` reads as
        )

    # Used only where it is as strict as the hand-written reader: hiredis
    # before 3.5 builds replies nested without bound (5,000 arrays deep, from
    # a hostile server), and before 3.2 has no push frame type. An older one
    # leaves the hand-written reader in charge (the extra's floor is tested
    # in CI, .ci/oldest.txt).
    push = getattr(hiredis, "PushNotification", None)
    probe = make()
    probe.feed(b"*1\r\n" * (MAX_DEPTH + 1) + b":1\r\n")
    try:
        probe.gets()
    except redis_errors.InvalidResponse:
        return (make, push) if push is not None else None
    return None


#: What hiredis raises, besides its protocol error, on replies it cannot
#: build: TypeError for a map keyed by an array (unhashable), MemoryError for
#: an array announced longer than it can allocate at once (it allocates the
#: whole list up front). The hand-written reader raises neither.
HIREDIS_FAILURES = (TypeError, MemoryError)


def refused(exc: Exception) -> redis_errors.InvalidResponse:
    """One of `HIREDIS_FAILURES`, as the error every malformed reply raises."""
    return redis_errors.InvalidResponse(f"a reply hiredis cannot build ({exc!r})")


_HIREDIS = _hiredis()
#: A new reply reader: hiredis' when installed, else the hand-written one.
new_reader: Callable[[], ReplyReader] = Reader if _HIREDIS is None else _HIREDIS[0]
# hiredis' push frames are a list subclass of its own, not `Push`
_PUSH: type[list[Any]] = Push if _HIREDIS is None else _HIREDIS[1]


class Deadline:
    """The bound on one batch's replies: one timer for all of them, cheaper than
    an `asyncio.timeout` around each read (a quarter of an L2 hit's cost).

    It fails the pending read once *timeout* passes with no data arriving,
    as a socket timeout would. Data that came in while the loop was blocked
    past the timer (a long GC, a starved CPU) is no timeout: the data and the
    timer fall in one turn of the loop, the data first, and the timer finds
    it in the reader's buffer and waits on. (An `asyncio.timeout` cancels
    the read then: a CI run's loop, slow for a moment, timed out a batch of
    replies that had all arrived.) None: no bound.
    """

    __slots__ = ("_handle", "_last", "_loop", "_reader", "_timeout")

    def __init__(self, reader: asyncio.StreamReader, timeout: float | None) -> None:
        self._reader = reader
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._last = 0.0  # the loop's time when data last came in (0.0: not yet)
        self._handle: asyncio.TimerHandle | None = None
        if timeout is not None:
            self._handle = self._loop.call_later(timeout, self._expire)

    def arrived(self) -> None:
        """Data came in: the bound counts from now."""
        self._last = self._loop.time()

    def _expire(self) -> None:
        reader, timeout = self._reader, self._timeout
        assert timeout is not None
        # (StreamReader's buffer, data not read yet: private, and not in typeshed)
        if reader._buffer:  # type: ignore[attr-defined]
            self._handle = self._loop.call_later(timeout, self._expire)  # the loop was late
            return
        left = self._last + timeout - self._loop.time()
        if self._last and left > 0:
            self._handle = self._loop.call_later(left, self._expire)
        else:
            reader.set_exception(TimeoutError())  # the pending read raises it

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def read_replies(reader: asyncio.StreamReader, count: int, deadline: Deadline) -> list[Any]:
    """*count* replies, as fast as they arrive, within *deadline*.

    RESP3 push frames among them are skipped, and so is one that follows
    the last reply (redis-py 8 turns on maintenance notifications, so a
    server may send one at any time): read to its end, so that the
    connection goes back with nothing of it left in the stream. Anything
    else after the last reply is a stream out of step: `InvalidResponse`.

    A failure leaves the reader unusable (an error set in it, replies half
    read): the caller drops the connection."""
    replies: list[Any] = []
    parser = new_reader()
    push = _PUSH
    fed: list[bytes] = []  # for `_after_last`, should hiredis leave it in doubt
    while True:
        try:
            reply = parser.gets()
        except HIREDIS_FAILURES as exc:
            raise refused(exc) from exc
        if reply is MORE:
            if len(replies) == count:
                rest = _after_last(parser, fed, count)
                if rest is None:
                    return replies
                if rest is not parser:  # hiredis' doubt, settled: go on with `rest`
                    parser, push = rest, Push
                    continue  # it may hold whole push frames first
                if rest.unfinished() != 62:  # not a push frame
                    raise redis_errors.InvalidResponse("more replies than commands")
            chunk = await reader.read(_READ)
            if not chunk:
                raise redis_errors.ConnectionError("Connection closed by server.")
            deadline.arrived()
            parser.feed(chunk)
            if push is not Push:
                fed.append(chunk)  # (the hand-written reader needs no second reading)
        elif type(reply) is not push:
            if len(replies) == count:
                raise redis_errors.InvalidResponse("more replies than commands")
            replies.append(reply)


def _after_last(parser: ReplyReader, fed: list[bytes], count: int) -> Reader | None:
    """After a batch's last reply, with no whole reply left in *parser*: None
    if the data *fed* ends there, else a hand-written `Reader` holding the
    reply under way (its `unfinished()` tells a push frame from the rest).

    hiredis keeps the items of an aggregate under way, and the type byte of
    an item whose line has not come, to itself: a push frame cut after the
    last reply looks like the end of the data (`has_data()` is False). So it
    is asked with a probe, `:0`, which comes back as the integer 0 only when
    no reply was under way (else it is an item of that reply, or the rest of
    its line: a protocol error). Then (rare: a push frame cut short, or a
    stream out of step) the batch is read again by the hand-written reader,
    which knows where each reply ends, from its first byte.
    """
    if type(parser) is Reader:
        return parser if parser.unfinished() is not None else None
    if not parser.has_data():  # type: ignore[attr-defined]  # (hiredis' Reader)
        parser.feed(b":0\r\n")
        try:
            probe = parser.gets()
        except redis_errors.InvalidResponse:
            probe = None
        if probe == 0 and type(probe) is int:
            return None
    again = Reader()
    for chunk in fed:
        again.feed(chunk)
    seen = 0
    while seen < count:
        reply = again.gets()
        if reply is MORE:  # hiredis found more replies than this reader
            raise redis_errors.InvalidResponse("a reply hiredis read and the parser did not")
        if type(reply) is not Push:
            seen += 1
    return again


async def run(pool: Any, packed: bytes, count: int) -> list[Any]:
    """Send *count* packed commands on a connection of redis-py's *pool*; their replies."""
    connection = await pool.get_connection()
    try:
        return await run_on(connection, packed, count)
    finally:
        await pool.release(connection)


async def run_on(connection: Any, packed: bytes, count: int) -> list[Any]:
    """Send *count* packed commands on *connection* (redis-py's); their replies.
    On any failure the connection is dropped: replies may still be on the way."""
    try:
        if not connection.is_connected:
            await connection.connect()
        reader, writer = connection._reader, connection._writer  # redis-py's own streams
        if reader is None or writer is None:
            raise redis_errors.ConnectionError("an unconnected connection")
        wait = connection.socket_timeout
        try:
            await write(writer, packed, wait)
            deadline = Deadline(reader, wait)
            try:
                return await read_replies(reader, count, deadline)
            finally:
                deadline.cancel()
        except TimeoutError as exc:
            raise redis_errors.TimeoutError("Timeout sending or reading a batch") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


async def write(writer: asyncio.StreamWriter, packed: bytes, wait: float | None) -> None:
    """Hand *packed* to the socket; wait (bounded) only if the kernel's buffer is full."""
    try:
        writer.write(packed)
    except (OSError, RuntimeError) as exc:  # RuntimeError: the transport is closed
        raise redis_errors.ConnectionError(f"Error while writing to socket: {exc}") from exc
    if writer.transport.get_write_buffer_size():
        async with asyncio.timeout(wait):
            await writer.drain()
