"""The invalidation channel (`_channel.py`) on its own, fed the frames a server
would send, with no server.

Written for the mutation run (.ci/mutation.py, module `channel`); each test
names in its docstring the mutants it kills (ids from `--list`). What needs a
real server (closing a subscription, a server that hangs up) is in
integration/test_mutants_channel.py.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from tests.test_batch import Chunks, _Connection
from twotier._channel import Subscription
from twotier.testing import free_port

MESSAGE = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nnews\r\n"


def _subscription(*chunks: bytes) -> Subscription:
    """A subscription reading *chunks*, one per read, as the socket delivered them."""
    return Subscription(_Connection(Chunks(*chunks)), "c", sharded=False, timeout=1)


async def test_frames_counts_the_traffic_received_and_not_the_pongs(backend: str) -> None:
    """`frames` is how the listener tells an idle link (no frame in a health
    interval: it pings): every frame counts, the confirmation and messages,
    but never a pong, the answer to its own ping (RESP3's `+PONG` or RESP2's
    array), or an idle link would pass for a busy one.
    Kills: channel-0243fe (only pongs counted), channel-1633e6 (nothing
    counted), channel-2a945e (counted down)."""
    subscription = _subscription(
        b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
        + MESSAGE
        + b"+PONG\r\n"
        + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        + b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n"
    )
    assert subscription.frames == 0
    seen = []
    for _ in range(5):
        frame = await subscription.next()
        seen.append((frame, subscription.frames))
    assert seen == [
        (("subscribed", b""), 1),
        (("message", b"news"), 2),
        (("pong", b""), 2),
        (("pong", b""), 2),
        (("message", b""), 3),
    ]


@pytest.mark.parametrize(
    "ignored",
    [
        pytest.param(b":1\r\n", id="integer"),
        pytest.param(b"$4\r\nnews\r\n", id="bulk-string"),
        pytest.param(b"+OK\r\n", id="simple-string"),
        pytest.param(b"*0\r\n", id="empty-array"),
        pytest.param(b"*2\r\n:1\r\n$1\r\nc\r\n", id="array-of-an-integer-first"),
        pytest.param(b"*3\r\n$5\r\npmsg2\r\n$1\r\nc\r\n$1\r\nx\r\n", id="unknown-kind"),
        pytest.param(b">3\r\n$10\r\ninvalidate\r\n$1\r\nc\r\n$1\r\nx\r\n", id="unknown-push"),
        pytest.param(b"*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n", id="message-without-payload"),
        pytest.param(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n:5\r\n", id="message-with-integer"),
    ],
)
async def test_a_frame_the_subscription_does_not_know_is_skipped(
    backend: str, ignored: bytes
) -> None:
    """A well-formed frame that is none of the subscription's (a reply of
    another shape, a push of another kind, a message without a payload
    string) is passed over, neither returned nor an error that would cost the
    listener its link: the next call returns the message that follows it,
    and only that one counts as traffic.
    Kills: channel-a8428f, channel-c62319 (`or` -> `and` in the shape check:
    TypeError or IndexError), channel-3c2ac9 (the shape check's `return None`
    deleted), channel-895ddf (`kind == "message" and ...` -> `or`: an
    unknown kind returned with its third item), channel-f5831d,
    channel-18abbf (an unknown kind or a message without a payload
    returned as a frame)."""
    subscription = _subscription(ignored + MESSAGE)
    assert await subscription.next() == ("message", b"news")
    assert subscription.frames == 1


async def test_a_frame_hiredis_cannot_build_is_refused_as_malformed(backend: str) -> None:
    """A map keyed by an array is a frame hiredis cannot build (TypeError);
    the hand-written reader does not know maps. Either way the subscription
    raises `InvalidResponse`, as for any malformed frame (a lost link for the
    listener), not the reader's own error.
    Kills: channel-ddf41d (hiredis' TypeError swallowed)."""
    subscription = _subscription(b"%1\r\n*1\r\n:1\r\n:2\r\n" + MESSAGE)
    with pytest.raises(redis_errors.InvalidResponse):
        await subscription.next()


@pytest.mark.parametrize(
    "sent",
    [pytest.param((), id="nothing"), pytest.param((MESSAGE[:9], MESSAGE[9:20]), id="half-a-frame")],
)
async def test_a_server_that_hangs_up_ends_the_subscription(
    backend: str, sent: tuple[bytes, ...]
) -> None:
    """The server closes the connection (a read returns no data), before any
    frame or halfway through one: `next()` raises ConnectionError, the lost
    link the listener reconnects after, and reads no further (a read at the
    end of the stream would return nothing again, for ever).
    Kills: channel-0b28fc (the end of the stream taken for a pause in it)."""
    subscription = _subscription(*sent, b"")
    with pytest.raises(redis_errors.ConnectionError, match="closed by server"):
        await subscription.next()


async def test_a_subscription_whose_connection_is_not_open_raises_connection_error() -> None:
    """On a connection that is closed (or was never opened), reading the next
    frame and pinging raise redis-py's ConnectionError, what the listener
    treats as a lost link, not an AttributeError of the missing stream.
    Kills: channel-3491e7 (next() reads from no stream), channel-4af4ba
    (ping() writes to no stream)."""
    connection = aioredis.Connection(host="127.0.0.1", port=free_port())  # never connected
    subscription = Subscription(connection, "c", sharded=False, timeout=1)
    with pytest.raises(redis_errors.ConnectionError, match="connection is closed"):
        await subscription.next()
    with pytest.raises(redis_errors.ConnectionError, match="connection is closed"):
        await subscription.ping()
    await subscription.close()  # closing it again is harmless


class _Writer:
    """What `Subscription` writes to: the bytes sent, a transport whose buffer
    the kernel always took at once."""

    def __init__(self) -> None:
        self.sent = b""
        self.transport = self

    def write(self, data: bytes) -> None:
        self.sent += data

    def get_write_buffer_size(self) -> int:
        return 0


def _resp3_subscription(*chunks: bytes) -> tuple[Subscription, _Writer]:
    connection = _Connection(Chunks(*chunks))
    connection._writer = writer = _Writer()  # type: ignore[attr-defined]
    connection.protocol = 3  # type: ignore[attr-defined]
    return Subscription(connection, "c", sharded=False, timeout=1), writer


async def test_the_counter_read_on_the_subscription_comes_after_the_messages_before_it(
    backend: str,
) -> None:
    """Over RESP3 the idle check is a GET of the change counter on the
    subscription itself (issue 20): its answer comes after every message
    published before it was read, so the listener compares the counter with
    numbers it has all applied. Messages pushed first are returned first; the
    answer is a "counter" frame, not traffic (an idle link stays idle), and
    one answer is taken per read asked for.
    Kills: channel-cd3c85, channel-9f2e32 (the answered read not counted
    off), channel-84a9e6 (the read counted down when asked)."""
    stray = b"$3\r\n999\r\n"  # a bulk string no one asked for: skipped, not a counter
    subscription, writer = _resp3_subscription(MESSAGE + b"$2\r\n42\r\n" + stray + MESSAGE)
    assert subscription.reads_counter
    await subscription.read_counter("{ns:v2}:seq")
    assert writer.sent == b"*2\r\n$3\r\nGET\r\n$11\r\n{ns:v2}:seq\r\n"
    assert await subscription.next() == ("message", b"news")
    assert await subscription.next() == ("counter", b"42")
    assert subscription.frames == 1
    assert await subscription.next() == ("message", b"news")


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        pytest.param(b"_\r\n", b"0", id="no-counter-yet"),
        pytest.param(b"-WRONGTYPE Operation against a key\r\n", b"0", id="foreign-data"),
    ],
)
async def test_a_missing_or_foreign_counter_reads_as_zero(
    backend: str, reply: bytes, value: bytes
) -> None:
    """No counter (a new or flushed server) or foreign data under its name
    reads as 0, as `RedisTier.current_seq` reads it: the listener resyncs and
    goes on, instead of losing its link to an error on every idle check."""
    subscription, _ = _resp3_subscription(reply)
    await subscription.read_counter("{ns:v2}:seq")
    assert await subscription.next() == ("counter", value)


async def test_a_node_that_no_longer_holds_the_channel_answers_the_counter_read_with_moved(
    backend: str,
) -> None:
    """In a cluster, a node that gave the channel's slot away answers the
    counter read with MOVED: raised, a lost link, and the listener subscribes
    where the slot is now."""
    subscription, _ = _resp3_subscription(b"-MOVED 1234 127.0.0.1:7001\r\n")
    await subscription.read_counter("{ns:v2}:seq")
    with pytest.raises(redis_errors.MovedError):
        await subscription.next()


async def test_an_answer_of_another_shape_to_the_counter_read_is_refused(backend: str) -> None:
    subscription, _ = _resp3_subscription(b":42\r\n")
    await subscription.read_counter("{ns:v2}:seq")
    with pytest.raises(redis_errors.InvalidResponse, match="counter read"):
        await subscription.next()


def test_a_resp2_subscription_does_not_read_the_counter() -> None:
    """RESP2 allows no GET on a subscribed connection: the listener pings
    there and reads the counter on its command connection instead."""
    connection = _Connection(Chunks())
    connection.protocol = 2  # type: ignore[attr-defined]
    assert not Subscription(connection, "c", sharded=False, timeout=1).reads_counter


class _Opening(_Connection):
    """A connection that connects at once and answers with *chunks*."""

    def __init__(self, *chunks: bytes) -> None:
        super().__init__(Chunks(*chunks))
        self._writer = _Writer()

    async def connect(self) -> None:
        pass


SHARD_SUBSCRIBED = b">3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n"


async def test_a_shard_subscription_first_reads_a_key_of_its_slot(backend: str) -> None:
    """Issue 21, item 4: the owner check travels with the SSUBSCRIBE, in the
    same write (no round trip of its own), and its answer is not a frame:
    the next frame after the confirmation is what the server sends next (a
    RESP3 pong, which a miscounted pending read would take for the answer).
    Kills the check's packing and the count of the read it asked for."""
    connection = _Opening(b"$1\r\n7\r\n" + SHARD_SUBSCRIBED + b"+PONG\r\n")
    subscription = Subscription(connection, "c", sharded=True, timeout=1)
    await subscription.open(owned="seq")
    assert connection._writer.sent == (
        b"*2\r\n$3\r\nGET\r\n$3\r\nseq\r\n*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nc\r\n"
    )
    assert await subscription.next() == ("pong", b"")


async def test_a_node_that_does_not_hold_the_slot_fails_the_opening(backend: str) -> None:
    """A replica (or a master a failover demoted) takes the SSUBSCRIBE but
    answers the read with MOVED: the opening fails with it, so the listener
    subscribes again where the slot is, instead of staying there until its
    idle check."""
    connection = _Opening(b"-MOVED 12 127.0.0.1:7001\r\n" + SHARD_SUBSCRIBED)
    subscription = Subscription(connection, "c", sharded=True, timeout=1)
    with pytest.raises(redis_errors.MovedError):
        await subscription.open(owned="seq")


async def test_a_subscription_without_an_owner_check_sends_only_its_subscribe(
    backend: str,
) -> None:
    connection = _Opening(b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
    subscription = Subscription(connection, "c", sharded=False, timeout=1)
    await subscription.open()
    assert connection._writer.sent == b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n"


def _info(text: str) -> bytes:
    """`INFO replication`'s answer as RESP3 sends it (a verbatim string)."""
    body = ("txt:" + text).encode()
    return b"=%d\r\n%s\r\n" % (len(body), body)


REPLICA_UP = _info(
    "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:up\r\n"
)
REPLICA_DOWN = _info("# Replication\r\nrole:slave\r\nmaster_link_status:down\r\n")
PROMOTED = _info("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n")
SUBSCRIBED = b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"


@pytest.mark.parametrize(
    ("reply", "state"),
    [
        pytest.param(REPLICA_UP, b"up", id="following"),
        pytest.param(REPLICA_DOWN, b"slave/down", id="cut-off"),
        pytest.param(PROMOTED, b"master/", id="promoted"),
        pytest.param(_info("role:slave\r\n"), b"slave/", id="no-link-field"),
        pytest.param(_info("master_link_status:up\r\n"), b"?/up", id="no-role-field"),
        pytest.param(b"$36\r\nrole:slave\r\nmaster_link_status:up\r\nx\r\n", b"up", id="bulk"),
    ],
)
async def test_the_replica_check_says_up_only_for_a_replica_whose_link_is_up(
    backend: str, reply: bytes, state: bytes
) -> None:
    """`check_replica` (issue 20, item 5): `INFO replication` on the
    subscription, answered as a "replica" frame, b"up" only for a replica
    following its master (role `slave`, `master_link_status:up`); anything
    else names the role and link, and the listener leaves the node. A line
    without a colon (the section header) is skipped; the fields are read
    whole. Kills: channel-232bfa, channel-24a79b (nothing asked),
    channel-ec83c3, channel-150e5c, channel-769192, channel-e99a2a,
    channel-3af961, channel-f03ff2, channel-e164b7, channel-fd7e16."""
    subscription, writer = _resp3_subscription(MESSAGE + reply + MESSAGE)
    await subscription.check_replica()
    assert writer.sent == b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n"
    assert await subscription.next() == ("message", b"news")
    assert await subscription.next() == ("replica", state)
    assert await subscription.next() == ("message", b"news")
    assert subscription.frames == 2  # the answer is not traffic


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        pytest.param(b"-ERR unknown section\r\n", redis_errors.ResponseError, id="error"),
        pytest.param(b":1\r\n", redis_errors.InvalidResponse, id="integer"),
    ],
)
async def test_an_error_or_another_shape_answering_the_replica_check_is_raised(
    backend: str, reply: bytes, error: type[Exception]
) -> None:
    """Kills: channel-0b1ada (an error reply parsed as text), channel-cfc8d3,
    channel-76263c (an answer of another shape taken for INFO's)."""
    subscription, _ = _resp3_subscription(reply)
    await subscription.check_replica()
    with pytest.raises(error):
        await subscription.next()


async def test_a_replica_subscription_first_asks_whether_the_node_follows_its_master(
    backend: str,
) -> None:
    """`open(replica=True)`: `INFO replication` goes first, in the same
    write as the owner check and the SUBSCRIBE, and its answer is taken as
    the check's (the counter's comes after it, then the confirmation).
    Kills: channel-e95516, channel-deb49d (not asked), channel-58cce8 (the
    owner check's answer not expected: the next pong taken for it)."""
    connection = _Opening(REPLICA_UP + b"$1\r\n7\r\n" + SHARD_SUBSCRIBED + b"+PONG\r\n")
    subscription = Subscription(connection, "c", sharded=True, timeout=1)
    await subscription.open(owned="seq", replica=True)
    assert connection._writer.sent == (
        b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n"
        b"*2\r\n$3\r\nGET\r\n$3\r\nseq\r\n*2\r\n$10\r\nSSUBSCRIBE\r\n$1\r\nc\r\n"
    )
    assert await subscription.next() == ("pong", b"")


@pytest.mark.parametrize("reply", [REPLICA_DOWN, PROMOTED], ids=["cut-off", "promoted"])
async def test_a_replica_that_does_not_follow_its_master_fails_the_opening(
    backend: str, reply: bytes
) -> None:
    """A replica cut off from its master (or promoted) would look idle and in
    sync to every later counter read: the opening fails, with the state in
    the message, and the listener subscribes elsewhere.
    Kills: channel-620ea4, channel-67ee6b (not raised), channel-6279dd (no
    error built)."""
    connection = _Opening(reply + SUBSCRIBED)
    subscription = Subscription(connection, "c", sharded=False, timeout=1)
    with pytest.raises(redis_errors.ConnectionError, match="no longer follows its master"):
        await subscription.open(replica=True)


async def test_foreign_data_under_the_owned_key_does_not_fail_the_opening(backend: str) -> None:
    """The owner check is a GET of the change counter: foreign data there
    answers WRONGTYPE, which says the node holds the slot (it is the
    counter's own answer, read as 0: the listener then resyncs, as for a
    flush), so the subscription opens. Kills: channel-58cce8 (the answer not
    expected: the error taken for a frame, and raised)."""
    connection = _Opening(b"-WRONGTYPE Operation against a key\r\n" + SHARD_SUBSCRIBED)
    subscription = Subscription(connection, "c", sharded=True, timeout=1)
    await subscription.open(owned="seq")
