import collections
import contextlib
import datetime as dt
import decimal
import enum
import fractions
import io
import math
import subprocess
import sys
import textwrap
import uuid
import zoneinfo
from importlib import resources
from pathlib import Path

import msgpack  # type: ignore[import-untyped]  # ships no type information
import pytest
from hypothesis import given
from hypothesis import strategies as st

from twotier import DeserializationError, MsgpackSerializer, PickleSerializer, SerializationError
from twotier import _serialization as serialization
from twotier._serialization import MAX_DEPTH, MAX_NESTED

codec = MsgpackSerializer()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.decimals(allow_nan=False),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
    st.datetimes(timezones=st.sampled_from([dt.UTC, zoneinfo.ZoneInfo("Europe/Berlin")])),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(), st.integers()), inner, max_size=4),
        st.frozensets(st.one_of(st.integers(), st.text()), max_size=4),
        st.sets(st.one_of(st.integers(), st.text()), max_size=4),
    ),
    max_leaves=12,
)


def identical(a: object, b: object) -> bool:
    """Equal and of the same type all the way down: zones by key (or offset and name),
    folds, a Decimal's digits, a float's sign and NaN. Iterative: values nest 1,024 deep."""
    pairs = [(a, b)]
    while pairs:
        x, y = pairs.pop()
        kind = type(x)
        if kind is not type(y):
            return False
        if kind is dict:
            if len(x) != len(y):  # type: ignore[arg-type]
                return False
            pairs += zip(x, y, strict=True)  # type: ignore[call-overload]  # keys in order, then values
            pairs += zip(x.values(), y.values(), strict=True)  # type: ignore[attr-defined]
        elif kind is list or kind is tuple:
            if len(x) != len(y):  # type: ignore[arg-type]
                return False
            pairs += zip(x, y, strict=True)  # type: ignore[call-overload]
        elif kind is set or kind is frozenset:
            if x != y:
                return False
            theirs = {item: item for item in y}  # type: ignore[attr-defined]
            pairs += ((item, theirs[item]) for item in x)  # type: ignore[attr-defined]
        elif not _same_leaf(x, y):
            return False
    return True


def _zone(value: dt.datetime | dt.time) -> object:
    tz = value.tzinfo
    if isinstance(tz, zoneinfo.ZoneInfo):
        return tz.key
    return tz and (tz.utcoffset(None), tz.tzname(None))


def _same_leaf(x: object, y: object) -> bool:
    if isinstance(x, float):
        assert isinstance(y, float)
        return (x == y or (x != x and y != y)) and math.copysign(1, x) == math.copysign(1, y)
    if isinstance(x, decimal.Decimal):
        return str(x) == str(y)
    if isinstance(x, (dt.datetime, dt.time)):
        assert isinstance(y, (dt.datetime, dt.time))
        return (x.isoformat(), _zone(x), x.fold) == (y.isoformat(), _zone(y), y.fold)
    return x == y


@given(values)
def test_msgpack_round_trip_is_exact(value: object) -> None:
    assert identical(codec.loads(codec.dumps(value)), value)


def test_erp_shaped_value_round_trips() -> None:
    value = {
        "id": uuid.uuid4(),
        "price": decimal.Decimal("19.90"),
        "at": dt.datetime.now(dt.UTC),
        "due": dt.date(2026, 12, 1),
        "tags": {"a", "b"},
        "dims": (1, 2),
        "blob": b"\x00\x01",
        "big": 2**80,
        "rows": [{"n": 1}],
    }
    assert identical(codec.loads(codec.dumps(value)), value)


def test_unserializable_value_is_a_specific_error() -> None:
    class Article:
        pass

    with pytest.raises(SerializationError, match="Article"):
        codec.dumps({"a": Article()})


@pytest.mark.parametrize("garbage", [b"", b"M\xc1", b"X\x01", b"M\xd4\x63\x00", b"P" + b"0" * 40])
def test_garbage_is_a_deserialization_error(garbage: bytes) -> None:
    with pytest.raises(DeserializationError):
        codec.loads(garbage)


def test_pickle_is_signed_and_checked() -> None:
    signer = PickleSerializer(secret="s" * 32)
    payload = signer.dumps({"a": 1})
    assert signer.loads(payload) == {"a": 1}
    tampered = payload[:-1] + bytes([payload[-1] ^ 1])
    with pytest.raises(DeserializationError, match="signature"):
        signer.loads(tampered)
    with pytest.raises(DeserializationError):
        PickleSerializer(secret="t" * 32).loads(payload)


def test_pickle_never_loads_msgpack_and_vice_versa() -> None:
    signer = PickleSerializer(secret="s" * 32)
    with pytest.raises(DeserializationError):
        signer.loads(codec.dumps(1))
    with pytest.raises(DeserializationError):
        codec.loads(signer.dumps(1))


# -- hostile bytes (issue 17, case 7) ---------------------------------------

TUPLE, SET, FROZENSET = 6, 7, 8  # the extension codes of the wire format


def nested(code: int, depth: int) -> bytes:
    """A payload of *depth* tuples (or sets…) inside one another, built by hand as an
    attacker would: each level is a msgpack document inside its parent's extension."""
    items = msgpack.packb([1])
    for _ in range(depth - 1):
        items = msgpack.packb([msgpack.ExtType(code, items)])
    return b"M" + msgpack.packb(msgpack.ExtType(code, items))


def _plain(levels: int) -> object:
    """A list nested *levels* deep, counting the innermost (empty) one."""
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _decoded_or_refused(payload: bytes) -> None:
    with contextlib.suppress(DeserializationError):  # anything else (or a crash) fails
        codec.loads(payload)


# Run in a thread with a small stack: a decoder whose C stack grows with the
# nesting dies on a few dozen levels there, whatever the platform's main stack.
_READER = textwrap.dedent(
    """
    import resource, sys, threading
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the control
    import msgpack
    from twotier import DeserializationError, MsgpackSerializer

    payload = sys.stdin.buffer.read()

    def nested_unpacker(code, data):  # how _ext_hook decoded a tuple before the fix
        return tuple(msgpack.unpackb(data, ext_hook=nested_unpacker))

    def read():
        try:
            if sys.argv[1] == "control":
                msgpack.unpackb(payload[1:], ext_hook=nested_unpacker)
            else:
                MsgpackSerializer().loads(payload)
        except DeserializationError as exc:
            print("DeserializationError", exc)
        except BaseException as exc:
            print("other", type(exc).__name__, exc)

    threading.stack_size(512 * 1024)
    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    """
)


def _read_in_child(payload: bytes, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _READER, mode],
        input=payload.decode("latin-1"),
        encoding="latin-1",
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("code", [TUPLE, SET, FROZENSET])
def test_deeply_nested_entry_is_garbage_not_a_crash(code: int) -> None:
    """Issue 17, case 7: 10,000 nested tuples (50 KB) killed every reader with SIGSEGV."""
    payload = nested(code, 10_000)
    if (
        msgpack.Unpacker.__module__ == "msgpack._cmsgpack"
    ):  # (its Python fallback recurses in Python)
        control = _read_in_child(payload, "control")
        assert control.returncode < 0, "the payload no longer kills a nesting decoder: test void"
    child = _read_in_child(payload, "twotier")
    assert child.returncode == 0, f"reader died: {child.returncode} {child.stderr[-2000:]}"
    assert child.stdout.startswith("DeserializationError"), child.stdout


@pytest.mark.parametrize("code", [TUPLE, SET, FROZENSET])
def test_nesting_past_the_bound_is_garbage(code: int) -> None:
    _decoded_or_refused(nested(code, MAX_NESTED))  # a set of sets cannot be: refused or not
    with pytest.raises(DeserializationError, match=str(MAX_NESTED)):
        codec.loads(nested(code, MAX_NESTED + 1))


def test_nesting_up_to_the_bound_round_trips() -> None:
    value: object = 1
    for level in range(MAX_NESTED):
        if level % 5 == 4:
            value = [{"k": value}]  # lists and dicts between them do not count
        value = frozenset({value}) if _hashable(value) and level % 3 == 0 else (value,)
    assert identical(codec.loads(codec.dumps(value)), value)
    assert identical(codec.loads(nested(TUPLE, MAX_NESTED)), _tuples(MAX_NESTED))


def _tuples(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = (value,)
    return value


def test_two_levels_of_tuples_take_no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk costs several times the one-pass read: only deeper values take it."""
    value = {"grid": ((1, 2), dt.timedelta(1)), "keys": {frozenset({1, 2})}, (1, (2,)): 3}
    payload = codec.dumps(value)
    for walk in ("_pack_walked", "_unpack_walked"):
        monkeypatch.setattr(serialization, walk, None)  # calling it fails the test
    assert codec.dumps(value) == payload
    assert identical(codec.loads(payload), value)


def _reference(value: object) -> object:
    """What msgpack is handed for *value*, built by recursion: the wire format's spec."""
    codes = {tuple: TUPLE, set: SET, frozenset: FROZENSET}
    if type(value) in codes:
        items = msgpack.packb([_reference(item) for item in value])  # type: ignore[attr-defined]
        return msgpack.ExtType(codes[type(value)], items)
    if isinstance(value, list):
        return [_reference(item) for item in value]
    if isinstance(value, dict):
        return {_reference(key): _reference(item) for key, item in value.items()}
    return value


def test_the_walk_writes_the_wire_format_and_reads_it_back() -> None:
    shared = (1, ((2,),))
    value = {
        ((1, (2, (3,))),): [shared, shared, {"k": frozenset({((4,),)})}],
        "s": {frozenset({(5, (6, (7,)))}), 8},
        "empty": (((),),),
    }
    payload = codec.dumps(value)
    assert payload == b"M" + msgpack.packb(_reference(value))
    assert identical(codec.loads(payload), value)


@pytest.mark.parametrize("depth", [MAX_NESTED + 1, 1_000, 10_000])
def test_nesting_past_the_bound_is_refused_naming_it(depth: int) -> None:
    """Before: accepted up to ~300 (then read back as a crash), RecursionError past it."""
    with pytest.raises(SerializationError, match=f"{MAX_NESTED} tuples, sets or frozensets"):
        codec.dumps(_tuples(depth))
    with pytest.raises(SerializationError, match=str(MAX_NESTED)):
        codec.dumps({"rows": [_tuples(depth)]})


def _inside(value: object, levels: int) -> object:
    for _ in range(levels):
        value = [value]
    return value


def test_depth_is_bounded_the_same_way_on_both_sides() -> None:
    """msgpack 1.2 packs a list 1,025 levels deep that it cannot unpack: stored, then
    garbage on every read. Now a document of MAX_DEPTH levels round-trips and one
    more is refused; the items of a tuple are a document of their own."""
    deepest = _plain(MAX_DEPTH)
    tuple_at_the_bottom = _inside((_plain(MAX_DEPTH - 1),), MAX_DEPTH - 1)
    tuples_in_tuples = _inside(((_plain(MAX_DEPTH - 2),),), MAX_DEPTH - 1)
    for value in (deepest, [*_plain(MAX_DEPTH - 1), (1,)], tuple_at_the_bottom, tuples_in_tuples):
        assert identical(codec.loads(codec.dumps(value)), value)
    for value in (
        _plain(MAX_DEPTH + 1),
        [deepest],
        [(1,), deepest],
        _inside((deepest,), 1),
        _inside(((deepest,),), 1),
        [{(1,): 2}, deepest],
    ):
        with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH} levels"):
            codec.dumps(value)
    with pytest.raises(DeserializationError):
        codec.loads(b"M" + b"\x91" * 1_100 + b"\x00")


def test_a_value_that_contains_itself_is_refused() -> None:
    looped: list[object] = []
    looped.append(looped)
    through_a_tuple: list[object] = []
    through_a_tuple.append((through_a_tuple,))
    for value in (looped, through_a_tuple):
        with pytest.raises(SerializationError, match="contains itself"):
            codec.dumps(value)


hostile_documents = st.recursive(
    st.builds(
        msgpack.packb, st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=3), st.none())
    ),
    lambda inner: st.one_of(
        st.builds(
            lambda code, doc: msgpack.packb([msgpack.ExtType(code, doc)]),
            st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 127]),
            inner,
        ),
        st.builds(lambda doc: b"\x91" + doc, inner),
        st.builds(lambda doc: b"\x81\xc0" + doc, inner),
    ),
    max_leaves=30,
)


@given(st.binary(max_size=300))
def test_random_bytes_decode_or_are_garbage(data: bytes) -> None:
    _decoded_or_refused(data)
    _decoded_or_refused(b"M" + data)


@given(hostile_documents)
def test_hostile_nestings_decode_or_are_garbage(document: bytes) -> None:
    _decoded_or_refused(b"M" + document)


@given(values, st.data())
def test_mutated_payloads_decode_or_are_garbage(value: object, data: st.DataObject) -> None:
    payload = bytearray(codec.dumps(value))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        at = data.draw(st.integers(0, len(payload)), label="at")
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "repeat"]), label="kind")
        if kind == "flip" and at < len(payload):
            payload[at] ^= data.draw(st.integers(1, 255), label="bits")
        elif kind == "cut":
            del payload[at : at + data.draw(st.integers(1, 8), label="length")]
        elif kind == "insert":
            payload[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        else:
            payload[at:at] = payload[at : at + data.draw(st.integers(1, 16), label="length")]
    _decoded_or_refused(bytes(payload))


# -- a value never changes type or meaning (issue 17, case 9) -----------------


def _berlin_from_file() -> zoneinfo.ZoneInfo | None:
    """Europe/Berlin as `ZoneInfo.from_file` makes it: the same rules, no key."""
    for root in zoneinfo.TZPATH:
        path = Path(root, "Europe", "Berlin")
        if path.is_file():
            return zoneinfo.ZoneInfo.from_file(io.BytesIO(path.read_bytes()))
    try:
        data = resources.files("tzdata.zoneinfo").joinpath("Europe/Berlin").read_bytes()
    except ModuleNotFoundError:
        return None
    return zoneinfo.ZoneInfo.from_file(io.BytesIO(data))


class _Fixed(dt.tzinfo):
    """A zone as pytz's and dateutil's are: not a ZoneInfo, not a datetime.timezone."""

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: dt.datetime | None) -> str:
        return "CET"


_FOREIGN_ZONES: list[dt.tzinfo] = [_Fixed(), dt.timezone(dt.timedelta(hours=1), "CET")]
if (_from_file := _berlin_from_file()) is not None:
    _FOREIGN_ZONES.append(_from_file)
try:
    from dateutil import tz as dateutil_tz
except ImportError:  # pragma: no cover - dateutil comes with the test tools
    pass
else:
    _FOREIGN_ZONES += [dateutil_tz.gettz("Europe/Berlin"), dateutil_tz.tzutc()]
    _FOREIGN_ZONES += [dateutil_tz.tzoffset(None, 3600)]


zones = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.integers(-86399, 86399).map(lambda seconds: dt.timezone(dt.timedelta(seconds=seconds))),
    st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"]).map(
        zoneinfo.ZoneInfo
    ),
)
keys = st.one_of(  # hashable: dict keys and members of sets
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),  # NaN is not equal to itself: no key finds it again
    st.text(max_size=8),
    st.binary(max_size=8),
    st.decimals(allow_nan=False),
    st.builds(
        lambda d, z, f: d.replace(tzinfo=z, fold=f), st.datetimes(), zones, st.sampled_from([0, 1])
    ),
    st.builds(
        lambda t, z, f: t.replace(tzinfo=z, fold=f), st.times(), zones, st.sampled_from([0, 1])
    ),
    st.dates(),
    st.timedeltas(),
    st.uuids(),
)
accepted = st.recursive(
    st.one_of(keys, st.floats(), st.decimals(), st.integers(min_value=2**63)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(keys, st.tuples(keys, keys)), inner, max_size=3),
        st.frozensets(st.one_of(keys, st.frozensets(keys, max_size=2)), max_size=3),
        st.sets(st.one_of(keys, st.tuples(keys)), max_size=3),
    ),
    max_leaves=10,
)


@given(accepted)
def test_every_accepted_value_comes_back_the_same_all_the_way_down(value: object) -> None:
    assert identical(codec.loads(codec.dumps(value)), value)


class _Dict(dict[str, int]):
    pass


class _Level(enum.IntEnum):
    LOW = 1


class _Colour(enum.StrEnum):
    RED = "red"


class _Flag(enum.IntFlag):
    A = 1


class _Plain(enum.Enum):
    A = 1


def _subclass_of(base: type, *args: object) -> object:
    return type(f"My{base.__name__.title()}", (base,), {})(*args)


_Point = collections.namedtuple("_Point", "x y")

#: One of each kind of value `dumps` refuses (inside a container; bytearray is
#: refused only whole, see docs/serialization.md).
REFUSED_LEAVES: list[object] = [
    collections.OrderedDict(a=1),
    collections.defaultdict(list, a=[1]),
    collections.Counter("ab"),
    _Dict(a=1),
    _Point(1, 2),
    _Level.LOW,
    _Colour.RED,
    _Flag.A,
    _Plain.A,
    *(
        _subclass_of(base, *args)
        for base, args in [
            (list, ([1],)),
            (tuple, ((1,),)),
            (set, ({1},)),
            (frozenset, ({1},)),
            (str, ("s",)),
            (bytes, (b"b",)),
            (int, (1,)),
            (float, (1.5,)),
            (decimal.Decimal, ("1.5",)),
            (dt.date, (2026, 3, 29)),
            (dt.datetime, (2026, 3, 29)),
            (dt.timedelta, (1,)),
        ]
    ),
    type("MyUUID", (uuid.UUID,), {})(int=1),
    1j,
    fractions.Fraction(1, 3),
    range(2),
    object(),
    *(dt.datetime(2026, 3, 29, 1, 30, tzinfo=zone) for zone in _FOREIGN_ZONES),
    *(dt.time(1, 30, tzinfo=zone) for zone in _FOREIGN_ZONES),
    dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))),  # read as UTC
]
refused_leaves = st.sampled_from(REFUSED_LEAVES)


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _around(value: object, how: int) -> object:
    """*value* inside an accepted container: the *how*-th way."""
    if how == 0:
        return [1, value]
    if how == 1:
        return ("a", value)
    if how == 2:
        return {"k": value}
    if not _hashable(value):
        return [value]
    if how == 3:
        return {value: 1}
    return frozenset({value}) if how == 4 else {"\0", value}  # "\0" equals no leaf


refused = st.recursive(  # a refused leaf anywhere in accepted containers
    refused_leaves,
    lambda inner: st.builds(_around, inner, st.integers(0, 5)),
    max_leaves=4,
)


@given(refused)
def test_every_refused_value_is_refused_at_dumps(value: object) -> None:
    with pytest.raises(SerializationError):
        codec.dumps(value)


@pytest.mark.parametrize(
    ("value", "advice"),
    [
        (collections.OrderedDict(a=1), "back as a plain dict; convert it to dict"),
        (collections.defaultdict(list), "back as a plain dict"),
        (collections.Counter("ab"), "back as a plain dict"),
        (_Point(1, 2), "back as a plain tuple"),
        (_Level.LOW, "back as a plain int"),
        (_Colour.RED, "back as a plain str"),
        (bytearray(b"x"), "cache bytes"),
        (memoryview(b"x"), "cache bytes"),
        (dt.datetime(2026, 3, 29, tzinfo=_Fixed()), "zoneinfo.ZoneInfo"),
        (dt.time(tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")), "'CET'"),
        (_subclass_of(dt.datetime, 2026, 3, 29), "plain datetime.datetime"),
    ],
)
def test_refusals_say_what_to_do(value: object, advice: str) -> None:
    with pytest.raises(SerializationError, match=advice):
        codec.dumps({"rows": [value]} if type(value) not in (bytearray, memoryview) else value)


def test_a_zone_from_a_file_is_refused_not_stored_as_garbage() -> None:
    """It was stored, and every read counted it as garbage (no key to load it by)."""
    zone = _berlin_from_file()
    if zone is None:  # pragma: no cover - the tz database ships with the OS or tzdata
        pytest.skip("no tz database")
    with pytest.raises(SerializationError, match=r"ZoneInfo\.from_file"):
        codec.dumps(dt.datetime(2026, 10, 25, 2, 30, tzinfo=zone))


def test_a_named_offset_and_a_foreign_zone_are_refused() -> None:
    """They came back as an unnamed offset: `%Z` said `UTC+01:00`, not `CET`, and a
    dateutil/pytz zone lost its DST rules (an hour off across the change)."""
    for zone in _FOREIGN_ZONES:
        with pytest.raises(SerializationError):
            codec.dumps(dt.datetime(2026, 3, 29, 1, 30, tzinfo=zone))
    utc_by_name = dt.timezone(dt.timedelta(0), "UTC")  # named as UTC is named: nothing lost
    assert codec.loads(codec.dumps(dt.datetime(2026, 1, 1, tzinfo=utc_by_name))).tzname() == "UTC"


def test_the_wire_format_is_unchanged() -> None:
    """Instances before and after these changes share entries: same bytes both ways."""
    ext = msgpack.ExtType
    value = {"t": (1, (2,)), "s": {3}, "k": {(4,): frozenset({5})}, "d": dt.timedelta(1)}
    expected = {
        "t": ext(6, msgpack.packb([1, ext(6, msgpack.packb([2]))])),
        "s": ext(7, msgpack.packb([3])),
        "k": {ext(6, msgpack.packb([4])): ext(8, msgpack.packb([5]))},
        "d": ext(10, msgpack.packb([1, 0, 0])),
    }
    assert codec.dumps(value) == b"M" + msgpack.packb(expected)
    assert identical(codec.loads(b"M" + msgpack.packb(expected)), value)


def test_the_fold_of_a_time_survives_and_other_times_keep_their_bytes() -> None:
    second = dt.time(2, 30, fold=1)  # the second 02:30 of the night clocks go back
    assert codec.loads(codec.dumps(second)).fold == 1
    assert codec.dumps(dt.time(2, 30)) == b"M" + msgpack.packb(msgpack.ExtType(4, b"02:30:00|"))
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    assert identical(
        codec.loads(codec.dumps(second.replace(tzinfo=berlin))), second.replace(tzinfo=berlin)
    )


def test_whole_values_msgpack_would_convert_are_refused() -> None:
    for value in (bytearray(b"x"), memoryview(b"x"), msgpack.ExtType(6, b"\x90")):
        with pytest.raises(SerializationError):
            codec.dumps(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("\ud800", "surrogates not allowed", id="lone-surrogate"),
        pytest.param(10**4300, "4300 digits", id="int-of-4300-digits"),
    ],
)
def test_a_scalar_msgpack_refuses_is_refused_with_its_own_reason(
    value: object, reason: str
) -> None:
    """A scalar at the top that msgpack cannot encode went to the walk for
    nested tuples, which expects a container: a `KeyError` reached the caller
    of `set` (or an "'int' object is not iterable"), not the documented error."""
    with pytest.raises(SerializationError, match=reason):
        MsgpackSerializer().dumps(value)


async def test_a_set_of_a_value_that_cannot_be_serialized_raises_and_changes_nothing() -> None:
    from twotier import TwoTierCache

    async with TwoTierCache(namespace=f"s{uuid.uuid4().hex[:8]}") as cache:
        await cache.set("k", "v")
        with pytest.raises(SerializationError):
            await cache.set("k", "\ud800")
        assert await cache.get("k") == "v"
