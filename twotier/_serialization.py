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
from typing import Any, Protocol, runtime_checkable

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


def _tz_name(tz: dt.tzinfo | None) -> str:
    """An IANA zone keeps its name (DST rules survive); fixed offsets go in the ISO text."""
    return tz.key if isinstance(tz, zoneinfo.ZoneInfo) else ""


class MsgpackSerializer:
    """msgpack with exact round trips for the types an ERP returns.

    `Decimal`, `datetime` (naive, fixed offset or IANA zone), `date`, `time`,
    `timedelta`, `UUID`, `tuple`, `set`, `frozenset`, `bytes` and integers of any
    size come back as the same type with the same value. Anything else raises
    `SerializationError`: silently turning an object into a dict would hand
    callers a different type on a hit than on a miss.
    """

    TAG = b"M"

    def dumps(self, value: Any) -> bytes:
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
        if isinstance(obj, dict):  # OrderedDict, defaultdict: compare equal to a dict
            return dict(obj)
        if kind is decimal.Decimal:
            return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
        if kind is dt.datetime:
            text = f"{obj.isoformat()}|{_tz_name(obj.tzinfo)}|{obj.fold}"
            return msgpack.ExtType(_EXT_DATETIME, text.encode())
        if kind is dt.date:
            return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
        if kind is dt.time:
            return msgpack.ExtType(_EXT_TIME, f"{obj.isoformat()}|{_tz_name(obj.tzinfo)}".encode())
        if kind is dt.timedelta:
            return msgpack.ExtType(
                _EXT_TIMEDELTA, self._pack([obj.days, obj.seconds, obj.microseconds])
            )
        if kind is uuid.UUID:
            return msgpack.ExtType(_EXT_UUID, obj.bytes)
        if kind is int:  # only reached when it does not fit in 64 bits
            return msgpack.ExtType(_EXT_BIGINT, str(obj).encode())
        raise SerializationError(
            f"cannot serialize {kind.__module__}.{kind.__qualname__} with msgpack; "
            "return plain data (dict, list, str, numbers, Decimal, datetime, UUID …) "
            "or configure PickleSerializer(secret=...)"
        )

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
            iso, zone = data.decode().split("|")
            t = dt.time.fromisoformat(iso)
            return t.replace(tzinfo=zoneinfo.ZoneInfo(zone)) if zone else t
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
