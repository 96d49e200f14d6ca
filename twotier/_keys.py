"""Keys and tags: validation, templates, and the per-function key plan.

A key plan is computed once, at decoration time, so the hit path does no
`inspect.signature` work: for the common call shape (all parameters passed
positionally, no keywords) the key is one `repr` per argument and a join.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import inspect
import math
import string
import sys
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from ._exceptions import ConfigurationError, InvalidKeyError, InvalidTTLError, TemplateError

#: Keys longer than this are replaced by their hashed form (see `validate_key`).
MAX_KEY_LENGTH = 200
#: The hashed form: the first MAX_KEY_LENGTH characters, "#", 64 hex digits.
HASHED_KEY_LENGTH = MAX_KEY_LENGTH + 1 + 64
#: Tags are names chosen by the programmer; a longer one is a mistake, not data.
MAX_TAG_LENGTH = 200
#: A TTL longer than a year is almost certainly a unit mistake (ms for s).
MAX_TTL_SECONDS = 365 * 24 * 3600
#: Arguments nested deeper than this are refused: the encoder recurses once per
#: level, and must fail with InvalidKeyError well before Python's recursion limit.
MAX_ARGUMENT_DEPTH = 100

# Plain scalars whose repr is stable across processes and Python runs.
SCALARS: frozenset[type] = frozenset({int, str, float, bool, type(None)})
_HEX_DIGITS = frozenset("0123456789abcdef")


def validate_key(key: object) -> str:
    """Return *key*, or its hashed form when it is long; or raise `InvalidKeyError`.

    Why a literal key can never name a long key's entry (issue 7, item 10):
    a key of at most MAX_KEY_LENGTH characters is used as it is, and a longer
    one is replaced by `hash_long_key(key)`, which is exactly HASHED_KEY_LENGTH
    (> MAX_KEY_LENGTH) characters long. So every key this returns is either a
    literal of length <= MAX_KEY_LENGTH or a hashed form of length
    HASHED_KEY_LENGTH, and no literal can equal a hashed form; two hashed forms
    are equal only if the SHA-256 digests of two different keys are.

    A hashed form given here again is returned as it is: validation is
    idempotent, so `cache.get(fn.key(...))` and `fn.invalidate(...)` reach a
    long key's entry. That gives no one a new way in: a caller who can compute
    a key's hashed form knows the key, and could pass the key itself.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"cache key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("cache key must not be empty")
    if not key.isprintable():
        raise InvalidKeyError(f"cache key contains non-printable characters: {key[:60]!r}")
    if len(key) <= MAX_KEY_LENGTH:
        return key
    if _is_hashed(key):
        return key  # already validated and hashed (see above)
    return hash_long_key(key)


def hash_long_key(key: str) -> str:
    """The hashed form of a key longer than MAX_KEY_LENGTH.

    Its first MAX_KEY_LENGTH characters (readable in redis-cli), "#", and the
    SHA-256 digest of the whole key: hashing instead of truncating keeps two
    long keys with a common prefix apart, and the result is longer than any
    literal key, so it cannot collide with one (see `validate_key`).
    """
    if len(key) <= MAX_KEY_LENGTH:
        # The short result could equal a literal key: that is the collision we avoid.
        raise ValueError(f"only keys longer than {MAX_KEY_LENGTH} characters are hashed")
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[:MAX_KEY_LENGTH]}#{digest}"


def _is_hashed(key: str) -> bool:
    return (
        len(key) == HASHED_KEY_LENGTH
        and key[MAX_KEY_LENGTH] == "#"
        and _HEX_DIGITS.issuperset(key[MAX_KEY_LENGTH + 1 :])
    )


def validate_tag(tag: object) -> str:
    if not isinstance(tag, str):
        raise InvalidKeyError(f"tag must be a str, not {type(tag).__name__}")
    if not tag:
        raise InvalidKeyError("tag must not be empty")
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidKeyError(f"tag is longer than {MAX_TAG_LENGTH} characters: {tag[:60]!r}…")
    if not tag.isprintable():
        raise InvalidKeyError(f"tag contains non-printable characters: {tag!r}")
    return tag


def validate_tags(tags: Iterable[object]) -> tuple[str, ...]:
    if isinstance(tags, str):
        # A bare string would silently become one tag per character.
        raise InvalidKeyError(f"tags must be a list of strings, not the string {tags!r}")
    return tuple(dict.fromkeys(validate_tag(tag) for tag in tags))


def validate_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidTTLError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise InvalidTTLError(f"ttl must be positive and finite, got {ttl!r}")
    if ttl > MAX_TTL_SECONDS:
        raise InvalidTTLError(f"ttl {ttl!r} s is longer than a year; is it in milliseconds?")
    return float(ttl)


# --- argument encoding -------------------------------------------------------
#
# Issue 17, case 8: default keys were built from `repr()`, so a dataclass or
# pydantic field declared `repr=False` vanished from the key (tenant 2 was
# served tenant 1's revenue), `[1]` and `(1,)` shared a key, and so did `{}` and
# `set()`. DESIGN §5: default keys never merge two arguments that compare
# different. So an argument is rendered structurally, from the types below
# only, each in a text that names its type; anything else is refused.
#
# The rendering is injective: two values share a text only if they have the
# same types all the way down and equal contents (the property test in
# tests/test_keys.py checks it against such an equality). Scalars are their repr, which
# tells the types apart by its syntax (`1`, `True`, `1.0`, `'1'`, `b'1'`,
# `Decimal('1')`, `UUID('…')`, `datetime.date(…)`); containers use Python's
# brackets with the tuple's `(x,)` and `set()`/`frozenset(…)` spelt out;
# dataclasses, pydantic models and enum members carry their qualified type
# name. Sets and dicts are sorted by the text of their items, so equal values
# give one text in every process (never `hash()` order, never `id()`).

#: Exact types whose repr is canonical: equal values of one type have one repr,
#: in every process and Python run. float included: repr is the shortest text
#: that round-trips, `-0.0` keeps its sign, and every NaN reads `nan` (a NaN
#: equals nothing, not even itself, so all NaNs share one key rather than none).
_REPR_TYPES: frozenset[type] = SCALARS | {bytes, Decimal, UUID, datetime.date, datetime.timedelta}
#: The marker of a key with any argument that is not a plain scalar (see
#: `KeyPlan`): such keys were built from `repr()` before issue 17, and an
#: entry an older version wrote under `f([1])` for the call `f((1,))` must not
#: be read by the call `f([1])` (a rolling deploy shares one Redis).
STRUCTURED_MARK = "@2"
#: Exact types whose repr holds a tzinfo's repr, which `_time` checks first.
_TIMES: frozenset[type] = frozenset({datetime.datetime, datetime.time})


class _Refusal(Exception):
    """An argument without a canonical text; `where` is filled in as it unwinds."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.where: list[str] = []  # innermost first

    def error(self, name: str | None) -> InvalidKeyError:
        where = "".join(reversed(self.where))
        if name is None:
            subject = f"an argument{f' (at {where})' if where else ''}"
            advice = "pass key= to cached()"
        else:
            subject = f"argument {name!r}{f' (at {name}{where})' if where else ''}"
            advice = f"pass key= to cached(), or ignore=[{name!r}] if it does not change the result"
        return InvalidKeyError(f"cannot build a cache key from {subject}: {self.what}; {advice}")


_SUPPORTED = (
    "default keys take int, float, bool, str, bytes, None, Decimal, UUID, date, time, "
    "datetime, timedelta, Enum members, tuple, list, dict, set, frozenset, dataclasses "
    "and pydantic models made of these"
)


def encode_argument(value: object, name: str | None = None) -> str:
    """The canonical, type-tagged text of one argument value.

    Two values get the same text only if they have the same types all the way
    down and equal contents (floats by their repr, so `0.0` and `-0.0` differ).
    A value of another type, one that contains itself, or one nested deeper
    than MAX_ARGUMENT_DEPTH is refused with `InvalidKeyError` naming *name*.
    """
    try:
        return _encode(value, [])
    except _Refusal as refusal:
        raise refusal.error(name) from None


def _encode(value: object, path: list[int]) -> str:
    """Encode *value*; *path* holds the ids of the containers it is inside of."""
    kind = type(value)
    if kind in _REPR_TYPES:
        return repr(value)
    render = _CONTAINERS.get(kind)
    if render is not None:
        _enter(value, path)
        text = render(value, path)
        path.pop()  # siblings may hold the same object: that is sharing, not a cycle
        return text
    return _encode_other(value, path)


def _enter(container: object, path: list[int]) -> None:
    if id(container) in path:
        raise _Refusal(f"it is a {type(container).__name__} that contains itself")
    if len(path) >= MAX_ARGUMENT_DEPTH:
        raise _Refusal(f"it is nested deeper than {MAX_ARGUMENT_DEPTH} levels")
    path.append(id(container))


def _items(items: Iterable[object], path: list[int]) -> list[str]:
    out: list[str] = []
    try:
        for item in items:
            out.append(_encode(item, path))
    except _Refusal as refusal:
        refusal.where.append(f"[{len(out)}]")
        raise
    return out


def _set_items(items: Iterable[object], path: list[int]) -> str:
    try:
        return ",".join(sorted([_encode(item, path) for item in items]))
    except _Refusal as refusal:
        refusal.where.append("{…}")  # a set has no position to name
        raise


def _list(value: Any, path: list[int]) -> str:
    return "[" + ",".join(_items(value, path)) + "]"


def _tuple(value: Any, path: list[int]) -> str:
    items = _items(value, path)
    return "(" + items[0] + ",)" if len(items) == 1 else "(" + ",".join(items) + ")"


def _set(value: Any, path: list[int]) -> str:
    return "{" + _set_items(value, path) + "}" if value else "set()"


def _frozenset(value: Any, path: list[int]) -> str:
    return "frozenset({" + _set_items(value, path) + "})" if value else "frozenset()"


def _dict(value: Any, path: list[int]) -> str:
    items = []
    for key, item in value.items():
        try:
            text = _encode(key, path)
        except _Refusal as refusal:
            refusal.where.append("[<a key>]")
            raise
        try:
            items.append((text, _encode(item, path)))
        except _Refusal as refusal:
            refusal.where.append(f"[{text}]")
            raise
    # Sorted by the key's text (unique per key, so the values never decide):
    # dicts that compare equal whatever their insertion order share one key.
    items.sort()
    return "{" + ",".join([f"{k}:{v}" for k, v in items]) + "}"


_CONTAINERS: dict[type, Callable[[Any, list[int]], str]] = {
    list: _list,
    tuple: _tuple,
    dict: _dict,
    set: _set,
    frozenset: _frozenset,
}


def _encode_other(value: object, path: list[int]) -> str:
    """Times, enum members, dataclasses and pydantic models; anything else is refused."""
    kind = type(value)
    if isinstance(value, (datetime.datetime, datetime.time)) and kind in _TIMES:
        return _time(value)
    if isinstance(value, Enum):
        # Its type and name (`app.Colour.RED`): its repr `<Colour.RED: 1>` names
        # neither the module nor, for two enums of one name, the type.
        if kind.__members__.get(value.name) is value:  # type: ignore[attr-defined]  # an Enum
            return f"{_type_name(kind)}.{value.name}"
        # A Flag's combination (`Perm.R|W`) is no member: its value names it.
        _enter(value, path)
        text = f"{_type_name(kind)}({_encode(value.value, path)})"
        path.pop()
        return text
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Every field, `repr=False` and `compare=False` ones too: a field left
        # out of the key merges calls that differ in it (issue 17, case 8).
        names = [field.name for field in dataclasses.fields(value)]
        return _fields(value, names, (), path)
    model = _pydantic_model()
    if model is not None and isinstance(value, model):
        # The attributes themselves, not `model_dump()`: a dump leaves out
        # `Field(exclude=True)` and runs the model's serializers, which may
        # mask a field; and it turns nested models into dicts, so `A(x=1)` and
        # `B(x=1)` in a union field would read alike.
        names = list(kind.model_fields)  # type: ignore[attr-defined]  # a pydantic model
        # pydantic's `==` compares extra fields and private attributes too.
        extra = sorted((getattr(value, "__pydantic_extra__", None) or {}).items())
        private = sorted((getattr(value, "__pydantic_private__", None) or {}).items())
        return _fields(value, names, [*extra, *private], path)
    raise _Refusal(f"a {_type_name(kind)} has no canonical text ({_SUPPORTED})")


def _fields(
    value: object, names: list[str], more: Iterable[tuple[str, object]], path: list[int]
) -> str:
    _enter(value, path)
    parts = []
    for name in names:
        try:
            item = getattr(value, name)
        except AttributeError:
            raise _Refusal(f"its field {name!r} is not set") from None
        parts.append((name, item))
    parts.extend(more)
    texts = []
    for name, item in parts:
        try:
            texts.append(f"{name}={_encode(item, path)}")
        except _Refusal as refusal:
            refusal.where.append(f".{name}")
            raise
    path.pop()
    return f"{_type_name(type(value))}({','.join(texts)})"


def _time(value: datetime.datetime | datetime.time) -> str:
    zone = value.tzinfo
    # A datetime's repr holds its tzinfo's repr. `timezone` (a fixed offset and
    # name) and `ZoneInfo` from a key have canonical reprs; other tzinfo types
    # (pytz, dateutil, `ZoneInfo.from_file`) have none that tells zones apart.
    if not (
        zone is None
        or type(zone) is datetime.timezone
        or (type(zone) is zoneinfo.ZoneInfo and zone.key is not None)
    ):
        raise _Refusal(
            f"its tzinfo, a {_type_name(type(zone))}, has no canonical text "
            "(datetime.timezone and zoneinfo.ZoneInfo(key) have)"
        )
    return repr(value)


def _type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _pydantic_model() -> type | None:
    """pydantic's BaseModel if pydantic is loaded, without importing it: an
    object cannot be a model unless its class, and so pydantic, was loaded."""
    module = sys.modules.get("pydantic.main")
    model = getattr(module, "BaseModel", None)
    return model if isinstance(model, type) else None


# --- templates ---------------------------------------------------------------


def template_fields(template: str) -> tuple[str, ...]:
    """The parameter names a ``str.format`` template refers to."""
    names = []
    for _literal, field, _spec, _conv in string.Formatter().parse(template):
        if field is None:
            continue
        name = field.split(".", 1)[0].split("[", 1)[0]
        if not name or name.isdigit():
            raise TemplateError(
                f"template {template!r} must name parameters, not positions ({{{field}}})"
            )
        names.append(name)
    return tuple(names)


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A tag or key template checked against a function's parameters."""

    text: str
    fields: tuple[str, ...]

    @classmethod
    def compile(cls, text: str, parameters: Iterable[str], what: str, func_name: str) -> Template:
        if not isinstance(text, str) or not text:
            raise TemplateError(f"{what} of {func_name} must be a non-empty str, got {text!r}")
        fields = template_fields(text)
        known = set(parameters)
        unknown = [name for name in fields if name not in known]
        if unknown:
            raise TemplateError(
                f"{what} {text!r} of {func_name} names unknown parameter(s) "
                f"{', '.join(unknown)}; known: {', '.join(sorted(known)) or '(none)'}"
            )
        return cls(text, fields)

    def render(self, arguments: Mapping[str, Any]) -> str:
        return self.text.format_map(arguments) if self.fields else self.text


# --- key plans ---------------------------------------------------------------

KeyFunction = Callable[..., str]


def _check_ignore(
    ignore: Iterable[str], names: list[str], key: object, func_name: str
) -> frozenset[str]:
    """The `ignore=` names, checked: a list of parameter names, and only with the default key."""
    if isinstance(ignore, str):
        # A bare string would be read as one name per character.
        raise ConfigurationError(f"ignore= of {func_name} must be a list of names, not {ignore!r}")
    ignored = list(ignore)
    if not ignored:
        return frozenset()
    bad = [name for name in ignored if not isinstance(name, str)]
    if bad:
        raise ConfigurationError(f"ignore= of {func_name} must name parameters, got {bad[0]!r}")
    unknown = [name for name in ignored if name not in names]
    if unknown:
        raise ConfigurationError(
            f"ignore= of {func_name} names unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(names) or '(none)'}"
        )
    if key is not None:
        raise ConfigurationError(
            f"ignore= of {func_name} shapes the default key; with key= the template or "
            "callable already chooses the arguments it uses"
        )
    return frozenset(ignored)


class KeyPlan:
    """Builds the cache key and tags of one decorated function's calls."""

    __slots__ = (
        "_fast",
        "_ignored",
        "_keep",
        "_kept_names",
        "_key",
        "_n_positional",
        "_name",
        "_names",
        "_open",
        "_plain",
        "_signature",
        "_structured_open",
        "_tags",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        key: str | KeyFunction | None,
        tags: Iterable[str],
        ignore: Iterable[str] = (),
    ) -> None:
        self._signature = inspect.signature(func)
        self._name = f"{func.__module__}.{func.__qualname__}"
        params = list(self._signature.parameters.values())
        names = [p.name for p in params]
        self._open = self._name + "("
        self._structured_open = self._name + STRUCTURED_MARK + "("
        self._ignored = _check_ignore(ignore, names, key, self._name)
        # The positions of the parameters that make up the default key.
        self._keep = tuple(i for i, name in enumerate(names) if name not in self._ignored)
        self._kept_names = tuple(names[i] for i in self._keep)
        # Fast path: every parameter is plain positional-or-keyword, so a call
        # with exactly that many positional arguments binds them in order.
        self._plain = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        self._fast = key is None and self._plain
        self._names = tuple(names)
        self._n_positional = len(params)
        self._key: Template | KeyFunction | None
        if key is None or callable(key):
            self._key = key
        else:
            self._key = Template.compile(key, names, "key template", self._name)
        if isinstance(tags, str):
            raise TemplateError(f"tags of {self._name} must be a list of strings, not {tags!r}")
        self._tags = tuple(Template.compile(t, names, "tag template", self._name) for t in tags)
        for template in self._tags:
            shared = [name for name in template.fields if name in self._ignored]
            if shared:
                # Two calls that differ only in an ignored argument share one key,
                # so the entry would carry whichever caller's tags loaded it last.
                raise TemplateError(
                    f"tag template {template.text!r} of {self._name} names "
                    f"{', '.join(shared)}, which ignore= leaves out of the key: calls that "
                    "differ only in it would share one entry; keep it in the key, or pass key="
                )

    @property
    def name(self) -> str:
        return self._name

    @property
    def ignored(self) -> frozenset[str]:
        """The parameters left out of the default key (`ignore=`)."""
        return self._ignored

    @property
    def key_spec(self) -> str:
        """How keys are built, for people (the strategy page): a template, or a shape."""
        if isinstance(self._key, Template):
            return self._key.text
        if self._key is not None:
            return f"{getattr(self._key, '__qualname__', 'callable')}(…)"
        kept = [self._names[i] for i in self._keep]
        return f"{self._name}({','.join(kept)})"

    @property
    def tag_templates(self) -> tuple[str, ...]:
        return tuple(t.text for t in self._tags)

    @property
    def one_argument_prefix(self) -> str | None:
        """The key's prefix when a call with one scalar argument makes the key
        `prefix + repr(arg) + ")"` (the decorator inlines that shape), else None."""
        if self._fast and self._n_positional == 1 and not self._ignored:
            return self._open
        return None

    @property
    def has_tag_templates(self) -> bool:
        return any(t.fields for t in self._tags)

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self._fast and not kwargs and len(args) == self._n_positional:
            if self._ignored:
                args = tuple([args[i] for i in self._keep])
            # The hit path. The repr of a plain scalar is printable (str's repr
            # escapes control characters), so such keys need only a length check.
            if len(args) == 1 and type(args[0]) in SCALARS:  # the commonest shape: one id
                key = self._open + repr(args[0]) + ")"
                return key if len(key) <= MAX_KEY_LENGTH else hash_long_key(key)
            for arg in args:
                if type(arg) not in SCALARS:
                    return self._structured_key(zip(self._kept_names, args, strict=True))
            key = self._open + ",".join([repr(arg) for arg in args]) + ")"
            return key if len(key) <= MAX_KEY_LENGTH else hash_long_key(key)
        return self._slow_key(self.bind(args, kwargs), args, kwargs)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._plain and not kwargs and len(args) == self._n_positional:
            return dict(zip(self._names, args, strict=True))  # 20× cheaper than Signature.bind
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def _slow_key(
        self, arguments: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        if self._key is None:
            ignored = self._ignored
            kept = [(k, v) for k, v in arguments.items() if k not in ignored]
            if all(type(v) in SCALARS for _, v in kept):
                return validate_key(self._open + ",".join([repr(v) for _, v in kept]) + ")")
            return self._structured_key(kept)
        if isinstance(self._key, Template):
            return validate_key(self._key.render(arguments))
        return validate_key(self._key(*args, **kwargs))

    def _structured_key(self, arguments: Iterable[tuple[str, Any]]) -> str:
        """The key of a call with an argument that is not a plain scalar: it
        carries STRUCTURED_MARK, so no key an older version built from `repr()`
        can name its entry (see there)."""
        text = ",".join([encode_argument(value, name) for name, value in arguments])
        return validate_key(f"{self._structured_open}{text})")

    def tags(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Render the tag templates; only called on a miss, never on an L1 hit."""
        if not self._tags:
            return ()
        arguments = self.bind(args, kwargs) if self.has_tag_templates else {}
        return validate_tags(t.render(arguments) for t in self._tags)
