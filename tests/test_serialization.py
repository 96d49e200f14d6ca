import datetime as dt
import decimal
import uuid
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twotier import DeserializationError, MsgpackSerializer, PickleSerializer, SerializationError

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


def _same(a: object, b: object) -> bool:
    """Equal and of the same type, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined]
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    if isinstance(a, dt.datetime):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold  # type: ignore[attr-defined]
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return a == b


@given(values)
def test_msgpack_round_trip_is_exact(value: object) -> None:
    assert _same(codec.loads(codec.dumps(value)), value)


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
    assert _same(codec.loads(codec.dumps(value)), value)


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
