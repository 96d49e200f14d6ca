"""The serializers (`_serialization.py`) on their own: exact round trips, refusals
at `dumps` that say what is wrong, and bytes from anyone read as a value or a
`DeserializationError`.

Written for the mutation run (.ci/mutation.py, module `serialization`); each
test names in its docstring the mutants it kills (ids from `--list`). The broad
property and fuzz tests are in tests/test_serialization.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import io
import sys
import uuid
import zoneinfo
from importlib import resources
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # ships no type information
import pytest
from msgpack import fallback

from tests.test_serialization import _inside, _plain, identical
from twotier import (
    ConfigurationError,
    DeserializationError,
    MsgpackSerializer,
    PickleSerializer,
    SerializationError,
)
from twotier import _serialization as serialization
from twotier._serialization import MAX_DEPTH

codec = MsgpackSerializer()
ext = msgpack.ExtType
TUPLE, TIME, TIMEDELTA = 6, 4, 10  # extension codes of the wire format


def _payload(document: Any) -> bytes:
    packed: bytes = msgpack.packb(document)
    return b"M" + packed


def _in_tuples(document: Any, levels: int) -> Any:
    """*document* as the single item of *levels* tuples one inside another, on the wire."""
    for _ in range(levels):
        document = ext(TUPLE, msgpack.packb([document]))
    return document


# -- a value comes back with its type and meaning ---------------------------


def test_a_dict_whose_keys_and_values_are_all_deep_tuples_round_trips() -> None:
    """A dict is rebuilt for the walk when any of its keys or values is a
    tuple packed on its own; one where all of them are is the case a check
    for "any item not yet packed" misses: it was packed as it is, and the
    tuples three deep in it escaped `dumps` as an internal exception.
    Kills: serialization-2ae43f (`in packable` -> `not in`)."""
    deep = (1, (2, (3,)))
    for value in ({deep: deep}, [{deep: (4, (5, (6, 7)))}], {(0, ((1,),)): deep, deep: deep}):
        assert identical(codec.loads(codec.dumps(value)), value)


def test_a_tuple_of_tuples_of_scalars_is_read_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tuples of tuples (a grid, pairs of pairs) are what values hold: they are
    read in one pass, the walk (several times slower) only for deeper
    nesting. The scalars inside the inner tuple (Decimal, date, UUID, a big
    int) are decoded there, not sent to the walk.
    Kills: serialization-f641b9 (`code != _EXT_TIMEDELTA` -> `==`: every other
    scalar two tuples down took the walk)."""
    value = (
        (decimal.Decimal("19.90"), dt.date(2026, 12, 1), uuid.UUID(int=7), 2**80),
        (dt.datetime(2026, 3, 29, 1, 30), dt.time(2, 30)),
    )
    payload = codec.dumps(value)
    monkeypatch.setattr(serialization, "_unpack_walked", None)  # calling it fails the read
    assert identical(codec.loads(payload), value)


def test_a_timedelta_two_tuples_down_round_trips_with_three_unpackers_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timedelta's fields are a document of their own: decoding one inside
    a tuple inside a tuple would put a fourth unpacker on the C stack, which
    docs/serialization.md promises never happens (three at most, however the
    bytes are nested): it is read by the walk, and comes back all the same.
    Kills: serialization-5ea900 (`build is None and decode is None` ->
    `decode is not None`: the timedelta was refused as an unknown extension),
    serialization-f641b9 (`!=` -> `==`: decoded there, four unpackers)."""
    depth = 0
    deepest = 0
    unpackb = msgpack.unpackb

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal depth, deepest
        depth += 1
        deepest = max(deepest, depth)
        try:
            return unpackb(*args, **kwargs)
        finally:
            depth -= 1

    values: list[Any] = [
        ((dt.timedelta(days=1, seconds=2, microseconds=3),),),
        {"k": [((dt.timedelta(-1), {1: dt.timedelta(0)}),)]},
        (((dt.timedelta(hours=5),),),),
    ]
    monkeypatch.setattr(msgpack, "unpackb", counting)
    for value in values:
        assert identical(codec.loads(codec.dumps(value)), value)
    assert deepest == 3


def test_an_int_key_in_a_dict_inside_a_tuple_stays_an_int() -> None:
    """msgpack refuses non-string map keys unless told not to; the items of a
    tuple are read by an unpacker of their own, which must be told too.
    Kills: serialization-33321f (strict_map_key=True in the tuple's unpacker)."""
    value = ({1: "a", (2, 3): "b"}, [{4: {5: 6}}])
    assert identical(codec.loads(codec.dumps(value)), value)


def test_an_int_of_4300_digits_round_trips_and_one_more_is_refused() -> None:
    """docs/serialization.md: any size, past 4,300 digits refused, as Python's
    `str(int)` refuses; refused at `dumps`, with Python's reason.
    Kills: serialization-35296d (the ValueError not turned into a
    SerializationError: `dumps` returned None)."""
    largest = {"n": 10**4299, "m": -(10**4299)}
    assert identical(codec.loads(codec.dumps(largest)), largest)
    with pytest.raises(SerializationError, match="4300 digits"):
        codec.dumps([10**4300])


def test_a_string_that_is_not_unicode_text_is_refused_at_dumps() -> None:
    """A lone surrogate has no UTF-8 form: `dumps` refuses it with the codec's
    reason instead of storing anything.
    Kills: serialization-35296d (`dumps` returned None)."""
    with pytest.raises(SerializationError, match="surrogates not allowed"):
        codec.dumps({"name": "\ud800"})


def test_the_items_of_a_tuple_count_their_levels_afresh_when_the_value_takes_the_walk() -> None:
    """docs/serialization.md: the items of each tuple are a document of their
    own, whose levels count from their list. Three tuples one inside another
    send the value to the walk, which must count the same way as one pass:
    a list MAX_DEPTH - 1 deep around three tuples around a list MAX_DEPTH - 1
    deep round-trips; one level more on either side is refused, naming the
    bound.
    Kills: serialization-f8a42a (the walk kept counting through the tuples:
    the value refused as too deep)."""
    value = _inside((((_plain(MAX_DEPTH - 1),),),), MAX_DEPTH - 1)
    assert identical(codec.loads(codec.dumps(value)), value)
    for deeper in (
        _inside((((_plain(MAX_DEPTH),),),), MAX_DEPTH - 1),
        _inside((((_plain(MAX_DEPTH - 1),),),), MAX_DEPTH),
    ):
        with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH} levels"):
            codec.dumps(deeper)


# -- refused at dumps, saying why ---------------------------------------------


def _berlin_bytes() -> bytes | None:
    """The tz file of Europe/Berlin, from the OS's database or tzdata."""
    for root in zoneinfo.TZPATH:
        path = Path(root, "Europe", "Berlin")
        if path.is_file():
            return path.read_bytes()
    try:
        return resources.files("tzdata.zoneinfo").joinpath("Europe/Berlin").read_bytes()
    except ModuleNotFoundError:
        return None


def test_a_zone_key_holding_the_field_separator_is_refused_at_dumps() -> None:
    """A datetime is written as `iso|zone|fold`: a key with a '|' would be
    stored and then be garbage on every read. No IANA key has one, but
    `ZoneInfo.from_file(..., key=...)` takes any.
    Kills: serialization-0811a9 (the refusal deleted)."""
    data = _berlin_bytes()
    if data is None:  # pragma: no cover - the tz database ships with the OS or tzdata
        pytest.skip("no tz database")
    piped = zoneinfo.ZoneInfo.from_file(io.BytesIO(data), key="Europe|Berlin")
    for value in (dt.datetime(2026, 3, 29, 1, 30, tzinfo=piped), dt.time(1, 30, tzinfo=piped)):
        with pytest.raises(SerializationError, match=r"'Europe\|Berlin': '\|' in its key"):
            codec.dumps([value])


def test_a_fixed_offset_with_a_fraction_of_a_second_is_refused_naming_it() -> None:
    """Python 3.11 reads `+00:00:00.000001` back as UTC: the offset would
    change meaning, so `dumps` refuses it and says why. A whole number of
    seconds is carried.
    Kills: serialization-3b8cf1 (the refusal deleted)."""
    odd = dt.timezone(dt.timedelta(hours=1, microseconds=1))
    for value in (dt.datetime(2026, 1, 1, tzinfo=odd), dt.time(12, tzinfo=odd)):
        with pytest.raises(SerializationError, match="fraction of a second"):
            codec.dumps({"at": value})
    whole = dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1, seconds=1)))
    assert identical(codec.loads(codec.dumps(whole)), whole)


# -- bytes from anyone: a value or DeserializationError -----------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([1, 2, 3, 4], id="four-ints"),
        pytest.param([1.5, 0, 0], id="a-float"),
        pytest.param([True, 0, 0], id="a-bool"),
        pytest.param([1, 2], id="two-ints"),
        pytest.param("abc", id="a-string"),
    ],
)
def test_a_timedelta_whose_fields_are_not_three_ints_is_garbage(fields: Any) -> None:
    """Anyone may write a key: a timedelta extension whose fields are not
    exactly three ints (days, seconds, microseconds) is no timedelta
    `dumps` wrote. It is a DeserializationError, not a timedelta made of
    part of it (the first three of four ints, 1.5 days, `True` days).
    Kills: serialization-2c305e, serialization-b9e7d9 (`or` -> `and` in the
    check), serialization-29e7aa (the refusal deleted)."""
    for document in (
        ext(TIMEDELTA, msgpack.packb(fields)),
        [1, ext(TIMEDELTA, msgpack.packb(fields))],
    ):
        with pytest.raises(DeserializationError, match="malformed timedelta"):
            codec.loads(_payload(document))


@pytest.mark.parametrize(
    "text", [b"02:30:00||2", b"02:30:00||0", b"02:30:00||1|1", b"02:30:00|UTC|x"]
)
def test_a_time_with_a_third_field_other_than_fold_1_is_garbage(text: bytes) -> None:
    """A time is written `iso|zone`, with `|1` only for fold=1: any other
    tail was not written by `dumps`, and reading it as a folded time would
    hand the caller a value nobody stored.
    Kills: serialization-c625ff (the refusal deleted: read back with fold=1)."""
    with pytest.raises(DeserializationError, match="malformed time"):
        codec.loads(_payload(ext(TIME, text)))
    assert codec.loads(_payload(ext(TIME, b"02:30:00||1"))) == dt.time(2, 30, fold=1)


@pytest.mark.parametrize("items", [b"ab", {b"k": 1}, 5], ids=["a-string", "a-map", "an-int"])
@pytest.mark.parametrize("levels", [0, 3], ids=["one-pass", "walked"])
def test_a_tuple_whose_items_are_no_list_is_garbage(items: Any, levels: int) -> None:
    """The items of a tuple are written as a msgpack list. A tuple extension
    holding a string or a map was written by someone else: `tuple("ab")`
    would make up the value `('a', 'b')`. Garbage, whether it is read in one
    pass or, under three tuples, by the walk.
    Kills: serialization-9fb802 (one pass), serialization-e8f437 (the walk):
    the refusal deleted."""
    document = _in_tuples(ext(TUPLE, msgpack.packb(items)), levels)
    with pytest.raises(DeserializationError, match="no list"):
        codec.loads(_payload(document))


@pytest.mark.parametrize("levels", [0, 1, 3])
def test_an_unknown_extension_is_garbage_naming_its_code(levels: int) -> None:
    """An extension code twotier never wrote is reported as such (the warning
    logged for the garbage entry says what was wrong with it), at the top or
    nested in tuples.
    Kills: serialization-3125eb (the refusal deleted: reported as a corrupt
    payload, by an internal exception), serialization-f98dc7,
    serialization-5ea900 (the test for an unknown code inverted)."""
    with pytest.raises(DeserializationError, match="unknown msgpack extension type 99"):
        codec.loads(_payload(_in_tuples(ext(99, b""), levels)))


# -- the pickle serializer -------------------------------------------------------

SECRET = "s" * 32


def test_a_pickle_secret_of_16_bytes_is_enough_and_15_are_not() -> None:
    """docs/serialization.md: the secret must be at least 16 bytes, as a str
    or as bytes.
    Kills: serialization-1d3514 (`<` -> `<=`: 16 refused), serialization-aaa563
    (`or` -> `and`: a short secret accepted)."""
    for secret in ("k" * 16, b"k" * 16):
        signer = PickleSerializer(secret)
        assert signer.loads(signer.dumps({"a": (1, 2)})) == {"a": (1, 2)}
    for short in ("k" * 15, b"k" * 15, ""):
        with pytest.raises(ConfigurationError, match="at least 16 bytes"):
            PickleSerializer(short)


def test_a_value_pickle_cannot_write_is_a_serialization_error() -> None:
    """A lambda has no pickle: `dumps` raises SerializationError saying so, the
    error the cache turns into "nothing stored".
    Kills: serialization-d8c82f (the error deleted: an UnboundLocalError)."""
    with pytest.raises(SerializationError, match="cannot pickle"):
        PickleSerializer(SECRET).dumps({"f": lambda: 1})


class _Renamed:
    """A class a later deploy renames."""


def test_a_signed_entry_whose_class_is_gone_is_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/serialization.md: after a deploy that renames a class, old entries
    fail to load and count as garbage. The signature is good; the error is
    a DeserializationError saying it does not load.
    Kills: serialization-7b2afe (the error deleted: the read returned None,
    a hit on a value nobody stored)."""
    signer = PickleSerializer(SECRET)
    payload = signer.dumps(_Renamed())
    monkeypatch.delattr(sys.modules[__name__], "_Renamed")
    with pytest.raises(DeserializationError, match="does not load"):
        signer.loads(payload)
    body = b"not a pickle"
    forged_by_us = b"P" + hmac.digest(SECRET.encode(), body, "sha256") + body
    with pytest.raises(DeserializationError, match="does not load"):
        signer.loads(forged_by_us)


def test_a_signed_pickle_under_another_tag_is_never_unpickled() -> None:
    """The first byte names the serializer: a payload tagged for another one
    is refused before anything else, even with a signature that checks out
    (the tag is outside the signed bytes).
    Kills: serialization-336216 (the tag check deleted: unpickled)."""
    signer = PickleSerializer(SECRET)
    payload = signer.dumps([1, 2])
    for tag in (b"M", b"X"):
        with pytest.raises(DeserializationError, match="not written by the pickle serializer"):
            signer.loads(tag + payload[1:])


# -- the depth bound follows the msgpack installed -----------------------------


def test_the_depth_bound_is_1024_with_msgpack_1_2_and_511_with_its_python_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/serialization.md: MAX_DEPTH is 1,024 levels with msgpack 1.2 and
    later, 511 before and in its pure-Python fallback, whose packer refuses
    a list 1,024 levels deep. The bound is measured by packing such a list:
    with the fallback's packer in place of the C one, it must come out 511.
    Kills: serialization-a5580a (the probe not nested: 1,024 whatever the
    packer), serialization-78713a (the probe not packed), serialization-487817
    (`return 511` deleted: 1,024 after the packer refused)."""
    if msgpack.version >= (1, 2) and msgpack.Packer.__module__ == "msgpack._cmsgpack":
        assert serialization._packable_depth() == 1024 == serialization.MAX_DEPTH

    def python_packb(value: Any, **options: Any) -> bytes:
        return fallback.Packer(**options).pack(value)  # type: ignore[no-any-return]

    monkeypatch.setattr(msgpack, "packb", python_packb)
    assert serialization._packable_depth() == 511
