"""Serializers: msgpack by default (never executes data), signed pickle on request.

Every payload starts with one byte naming its serializer, so an instance never
feeds bytes written by another serializer into the wrong decoder: it sees a
foreign tag, and the cache counts the entry as garbage and deletes it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import pickle
import uuid
import zoneinfo
from typing import Any, Final, Protocol, runtime_checkable

import msgpack  # type: ignore[import-untyped]  # ships no type information

from ._exceptions import ConfigurationError, DeserializationError, SerializationError


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back. `loads` raises `DeserializationError`."""

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# msgpack extension codes; the numbers are part of the wire format, never reuse one.
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
        offset = tz.utcoffset(None)
        if tz.tzname(None) != dt.timezone(offset).tzname(None):  # type: ignore[arg-type]
            raise SerializationError(
                f"cannot serialize the fixed offset named {tz.tzname(None)!r}: it would come "
                "back unnamed; use datetime.timezone(offset) or a zoneinfo.ZoneInfo"
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


class MsgpackSerializer:
    """msgpack with exact round trips for the types an ERP returns.

    `Decimal`, `datetime` and `time` (naive, unnamed fixed offset or
    `zoneinfo.ZoneInfo` with a key, fold kept), `date`, `timedelta`, `UUID`,
    `tuple`, `set`, `frozenset`, `bytes` and integers of any size come back as
    the same type with the same value. Anything else, subclasses of these
    included, raises `SerializationError`: turning an `OrderedDict` into a dict
    or a pytz zone into an offset would hand callers a different type or
    meaning on a hit than on a miss (DESIGN §5; the table is in
    docs/serialization.md).
    """

    TAG = b"M"

    def dumps(self, value: Any) -> bytes:
        if type(value) in _CONVERTED:
            raise _refusal(type(value))
        try:
            return self.TAG + self._pack(value)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot serialize value with msgpack: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        if data[:1] != self.TAG:
            raise DeserializationError("payload was not written by the msgpack serializer")
        try:
            return msgpack.unpackb(
                data[1:], ext_hook=self._ext_hook, raw=False, strict_map_key=False
            )
        except Exception as exc:  # msgpack raises many types on corrupt input
            raise DeserializationError(f"corrupt msgpack payload: {exc}") from exc

    def _pack(self, value: Any) -> bytes:
        packed: bytes = msgpack.packb(
            value, default=self._default, use_bin_type=True, strict_types=True
        )
        return packed

    def _default(self, obj: Any) -> Any:
        # strict_types=True sends subclasses here too (e.g. bool is exact, but an
        # IntEnum is not); those are refused below unless listed.
        kind = type(obj)
        if kind is tuple:
            return msgpack.ExtType(_EXT_TUPLE, self._pack(list(obj)))
        if kind is set:
            return msgpack.ExtType(_EXT_SET, self._pack(list(obj)))
        if kind is frozenset:
            return msgpack.ExtType(_EXT_FROZENSET, self._pack(list(obj)))
        if kind is decimal.Decimal:
            return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
        if kind is dt.datetime:
            text = f"{obj.isoformat()}|{_zone(obj.tzinfo)}|{obj.fold}"
            return msgpack.ExtType(_EXT_DATETIME, text.encode())
        if kind is dt.date:
            return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
        if kind is dt.time:
            text = f"{obj.isoformat()}|{_zone(obj.tzinfo)}"
            # fold=1 (the second 01:30 of a night the clocks go back) once came
            # back 0: it is written only then, so other times keep their bytes.
            return msgpack.ExtType(_EXT_TIME, (text + "|1" if obj.fold else text).encode())
        if kind is dt.timedelta:
            return msgpack.ExtType(
                _EXT_TIMEDELTA, self._pack([obj.days, obj.seconds, obj.microseconds])
            )
        if kind is uuid.UUID:
            return msgpack.ExtType(_EXT_UUID, obj.bytes)
        if kind is int:  # only reached when it does not fit in 64 bits
            return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
        raise _refusal(kind)

    def _ext_hook(self, code: int, data: bytes) -> Any:
        unpack = self._unpack
        if code == _EXT_TUPLE:
            return tuple(unpack(data))
        if code == _EXT_SET:
            return set(unpack(data))
        if code == _EXT_FROZENSET:
            return frozenset(unpack(data))
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode())
        if code == _EXT_DATETIME:
            iso, zone, fold = data.decode().split("|")
            value = dt.datetime.fromisoformat(iso)
            if zone:
                value = value.replace(tzinfo=zoneinfo.ZoneInfo(zone))
            return value.replace(fold=int(fold))
        if code == _EXT_DATE:
            return dt.date.fromisoformat(data.decode())
        if code == _EXT_TIME:
            iso, zone, *folded = data.decode().split("|")
            t = dt.time.fromisoformat(iso)
            if zone:
                t = t.replace(tzinfo=zoneinfo.ZoneInfo(zone))
            if folded not in ([], ["1"]):
                raise DeserializationError("malformed time")
            return t.replace(fold=1) if folded else t
        if code == _EXT_TIMEDELTA:
            days, seconds, micros = unpack(data)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_BIGINT:
            return int(data.decode())
        raise DeserializationError(f"unknown msgpack extension type {code}")

    def _unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self._ext_hook, raw=False, strict_map_key=False)


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
