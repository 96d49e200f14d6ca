"""Serializers: msgpack by default (never executes data), signed pickle on request.

Every payload starts with one byte naming its serializer, so an instance never
feeds bytes written by another serializer into the wrong decoder: it sees a
foreign tag, and the cache counts the entry as garbage and deletes it.

The msgpack serializer keeps two promises (docs/serialization.md):

* a value comes back with the same type all the way down, or `dumps` refuses it
  (DESIGN §5; issue 17, case 9);
* `loads` is safe for any bytes: a value or `DeserializationError`, in time and
  memory bounded by the payload's size, on a C stack that does not grow with
  the data (issue 17, case 7: 200 nested tuples, an 830-byte entry anyone can
  write into Redis, crashed every instance that read it).

Thread-safety: nothing here holds state between calls; every call builds its
own packer or unpacker, so any thread may use one serializer at any time.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import pickle
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

import msgpack  # type: ignore[import-untyped]  # ships no type information

from ._exceptions import ConfigurationError, DeserializationError, SerializationError


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. `loads` raises `DeserializationError`."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# msgpack extension codes; the numbers are part of the wire format, never reuse one.
# A tuple, set or frozenset is an extension whose data is the msgpack of a list
# of its items: a document inside its parent's document.
_EXT_DECIMAL = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_EXT_TIME = 4
_EXT_UUID = 5
_EXT_TUPLE = 6
_EXT_SET = 7
_EXT_FROZENSET = 8
_EXT_BIGINT = 9
_EXT_TIMEDELTA = 10


def _packable_depth() -> int:
    """Levels msgpack's packer takes in a list of one (see `_pack_document`):
    1,024 since msgpack 1.2; 511 before, and in its pure-Python fallback."""
    value: Any = None
    for _ in range(1023):
        value = [value]
    try:
        msgpack.packb([value])
    except (ValueError, RecursionError):
        return 511
    return 1024


#: Levels a document may have: the value, and the items of each tuple, set or
#: frozenset in it (a document of its own, whose levels count from its list of
#: items). A scalar or an empty container is one level; each list, dict or
#: list of items around it adds one. msgpack packs no deeper document, and
#: reads none deeper than 1,024 levels (its unpacker's stack).
MAX_DEPTH: Final = _packable_depth()
#: Tuples, sets and frozensets one inside another on any path from the top
#: (lists and dicts between them do not count). Reading copies a document's
#: bytes once per level it is nested: the bound keeps that under 100 times the
#: payload, and code that recurses through nested tuples (`is_immutable` in
#: _local.py) far from Python's recursion limit.
MAX_NESTED: Final = 100


class _Containers(Exception):
    """A hook met tuples, sets or frozensets nested deeper than it packs or
    unpacks in one pass: the value takes the walk."""


def _zone(tz: dt.tzinfo | None) -> str:
    """The zone field of a datetime or time: an IANA key, or "" when the ISO text
    (naive, or a fixed offset) says everything.

    Anything else is refused: pytz and dateutil zones would come back as the
    offset of one instant (an hour off across DST), a named offset without its
    name, and a `ZoneInfo.from_file` zone has no key to find it by on the way
    back (issue 17, case 9).
    """
    if tz is None or tz is dt.UTC:
        return ""
    kind = type(tz)
    if kind is zoneinfo.ZoneInfo:
        key: str | None = tz.key  # type: ignore[attr-defined]
        if key is None:
            raise SerializationError(
                "cannot serialize a datetime whose zone came from ZoneInfo.from_file(): it has "
                "no key to load it by when read back; use zoneinfo.ZoneInfo(key)"
            )
        if "|" in key:  # the field separator; no IANA key has one
            raise SerializationError(f"cannot serialize the zone {key!r}: '|' in its key")
        return key
    if kind is dt.timezone:
        offset: dt.timedelta = tz.utcoffset(None)  # type: ignore[assignment]
        if tz.tzname(None) != dt.timezone(offset).tzname(None):
            raise SerializationError(
                f"cannot serialize the fixed offset named {tz.tzname(None)!r}: it would come "
                "back unnamed; use datetime.timezone(offset) or a zoneinfo.ZoneInfo"
            )
        if offset.microseconds:  # Python 3.11 reads "+00:00:00.000001" back as UTC
            raise SerializationError(
                f"cannot serialize the fixed offset {offset}: its fraction of a second "
                "does not survive the ISO text; no zone has one"
            )
        return ""
    raise SerializationError(
        f"cannot serialize a datetime or time in a {kind.__module__}.{kind.__qualname__} zone "
        "with msgpack: it would come back as a fixed offset (wrong across DST); use "
        "zoneinfo.ZoneInfo(name), or datetime.timezone for a fixed offset"
    )


#: The types msgpack carries exactly. A subclass of one is refused by name (an
#: `OrderedDict` would come back as a `dict`, an `IntEnum` as an `int`).
_EXACT: Final[frozenset[type]] = frozenset(
    {dict, list, tuple, set, frozenset, str, bytes, int, float, decimal.Decimal}
    | {dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID}
)

#: Types msgpack's packer writes as `bytes` or decodes by itself, without asking
#: `default`: refused as a whole value (checked before packing); see
#: docs/serialization.md on why they are not caught inside containers.
_CONVERTED: Final = frozenset({bytearray, memoryview, msgpack.ExtType})


def _refusal(kind: type) -> SerializationError:
    name = f"{kind.__module__}.{kind.__qualname__}"
    if kind in (bytearray, memoryview):
        return SerializationError(
            f"cannot serialize {name} with msgpack: it would come back as bytes; cache bytes(value)"
        )
    base = next((base for base in kind.__mro__[1:] if base in _EXACT), None)
    if base is not None:
        plain = f"{base.__module__}.{base.__qualname__}".removeprefix("builtins.")
        return SerializationError(
            f"cannot serialize {name} with msgpack: it would come back as a plain {plain}; "
            f"convert it to {plain} first, or configure PickleSerializer(secret=...)"
        )
    return SerializationError(
        f"cannot serialize {name} with msgpack; "
        "return plain data (dict, list, str, numbers, Decimal, datetime, UUID …) "
        "or configure PickleSerializer(secret=...)"
    )


def _encode_datetime(value: dt.datetime) -> msgpack.ExtType:
    text = f"{value.isoformat()}|{_zone(value.tzinfo)}|{value.fold}"
    return msgpack.ExtType(_EXT_DATETIME, text.encode())


def _encode_time(value: dt.time) -> msgpack.ExtType:
    text = f"{value.isoformat()}|{_zone(value.tzinfo)}"
    # fold=1 (the second 01:30 of a night the clocks go back) once came back 0:
    # it is written only then, so other times keep their bytes.
    return msgpack.ExtType(_EXT_TIME, (text + "|1" if value.fold else text).encode())


def _encode_timedelta(value: dt.timedelta) -> msgpack.ExtType:
    # Three ints: the packer nested here never nests another.
    items = msgpack.packb([value.days, value.seconds, value.microseconds])
    return msgpack.ExtType(_EXT_TIMEDELTA, items)


def _pack_document(value: Any, default: Callable[[Any], Any]) -> bytes:
    # In a list of one, cut off after: msgpack 1.2 packs one level deeper than
    # it unpacks (1,025 against 1,024), and the list takes that level.
    packed: bytes = msgpack.Packer(default=default, strict_types=True).pack([value])
    return packed[1:]


#: The scalars msgpack cannot write itself, by exact type (a subclass is refused).
_ENCODERS: Final[dict[type, Callable[[Any], msgpack.ExtType]]] = {
    decimal.Decimal: lambda value: msgpack.ExtType(_EXT_DECIMAL, str(value).encode()),
    dt.datetime: _encode_datetime,
    dt.date: lambda value: msgpack.ExtType(_EXT_DATE, value.isoformat().encode()),
    dt.time: _encode_time,
    dt.timedelta: _encode_timedelta,
    uuid.UUID: lambda value: msgpack.ExtType(_EXT_UUID, value.bytes),
    int: lambda value: msgpack.ExtType(_EXT_BIGINT, str(value).encode()),  # beyond 64 bits
}
_CONTAINER_CODES: Final[dict[type, int]] = {
    tuple: _EXT_TUPLE,
    set: _EXT_SET,
    frozenset: _EXT_FROZENSET,
}


#: Tuples, sets and frozensets one inside another that the hooks below pack or
#: unpack in one pass (tuples of tuples, sets of tuples...); a value nested
#: deeper takes the walk. Each level adds an unpacker (a 40 KiB context) to the
#: C stack, so at most three are ever there, as for a tuple holding a timedelta
#: before this bound existed.
_IN_ONE_PASS: Final = 2


def _default_with(room: int) -> Callable[[Any], Any]:
    """msgpack's `default` for a packer inside *room* more tuples may be packed.

    Called for every type the packer does not write itself, subclasses included
    (`strict_types`). A tuple, set or frozenset is packed by a second packer,
    whose `default` has one less room; with none left, `_Containers` is raised
    and `dumps` takes the walk."""
    inside = _default_with(room - 1) if room else None

    def default(obj: Any) -> Any:
        kind = type(obj)
        encode = _ENCODERS.get(kind)
        if encode is not None:
            return encode(obj)
        code = _CONTAINER_CODES.get(kind)
        if code is None:
            raise _refusal(kind)
        if inside is None:
            raise _Containers
        return msgpack.ExtType(code, _pack_document(list(obj), inside))

    return default


_default: Final = _default_with(_IN_ONE_PASS)


def _decode_datetime(data: bytes) -> dt.datetime:
    iso, zone, fold = data.decode().split("|")
    value = dt.datetime.fromisoformat(iso)
    if zone:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(zone))
    return value.replace(fold=int(fold))


def _decode_time(data: bytes) -> dt.time:
    iso, zone, *folded = data.decode().split("|")
    value = dt.time.fromisoformat(iso)
    if zone:
        value = value.replace(tzinfo=zoneinfo.ZoneInfo(zone))
    if folded not in ([], ["1"]):
        raise DeserializationError("malformed time")
    return value.replace(fold=1) if folded else value


def _decode_timedelta(data: bytes) -> dt.timedelta:
    # With msgpack's own ext_hook the unpacker nested here decodes no extension,
    # so it never nests another.
    parts = msgpack.unpackb(data)
    if type(parts) is not list or len(parts) != 3 or any(type(n) is not int for n in parts):
        raise DeserializationError("malformed timedelta")
    return dt.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    _EXT_DECIMAL: lambda data: decimal.Decimal(data.decode()),
    _EXT_DATETIME: _decode_datetime,
    _EXT_DATE: lambda data: dt.date.fromisoformat(data.decode()),
    _EXT_TIME: _decode_time,
    _EXT_TIMEDELTA: _decode_timedelta,
    _EXT_UUID: lambda data: uuid.UUID(bytes=data),
    _EXT_BIGINT: lambda data: int(data.decode()),
}
_BUILDERS: Final[dict[int, Callable[[list[Any]], Any]]] = {
    _EXT_TUPLE: tuple,
    _EXT_SET: set,
    _EXT_FROZENSET: frozenset,
}


def _ext_hook_with(room: int) -> Callable[[int, bytes], Any]:
    """msgpack's `ext_hook` for an unpacker under which *room* more may run.

    Called while the unpacker runs. The items of a tuple, set or frozenset, and
    the fields of a timedelta, are a document of their own, decoded here by a
    second unpacker; with no room left for it, `_Containers` is raised and
    `loads` takes the walk."""
    inside = _ext_hook_with(room - 1) if room else None

    def ext_hook(code: int, data: bytes) -> Any:
        decode = _DECODERS.get(code)
        if decode is not None and (room or code != _EXT_TIMEDELTA):
            return decode(data)
        build = _BUILDERS.get(code)
        if build is None and decode is None:
            raise DeserializationError(f"unknown msgpack extension type {code}")
        if build is None or inside is None:
            raise _Containers
        items = msgpack.unpackb(data, ext_hook=inside, strict_map_key=False)
        if type(items) is not list:
            raise DeserializationError("the items of a tuple, set or frozenset are no list")
        return build(items)

    return ext_hook


_ext_hook: Final = _ext_hook_with(_IN_ONE_PASS)


class MsgpackSerializer:
    """msgpack with exact round trips for the types an ERP returns.

    `Decimal`, `datetime` and `time` (naive, unnamed fixed offset or
    `zoneinfo.ZoneInfo` with a key, fold kept), `date`, `timedelta`, `UUID`,
    `tuple`, `set`, `frozenset`, `bytes` and integers of any size come back as
    the same type with the same value. Anything else, subclasses of these
    included, raises `SerializationError`: turning an `OrderedDict` into a dict
    or a pytz zone into an offset would hand callers a different type or
    meaning on a hit than on a miss (DESIGN §5; the table is in
    docs/serialization.md). So does a value deeper than `MAX_DEPTH` levels or
    with more than `MAX_NESTED` tuples, sets or frozensets one inside another.
    """

    TAG = b"M"

    def dumps(self, value: Any) -> bytes:
        kind = type(value)
        if kind in _CONVERTED:
            raise _refusal(kind)
        try:
            try:
                return self.TAG + _pack_document(value, _default)
            except (_Containers, ValueError, RecursionError):
                # A tuple in a tuple (or set...); or too deep, a cycle, a string
                # msgpack cannot encode: the walk packs the first, names the others.
                if kind not in _CONTAINERS:
                    raise  # a scalar msgpack refuses: nothing to walk, its own reason
                return self.TAG + _pack_walked(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise SerializationError(f"cannot serialize value with msgpack: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        if data[:1] != self.TAG:
            raise DeserializationError("payload was not written by the msgpack serializer")
        body = data[1:]
        try:
            try:
                return msgpack.unpackb(body, ext_hook=_ext_hook, strict_map_key=False)
            except _Containers:
                return _unpack_walked(body)
        except DeserializationError:
            raise
        except Exception as exc:  # msgpack raises many types on corrupt input
            raise DeserializationError(f"corrupt msgpack payload: {exc}") from exc


# -- the walked paths: tuples, sets or frozensets inside one another -------
#
# msgpack hands an extension to `default` or `ext_hook` while its packer or
# unpacker runs. Packing or unpacking a tuple's items from there nests a packer
# or an unpacker per level on the C stack, with a 40 KiB context for each
# unpacker: 200 levels crashed the process, 2,000 raised RecursionError
# (issue 17, case 7). The hooks above nest _IN_ONE_PASS levels at most; past
# that, these walks keep stacks of their own and run msgpack on one document at
# a time (and a timedelta's fields: two unpackers at most).

_CONTAINERS: Final = frozenset({list, dict, tuple, set, frozenset})


def _top_down(value: Any) -> list[Any]:
    """Every container in *value*, each before those inside it, with the bounds
    checked: a value that contains itself is infinitely deep."""
    order: list[Any] = []
    stack: list[tuple[Any, int, int]] = [(value, 1, 0)]  # node, its level, tuples above
    while stack:
        node, level, nested = stack.pop()
        kind = type(node)
        if kind in _CONTAINER_CODES:
            nested += 1
            if nested > MAX_NESTED:
                raise SerializationError(
                    f"cannot serialize value with msgpack: more than {MAX_NESTED} tuples, sets "
                    "or frozensets one inside another (each is a msgpack document of its own), "
                    "or it contains itself"
                )
            level = 1  # its items are a document of their own: level 1 is their list
        items = [*node, *node.values()] if kind is dict else node
        if items and level >= MAX_DEPTH:
            raise SerializationError(
                f"cannot serialize value with msgpack: it nests deeper than {MAX_DEPTH} levels, "
                "or contains itself"
            )
        order.append(node)
        stack += [(item, level + 1, nested) for item in items if type(item) in _CONTAINERS]
    return order


def _pack_walked(value: Any) -> bytes:
    """msgpack for *value*, each tuple, set and frozenset packed on its own, bottom-up."""
    packable: dict[int, Any] = {}  # id of a container → what is packed in its place
    for node in reversed(_top_down(value)):  # the containers inside a node come first
        if id(node) in packable:
            continue  # the same object again (a value may share one)
        kind = type(node)
        if kind is dict:
            if any(id(item) in packable for item in (*node, *node.values())):
                packable[id(node)] = {
                    packable.get(id(key), key): packable.get(id(item), item)
                    for key, item in node.items()
                }
        elif kind is list:
            if any(id(item) in packable for item in node):
                packable[id(node)] = [packable.get(id(item), item) for item in node]
        else:
            items = [packable.get(id(item), item) for item in node]
            packable[id(node)] = msgpack.ExtType(
                _CONTAINER_CODES[kind], _pack_document(items, _default)
            )
    return _pack_document(packable.get(id(value), value), _default)


class _Pending:
    """A tuple, set or frozenset met in a document: its items are a document of
    their own, decoded after this one, and `value` is built once they are."""

    __slots__ = ("build", "data", "items", "value")

    def __init__(self, build: Callable[[list[Any]], Any], data: bytes) -> None:
        self.build = build
        self.data = data
        self.items: list[Any] = []
        self.value: Any = None


_DECODED: Final = frozenset({list, dict, _Pending})


def _later(code: int, data: bytes) -> Any:
    """The walk's `ext_hook`: a tuple, set or frozenset waits; scalars decode now."""
    build = _BUILDERS.get(code)
    return _ext_hook(code, data) if build is None else _Pending(build, data)


def _document(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_later, strict_map_key=False)


def _unpack_walked(body: bytes) -> Any:
    """Decode *body* one document at a time: pending ones top-down, values bottom-up.
    msgpack bounds the depth of each document; this, how many nest."""
    root = _document(body)
    # Pre-order, each with whether it holds a pending item: reversed, every
    # pending is built before what holds it.
    order: list[tuple[Any, bool]] = []
    stack: list[tuple[Any, int]] = [(root, 0)]  # node, tuples above it
    while stack:
        node, nested = stack.pop()
        if type(node) is _Pending:
            nested += 1
            if nested > MAX_NESTED:
                raise DeserializationError(
                    f"more than {MAX_NESTED} tuples, sets or frozensets one inside another"
                )
            items = node.items = _document(node.data)
            if type(items) is not list:
                raise DeserializationError("the items of a tuple, set or frozenset are no list")
        else:
            items = [*node, *node.values()] if type(node) is dict else node
        kinds = set(map(type, items))  # in C: most lists and dicts hold no container
        holds = _Pending in kinds
        if holds or type(node) is _Pending:
            order.append((node, holds))
        if not kinds.isdisjoint(_DECODED):
            stack += [(item, nested) for item in items if type(item) in _DECODED]
    for node, holds in reversed(order):
        if holds:
            _settle(node)
        if type(node) is _Pending:
            node.value = node.build(node.items)
    return root.value if type(root) is _Pending else root


def _settle(node: Any) -> None:
    """Put the values of *node*'s pending items in their places (built already)."""
    if type(node) is dict:
        pairs = [(_settled(key), _settled(item)) for key, item in node.items()]
        node.clear()  # the same dict (keys may change: a tuple as a key), so
        node.update(pairs)  # whatever holds it needs no change
    else:
        items = node.items if type(node) is _Pending else node
        items[:] = [item.value if type(item) is _Pending else item for item in items]


def _settled(item: Any) -> Any:
    return item.value if type(item) is _Pending else item


class PickleSerializer:
    """pickle, signed with HMAC-SHA256; an unsigned or tampered payload is refused.

    Only for values msgpack cannot carry. The signature is checked before a
    single byte reaches `pickle.loads`, so data written by anyone without the
    secret is never executed.
    """

    TAG = b"P"
    _MAC_SIZE = hashlib.sha256().digest_size

    def __init__(self, secret: bytes | str) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(key, bytes) or len(key) < 16:
            raise ConfigurationError("PickleSerializer needs a secret of at least 16 bytes")
        self._key = key

    def dumps(self, value: Any) -> bytes:
        try:
            body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # pickle raises many types for unpicklable objects
            raise SerializationError(f"cannot pickle value: {exc}") from exc
        return self.TAG + hmac.digest(self._key, body, "sha256") + body

    def loads(self, data: bytes) -> Any:
        if data[:1] != self.TAG:
            raise DeserializationError("payload was not written by the pickle serializer")
        mac, body = data[1 : 1 + self._MAC_SIZE], data[1 + self._MAC_SIZE :]
        if not hmac.compare_digest(mac, hmac.digest(self._key, body, "sha256")):
            raise DeserializationError("pickle payload failed its signature check")
        try:
            return pickle.loads(body)  # noqa: S301  # signed by our own secret above
        except Exception as exc:
            raise DeserializationError(f"signed pickle payload does not load: {exc}") from exc
