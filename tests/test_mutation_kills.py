"""Tests for behaviours the mutation run (.ci/mutation.py) found unchecked.

Each test states a behaviour a user relies on; the mutants it kills are named
in its docstring (ids from `python .ci/mutation.py --list`). Server-free: the
outbox, the guard, the in-flight registry and the key plans on their own, and
memory-mode caches. The Redis side is in integration/test_mutation_kills.py.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import pytest
import redis.exceptions as redis_errors

from tests.contract import eventually
from twotier import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidKeyError,
    InvalidTTLError,
    TemplateError,
    TwoTierCache,
)
from twotier._guard import BreakerState, Guard
from twotier._keys import (
    HASHED_KEY_LENGTH,
    MAX_ARGUMENT_DEPTH,
    MAX_KEY_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TTL_SECONDS,
    KeyPlan,
    encode_argument,
    hash_long_key,
    validate_key,
    validate_tags,
    validate_ttl,
)
from twotier._logging import tier_log
from twotier._outbox import Outbox
from twotier._stats import Counters

# -- the outbox: changes queued while Redis is away --------------------------------------


class FakeRemote:
    """The three calls an outbox delivers through, recorded; `down` makes them fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.down: set[str] = set()
        self.meanwhile: list[tuple[str, Iterable[str]]] = []  # changes queued during a call
        self.outbox: Outbox | None = None

    async def _call(self, name: str, names: tuple[str, ...]) -> None:
        if self.outbox is not None:
            for kind, more in self.meanwhile:
                getattr(self.outbox, f"add_{kind}")(more)
            self.meanwhile = []
        if name in self.down:
            raise BackendUnavailable("Redis is unreachable")
        self.calls.append((name, names))

    async def clear(self) -> None:
        await self._call("clear", ())

    async def delete(self, keys: tuple[str, ...]) -> None:
        await self._call("delete", keys)

    async def invalidate(self, tags: tuple[str, ...]) -> None:
        await self._call("invalidate", tags)


def _outbox(limit: int = 100) -> tuple[Outbox, Counters]:
    counters = Counters()
    return Outbox(limit, counters), counters


async def _flush(outbox: Outbox, remote: FakeRemote) -> int:
    return await outbox.flush(remote)  # type: ignore[arg-type]


async def test_queued_changes_are_delivered_once_each_and_counted() -> None:
    """The flush sends every queued key and tag, once, and returns how many changes it
    delivered (the cache logs it on recovery). Kills: deleting the key or tag
    delivery, the `update` of the queues, the `delivered` sums and `return delivered`."""
    outbox, _ = _outbox()
    outbox.add_keys(["a", "b", "a"])  # a key changed twice is one change
    outbox.add_tags(["t"])
    outbox.add_keys(["c"])
    assert len(outbox) == 4
    remote = FakeRemote()
    assert await _flush(outbox, remote) == 4
    assert remote.calls == [("delete", ("a", "b", "c")), ("invalidate", ("t",))]
    assert len(outbox) == 0
    assert await _flush(outbox, remote) == 0  # nothing is delivered twice
    assert len(remote.calls) == 2


async def test_a_queued_clear_subsumes_keys_and_tags_and_is_delivered_first() -> None:
    """A clear makes every earlier and later key or tag change redundant until it is
    delivered: one change pending, one call. Kills: removing `not` in add_keys or
    add_tags, deleting the queue clears or `self._clear = True`, True -> False, and
    deleting `await remote.clear()` or `self._clear = False`."""
    outbox, _ = _outbox()
    outbox.add_keys(["k1", "k2"])
    outbox.add_tags(["t1"])
    outbox.add_clear()
    outbox.add_keys(["k3"])
    outbox.add_tags(["t2"])
    assert len(outbox) == 1
    remote = FakeRemote()
    assert await _flush(outbox, remote) == 1
    assert remote.calls == [("clear", ())]
    assert len(outbox) == 0
    outbox.add_keys(["k4"])  # once delivered, changes queue one by one again
    assert len(outbox) == 1
    assert await _flush(outbox, remote) == 1
    assert remote.calls[-1] == ("delete", ("k4",))


async def test_an_outbox_at_its_limit_keeps_every_change() -> None:
    """Up to `limit` pending changes are kept as they are. Kills: `>` -> `>=` in
    `_bound`."""
    outbox, counters = _outbox(limit=3)
    outbox.add_keys(["a", "b"])
    outbox.add_tags(["t"])
    assert len(outbox) == 3
    assert counters.dropped_ops == 0
    remote = FakeRemote()
    assert await _flush(outbox, remote) == 3
    assert ("clear", ()) not in remote.calls


@pytest.mark.parametrize("overflow", ["keys", "tags"])
async def test_an_overflowing_outbox_collapses_into_one_clear_and_counts_the_dropped(
    overflow: str,
) -> None:
    """Past the limit the pending changes become one clear (never silently dropped:
    a dropped invalidation could leave a stale value in Redis), and `dropped_ops`
    counts them. Kills: deleting either `self._bound()`, `self.add_clear()` or the
    `dropped_ops` update, `+=` -> `-=` there, deleting `self._counters = counters`,
    and the hand mutant that drops instead of clearing."""
    outbox, counters = _outbox(limit=3)
    outbox.add_keys(["a", "b"])
    outbox.add_tags(["t"])
    getattr(outbox, f"add_{overflow}")(["one-too-many"])
    assert len(outbox) == 1
    assert counters.dropped_ops == 4
    remote = FakeRemote()
    assert await _flush(outbox, remote) == 1
    assert remote.calls == [("clear", ())]


async def test_a_failed_delivery_keeps_what_was_not_delivered() -> None:
    """Redis going away again mid-flush loses nothing: what failed stays queued, what
    was delivered is not sent again. Kills: the hand mutants that forget keys or tags
    before their call succeeded, and deleting the pops after a delivery."""
    outbox, _ = _outbox()
    outbox.add_keys(["k"])
    outbox.add_tags(["t"])
    remote = FakeRemote()
    remote.down = {"delete"}
    with pytest.raises(BackendUnavailable):
        await _flush(outbox, remote)
    assert len(outbox) == 2
    remote.down = {"invalidate"}
    with pytest.raises(BackendUnavailable):
        await _flush(outbox, remote)
    assert remote.calls == [("delete", ("k",))]
    assert len(outbox) == 1  # the key went, the tag is still queued
    remote.down = set()
    assert await _flush(outbox, remote) == 1
    assert remote.calls == [("delete", ("k",)), ("invalidate", ("t",))]


async def test_a_failed_clear_stays_queued() -> None:
    """A clear that did not reach Redis stays queued and is sent again later."""
    outbox, _ = _outbox()
    outbox.add_clear()
    remote = FakeRemote()
    remote.down = {"clear"}
    with pytest.raises(BackendUnavailable):
        await _flush(outbox, remote)
    assert len(outbox) == 1
    remote.down = set()
    assert await _flush(outbox, remote) == 1
    assert remote.calls == [("clear", ())]


async def test_changes_queued_during_a_delivery_are_kept_for_the_next() -> None:
    """A key queued while a delivery is under way (another change failed meanwhile)
    is not lost with the keys delivered: only the delivered ones leave the queue.
    Kills: `self._keys.clear()` in place of the pops (hand mutant)."""
    outbox, _ = _outbox()
    outbox.add_keys(["k1"])
    remote = FakeRemote()
    remote.outbox = outbox
    remote.meanwhile = [("keys", ["k2"])]
    assert await _flush(outbox, remote) == 1
    assert len(outbox) == 1
    assert await _flush(outbox, remote) == 1
    assert remote.calls == [("delete", ("k1",)), ("delete", ("k2",))]


# -- the guard: what the cause of a failure is called, and the breaker's probe -------------


class FakeRedis:
    """Operations and a PING with outcomes the test chooses."""

    def __init__(self) -> None:
        self.up = False
        self.hang_pings = 0  # how many PINGs never answer
        self.pings = 0
        self.opened = 0
        self.recovered = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.hang_pings:
            self.hang_pings -= 1
            await asyncio.Event().wait()  # a blackholed connection: no reply, ever
        if not self.up:
            raise redis_errors.ConnectionError("Connection refused")
        return True

    def on_open(self) -> None:
        self.opened += 1

    async def on_recover(self) -> None:
        self.recovered += 1


def _guard(fake: FakeRedis, tls: bool | None = None, threshold: int = 3) -> Guard:
    return Guard(
        timeout=0.05,
        ping=fake.ping,
        failure_threshold=threshold,
        probe_max_interval=0.05,
        tls=tls,
        on_open=fake.on_open,
        on_recover=fake.on_recover,
        log=tier_log("test", "l2"),
    )


def _raising(exc: BaseException) -> Callable[[], Awaitable[str]]:
    async def operation() -> str:
        raise exc

    return operation


async def _ok() -> str:
    return "ok"


def _tls_error_in_context() -> BaseException:
    """A ConnectionError raised while handling an SSL error, as redis-py does."""
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
        except ssl.SSLError:
            raise redis_errors.ConnectionError("Error 1 connecting to 127.0.0.1:6380.") from None
    except redis_errors.ConnectionError as exc:
        exc.__suppress_context__ = False
        return exc


def _tls_error_as_cause() -> BaseException:
    exc = redis_errors.ConnectionError("Error 1 connecting to 127.0.0.1:6380.")
    exc.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
    return exc


CAUSES = [
    pytest.param(
        redis_errors.AuthenticationError("invalid username-password pair"),
        None,
        "authentication failed (wrong user or password): invalid username-password pair",
        id="auth",
    ),
    pytest.param(
        redis_errors.NoPermissionError("NOPERM this user has no permissions to run 'evalsha'"),
        None,
        "ACL denied a command or channel the cache needs (NOPERM): NOPERM this user",
        id="noperm",
    ),
    pytest.param(
        redis_errors.ResponseError("Error in script: can't publish to the channel 'x'"),
        None,
        "ACL denied a command or channel the cache needs (NOPERM)",
        id="acl-in-script",
    ),
    pytest.param(
        redis_errors.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'"),
        None,
        "Redis is out of memory (maxmemory reached): OOM command",
        id="oom",
    ),
    pytest.param(
        _tls_error_as_cause(), None, "TLS failed (SSLCertVerificationError): ", id="ssl-cause"
    ),
    pytest.param(
        _tls_error_in_context(), None, "TLS failed (SSLCertVerificationError): ", id="ssl-context"
    ),
    pytest.param(
        redis_errors.ConnectionError("[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        None,
        "TLS failed: [SSL: WRONG_VERSION_NUMBER]",
        id="ssl-word",
    ),
    pytest.param(
        redis_errors.ConnectionError("certificate verify failed (no chain)"),
        None,
        "TLS failed: certificate verify failed",
        id="certificate-words",
    ),
    pytest.param(
        redis_errors.TimeoutError("Timeout connecting to server"),
        True,
        "TLS failed: no TLS handshake (is this a TLS port?)",
        id="tls-client-on-plain-port",
    ),
    pytest.param(
        redis_errors.TimeoutError("Timeout reading from socket"),
        True,
        "Redis did not answer in time: Timeout reading from socket",
        id="tls-timeout-reading",
    ),
    pytest.param(
        redis_errors.TimeoutError("Timeout connecting to server"),
        None,
        "Redis did not answer in time: Timeout connecting to server",
        id="timeout-connecting",
    ),
    pytest.param(
        redis_errors.ConnectionError("Connection reset by peer"),
        False,
        "connection reset at once (does the server expect TLS, rediss://?)",
        id="plain-client-on-tls-port",
    ),
    pytest.param(
        redis_errors.ConnectionError("Connection reset by peer"),
        None,
        "ConnectionError: Connection reset by peer",
        id="reset-tls-unknown",
    ),
    pytest.param(
        redis_errors.ConnectionError("Connection refused"),
        False,
        "ConnectionError: Connection refused",
        id="refused",
    ),
]


@pytest.mark.parametrize(("exc", "tls", "named"), CAUSES)
async def test_the_cause_of_a_failure_is_named(
    exc: BaseException, tls: bool | None, named: str
) -> None:
    """`get_stats()["last_error"]` and the error raised name the cause, so a wrong
    password, an ACL, a full Redis or a TLS mismatch does not pass for an outage.
    Kills: deleting any of `describe`'s returns, the flips of its `in`, `or`, `is`
    and `is not`, and `or` -> `and` in its walk down the exception chain."""
    guard = _guard(FakeRedis(), tls=tls)
    try:
        with pytest.raises(BackendError) as raised:
            await guard.call(_raising(exc))
        assert guard.last_error is not None
        assert guard.last_error.startswith(named), guard.last_error
        if not isinstance(raised.value, BackendTimeout):  # a timeout's message is its bound
            assert named in str(raised.value)
    finally:
        await guard.close()


@pytest.mark.xfail(
    strict=True,
    reason=(
        "library bug: with tls=True (a rediss:// URL) describe() names every connect "
        "failure whose text contains 'connecting' a TLS failure, and redis-py words a "
        "refused connection 'Error 111 connecting to ...': Redis being down reads as "
        "'TLS failed: no TLS handshake (is this a TLS port?)'"
    ),
)
async def test_a_tls_url_to_a_server_that_is_down_is_named_an_outage() -> None:
    """Nothing listening on a rediss:// URL's port is an outage, not a TLS mismatch."""
    guard = _guard(FakeRedis(), tls=True)
    refused = redis_errors.ConnectionError(
        "Error 111 connecting to 127.0.0.1:6380. Connect call failed ('127.0.0.1', 6380)."
    )
    try:
        with pytest.raises(BackendUnavailable):
            await guard.call(_raising(refused))
        assert guard.last_error is not None
        assert not guard.last_error.startswith("TLS failed"), guard.last_error
    finally:
        await guard.close()


async def test_each_new_cause_is_logged_once_and_forgotten_on_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing call logs its cause the first time, not once per call; a success
    clears `last_error`. Kills: `!=` -> `==` in `_note`, deleting its warning or
    `self.last_error = text`, and the refused-command branch's `_note`."""
    guard = _guard(FakeRedis(), threshold=100)
    refused = redis_errors.ResponseError("ERR unknown command 'FOO'")
    with caplog.at_level(logging.WARNING, logger="twotier"):
        for _ in range(3):
            with pytest.raises(BackendError):
                await guard.call(_raising(refused))
        assert guard.last_error == "ResponseError: ERR unknown command 'FOO'"
        for _ in range(2):
            with pytest.raises(BackendUnavailable):
                await guard.call(_raising(redis_errors.ConnectionError("Connection refused")))
    failed = [r.getMessage() for r in caplog.records if "Redis call failed" in r.getMessage()]
    assert failed == [
        "Redis call failed: ResponseError: ERR unknown command 'FOO'",
        "Redis call failed: ConnectionError: Connection refused",
    ]
    assert guard.errors == 5
    assert await guard.call(_ok) == "ok"
    assert guard.last_error is None
    await guard.close()


async def test_a_timeout_names_the_bound_and_counts_toward_opening() -> None:
    """A timed-out call raises BackendTimeout with the bound in ms and counts as an
    availability failure. Kills: deleting `self.timeout = timeout`, `ms = ...`, the
    raise, or the `_failed` call of the timeout branch."""
    fake = FakeRedis()
    guard = _guard(fake)
    for _ in range(3):
        with pytest.raises(BackendTimeout, match="did not answer within 50 ms"):
            await guard.call(_raising(TimeoutError()))
    assert guard.state is BreakerState.OPEN
    assert fake.opened == 1
    await guard.close()


async def test_opening_tells_the_cache_once_and_fails_calls_with_the_cause() -> None:
    """When the breaker opens, `on_open` runs once (the cache starts serving from L1
    and loaders), and calls fail at once naming the last cause. Kills: deleting
    `self._on_open()` or `self._on_open = on_open`, `self.state = OPEN`, `is` -> `is
    not` / `and` -> `or` in the opening test, and `>=` -> `>`."""
    fake = FakeRedis()
    guard = _guard(fake)
    refused = redis_errors.ConnectionError("Connection refused")
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await guard.call(_raising(refused))
    assert fake.opened == 0
    assert guard.available
    with pytest.raises(BackendUnavailable):
        await guard.call(_raising(refused))
    assert fake.opened == 1
    assert not guard.available
    with pytest.raises(BackendUnavailable, match=r"circuit open.*Connection refused"):
        await guard.call(_ok)
    await guard.close()


async def test_a_probe_ping_that_never_answers_is_abandoned_and_retried() -> None:
    """A PING lost on a blackholed connection must not stall recovery: each probe
    is bounded by its timeout, and the next one finds Redis back. Kills: the hand
    mutant without a probe bound, and `or` -> `and` in `probe_timeout or timeout`."""
    fake = FakeRedis()
    fake.hang_pings = 1
    guard = _guard(fake)
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            await guard.call(_raising(redis_errors.ConnectionError("Connection refused")))
    fake.up = True
    await eventually(lambda: _is(guard.available), timeout=3)
    assert fake.recovered == 1
    assert fake.pings >= 2
    assert guard.last_error is None
    await guard.close()


async def test_closing_stops_the_probe() -> None:
    """A closed cache stops probing a dead Redis. Kills: deleting the probe's cancel
    or the wait for it, and `is not` -> `is` in `close`."""
    fake = FakeRedis()
    guard = _guard(fake)
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            await guard.call(_raising(redis_errors.ConnectionError("Connection refused")))
    await eventually(lambda: _is(fake.pings >= 1))
    await guard.close()
    pings = fake.pings
    await asyncio.sleep(0.3)
    assert fake.pings == pings
    assert guard._probe is not None
    assert guard._probe.done()


async def _is(value: bool) -> bool:
    return value


async def test_opening_and_closing_the_circuit_are_logged_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An outage is visible in the logs: one warning when the circuit opens, one when
    Redis answers again. Kills: deleting either warning."""
    fake = FakeRedis()
    guard = _guard(fake)
    with caplog.at_level(logging.WARNING, logger="twotier"):
        for _ in range(4):
            with pytest.raises(BackendUnavailable):
                await guard.call(_raising(redis_errors.ConnectionError("Connection refused")))
        fake.up = True
        await eventually(lambda: _is(guard.available))
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "circuit open" in m] == [
        "Redis unavailable (ConnectionError: Connection refused): circuit open, "
        "serving from L1 and loaders"
    ]
    assert [m for m in messages if "circuit closed" in m] == [
        "Redis available again: circuit closed"
    ]
    await guard.close()


async def test_while_open_the_cause_follows_what_the_probe_meets() -> None:
    """While the circuit is open, `last_error` (and the error calls fail with) names
    what the probe meets now, not only what opened the circuit. Kills: deleting
    the probe's `_note`."""
    fake = FakeRedis()
    guard = _guard(fake)
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            await guard.call(_raising(redis_errors.ConnectionError("Connection reset by peer")))
    assert guard.last_error == "ConnectionError: Connection reset by peer"
    await eventually(lambda: _is(guard.last_error == "ConnectionError: Connection refused"))
    with pytest.raises(BackendUnavailable, match="Connection refused"):
        await guard.call(_ok)
    await guard.close()


# -- keys, tags, TTLs and key templates ----------------------------------------------------


def _cache() -> TwoTierCache:
    return TwoTierCache(namespace=f"t{uuid.uuid4().hex[:8]}")


def test_a_long_key_that_only_looks_hashed_is_hashed() -> None:
    """Every key is a literal of at most 200 characters or a hashed form of exactly
    265, so no literal can reach a long key's entry: a long key is returned as it
    is only when it has the hashed form's exact shape. Kills: keys-58dcbb (`and` ->
    `or` in `_is_hashed`: any long key with '#' and hex after position 200 passed)."""
    looks_hashed = "x" * MAX_KEY_LENGTH + "#" + "ab" * 14  # 229 characters
    hashed = validate_key(looks_hashed)
    assert hashed == hash_long_key(looks_hashed)
    assert len(hashed) == HASHED_KEY_LENGTH
    assert validate_key(hashed) == hashed  # a genuine hashed form is kept


def test_a_tag_of_the_longest_allowed_length_is_accepted() -> None:
    """Tags of up to 200 characters are accepted, longer ones refused. Kills:
    keys-a9d1e7 (`>` -> `>=`)."""
    assert validate_tags(["t" * MAX_TAG_LENGTH]) == ("t" * MAX_TAG_LENGTH,)
    with pytest.raises(InvalidKeyError, match="longer than 200"):
        validate_tags(["t" * (MAX_TAG_LENGTH + 1)])


def test_a_ttl_of_exactly_a_year_is_accepted() -> None:
    """A year is the longest TTL; a second more is refused as a likely unit mistake.
    Kills: keys-7249a3 (`>` -> `>=`)."""
    assert validate_ttl(MAX_TTL_SECONDS) == float(MAX_TTL_SECONDS)
    with pytest.raises(InvalidTTLError, match="longer than a year"):
        validate_ttl(MAX_TTL_SECONDS + 1)


def _nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_arguments_nested_up_to_the_limit_are_accepted() -> None:
    """An argument nested 100 containers deep gives a key; 101 is refused. Kills:
    keys-57fa96 (`>=` -> `>`)."""
    assert encode_argument(_nested(MAX_ARGUMENT_DEPTH)).count("[") == MAX_ARGUMENT_DEPTH
    with pytest.raises(InvalidKeyError, match="nested deeper than 100"):
        encode_argument(_nested(MAX_ARGUMENT_DEPTH + 1))


class Colour(enum.Enum):
    RED = 1


@dataclass(frozen=True)
class Meeting:
    place: str

    def __repr__(self) -> str:
        return f"Meeting at 0x10 {self.place}"  # an address-like text, but stable


def test_keys_render_what_the_value_is_never_its_repr() -> None:
    """An enum member by its type and name; a dataclass by every field, whatever
    its own `__repr__` says (issue 17, case 8: a repr can hide fields)."""
    assert encode_argument(Colour.RED) == "tests.test_mutation_kills.Colour.RED"
    assert encode_argument(Meeting("room 4")) == (
        "tests.test_mutation_kills.Meeting(place='room 4')"
    )


async def test_bad_key_templates_fail_at_decoration_time() -> None:
    """An empty or non-string key template is a programming error, reported when
    the function is decorated, not on its first call. Kills: keys-c40b28 (`or` ->
    `and`), keys-bd5e55 (the raise deleted)."""
    cache = _cache()

    async def f(x: int) -> int:
        return x

    for bad in ("", 123):
        with pytest.raises(TemplateError, match="non-empty str"):
            cache.cached(ttl=60, key=bad)(f)  # type: ignore[arg-type]


def test_an_unknown_template_field_names_the_known_parameters() -> None:
    """The error lists the parameters the template may use, or says there are none.
    Kills: keys-b517a5 (`or` -> `and`: "(none)" is never shown)."""

    async def two(a: int, b: int) -> None: ...

    async def none() -> None: ...

    with pytest.raises(TemplateError, match=r"unknown parameter\(s\) c; known: a, b"):
        KeyPlan(two, "k:{c}", ())
    with pytest.raises(TemplateError, match=r"unknown parameter\(s\) c; known: \(none\)"):
        KeyPlan(none, "k:{c}", ())


async def test_a_bare_string_of_tags_is_refused_by_the_decorator() -> None:
    """`tags="user"` would be five one-letter tags: refused at decoration time. Kills:
    keys-9fa0df."""
    cache = _cache()

    async def f(x: int) -> int:
        return x

    with pytest.raises(TemplateError, match="list of strings"):
        cache.cached(ttl=60, tags="user")(f)


async def test_variadic_calls_with_different_arguments_do_not_share_an_entry() -> None:
    """`f(5, 6)` and `f([5, 6])` are different calls and get different entries.
    Kills: keys-afcf97 (`is` -> `is not`: a variadic function takes the fast path,
    whose key for one list argument equals the bound key of two arguments)."""
    cache = _cache()

    @cache.cached(ttl=60)
    async def total(*items: object) -> str:
        return repr(items)

    async with cache:
        assert await total(5, 6) == "(5, 6)"
        assert await total([5, 6]) == "([5, 6],)"
        assert await total(5) == "(5,)"
        assert await total((5,)) == "((5,),)"


async def test_positional_defaulted_and_keyword_calls_share_one_entry() -> None:
    """`f(1)`, `f(1, 2)` and `f(a=1)` are the same call of `f(a, b=2)`: one load.
    Kills: keys-7c791b (`==` -> `!=`: a call with fewer positional arguments than
    parameters skips the defaults)."""
    cache = _cache()
    loads = 0

    @cache.cached(ttl=60)
    async def f(a: int, b: int = 2) -> int:
        nonlocal loads
        loads += 1
        return a + b

    async with cache:
        assert [await f(1), await f(1, 2), await f(a=1), await f(1, b=2)] == [3] * 4
    assert loads == 1


async def test_a_bad_call_raises_even_when_the_good_call_is_cached() -> None:
    """A call the function cannot take raises TypeError; a cached value of another
    call is never returned for it. Kills: keys-aaf73e and keys-32ede5 (the fast path
    or the fast bind used with keyword arguments present)."""
    cache = _cache()

    @cache.cached(ttl=60)
    async def f(a: int, b: int) -> int:
        return a + b

    async with cache:
        assert await f(1, 2) == 3
        with pytest.raises(TypeError):
            await f(1, 2, b=5)  # type: ignore[misc]


async def test_a_key_of_exactly_the_longest_literal_length_is_used_as_it_is() -> None:
    """A decorated call whose key is exactly 200 characters works and is stored under
    that literal key (as `cache.get` sees it). Kills: keys-42850f and keys-6d0f3b
    (`<=` -> `<` on the fast paths: such a key went to `hash_long_key`, which refuses
    it)."""
    cache = _cache()

    @cache.cached(ttl=60)
    async def one(text: str) -> str:
        return text.upper()

    @cache.cached(ttl=60)
    async def two(text: str, n: int) -> str:
        return text * n

    async with cache:
        arg = "x" * (MAX_KEY_LENGTH - len(one.key("")))
        assert len(one.key(arg)) == MAX_KEY_LENGTH
        assert await one(arg) == arg.upper()
        assert await cache.get(one.key(arg)) == arg.upper()
        arg = "y" * (MAX_KEY_LENGTH - len(two.key("", 1)))
        assert len(two.key(arg, 1)) == MAX_KEY_LENGTH
        assert await two(arg, 1) == arg
        assert await cache.get(two.key(arg, 1)) == arg


def test_a_cached_function_shows_its_name() -> None:
    """`repr` of a decorated function names it (as in logs and debuggers). Kills:
    keys-c6caf2."""
    cache = _cache()

    @cache.cached(ttl=60)
    async def report(year: int) -> int:
        return year

    assert repr(report) == (
        f"<cached {__name__}.test_a_cached_function_shows_its_name.<locals>.report ttl=60s>"
    )
