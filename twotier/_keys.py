"""Keys and tags: validation, templates, and the per-function key plan.

A key plan is computed once, at decoration time, so the hit path does no
`inspect.signature` work: for the common call shape (all parameters passed
positionally, no keywords) the key is one `repr` per argument and a join.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def encode_argument(value: object) -> str:
    """A stable, printable text for one argument value.

    Equal values give equal text in every process: dicts and sets are sorted,
    and objects whose repr is the default ``<… at 0x…>`` are refused, because
    such a key would differ per process and never hit. An argument that
    contains itself, or is nested deeper than MAX_ARGUMENT_DEPTH, is refused
    too: it has no finite text.
    """
    return _encode(value, [])


def _encode(value: object, path: list[int]) -> str:
    """Encode *value*; *path* holds the ids of the containers it is inside of."""
    kind = type(value)
    if kind in SCALARS:
        return repr(value)
    if kind is tuple or kind is list:
        _enter(value, path)
        seq: Sequence[object] = value  # type: ignore[assignment]  # narrowed by `kind`
        text = "[" + ",".join(_encode(item, path) for item in seq) + "]"
    elif isinstance(value, Mapping):
        _enter(value, path)
        items = sorted((_encode(k, path), _encode(v, path)) for k, v in value.items())
        text = "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    elif isinstance(value, (set, frozenset)):
        _enter(value, path)
        text = "{" + ",".join(sorted(_encode(item, path) for item in value)) + "}"
    else:
        return _encode_repr(value)
    path.pop()  # siblings may hold the same object: that is sharing, not a cycle
    return text


def _enter(container: object, path: list[int]) -> None:
    if id(container) in path:
        raise InvalidKeyError(
            f"cannot build a cache key from a {type(container).__name__} that contains "
            "itself; pass key= to cached()"
        )
    if len(path) >= MAX_ARGUMENT_DEPTH:
        raise InvalidKeyError(
            f"cannot build a cache key from an argument nested deeper than "
            f"{MAX_ARGUMENT_DEPTH} levels; pass key= to cached()"
        )
    path.append(id(container))


def _encode_repr(value: object) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a user type's repr recursing through its own nesting
        raise InvalidKeyError(
            f"cannot build a cache key from an argument of type {type(value).__name__}: "
            "its repr nests too deep; pass key= to cached()"
        ) from None
    if " at 0x" in text and text.startswith("<"):
        raise InvalidKeyError(
            f"cannot build a stable cache key from an argument of type {type(value).__name__} "
            "(its repr contains a memory address); pass key= to cached()"
        )
    return text


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


@dataclass(frozen=True, slots=True)
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
        "_key",
        "_n_positional",
        "_name",
        "_names",
        "_open",
        "_plain",
        "_prefix",
        "_signature",
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
        self._prefix = self._name
        self._open = self._name + "("
        self._ignored = _check_ignore(ignore, names, key, self._name)
        # The positions of the parameters that make up the default key.
        self._keep = tuple(i for i, name in enumerate(names) if name not in self._ignored)
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
                    return validate_key(f"{self._open}{','.join(map(encode_argument, args))})")
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
            text = ",".join(encode_argument(v) for k, v in arguments.items() if k not in ignored)
            return validate_key(f"{self._prefix}({text})")
        if isinstance(self._key, Template):
            return validate_key(self._key.render(arguments))
        return validate_key(self._key(*args, **kwargs))

    def tags(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Render the tag templates; only called on a miss, never on an L1 hit."""
        if not self._tags:
            return ()
        arguments = self.bind(args, kwargs) if self.has_tag_templates else {}
        return validate_tags(t.render(arguments) for t in self._tags)
