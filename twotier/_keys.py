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

from ._exceptions import InvalidKeyError, InvalidTTLError, TemplateError

#: Keys longer than this are replaced by a readable head plus a SHA-256 digest.
MAX_KEY_LENGTH = 200
#: Tags are names chosen by the programmer; a longer one is a mistake, not data.
MAX_TAG_LENGTH = 200
#: A TTL longer than a year is almost certainly a unit mistake (ms for s).
MAX_TTL_SECONDS = 365 * 24 * 3600

# Plain scalars whose repr is stable across processes and Python runs.
_SCALARS: frozenset[type] = frozenset({int, str, float, bool, type(None)})


def validate_key(key: object) -> str:
    """Return *key* (hashed when long) or raise `InvalidKeyError`."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"cache key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("cache key must not be empty")
    if not key.isprintable():
        raise InvalidKeyError(f"cache key contains non-printable characters: {key[:60]!r}")
    if len(key) > MAX_KEY_LENGTH:
        return hash_long_key(key)
    return key


def hash_long_key(key: str) -> str:
    """Replace a long key by its first 64 characters and its SHA-256 digest.

    Hashing instead of truncating keeps two long keys with a common prefix apart.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[:64]}#{digest}"


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
    such a key would differ per process and never hit.
    """
    kind = type(value)
    if kind in _SCALARS:
        return repr(value)
    if kind is tuple or kind is list:
        seq: Sequence[object] = value  # type: ignore[assignment]  # narrowed by `kind`
        return "[" + ",".join(encode_argument(item) for item in seq) + "]"
    if isinstance(value, Mapping):
        items = sorted((encode_argument(k), encode_argument(v)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(encode_argument(item) for item in value)) + "}"
    text = repr(value)
    if " at 0x" in text and text.startswith("<"):
        raise InvalidKeyError(
            f"cannot build a stable cache key from an argument of type {kind.__name__} "
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


class KeyPlan:
    """Builds the cache key and tags of one decorated function's calls."""

    __slots__ = (
        "_fast",
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
    ) -> None:
        self._signature = inspect.signature(func)
        self._name = f"{func.__module__}.{func.__qualname__}"
        params = list(self._signature.parameters.values())
        names = [p.name for p in params]
        self._prefix = self._name
        self._open = self._name + "("
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

    @property
    def name(self) -> str:
        return self._name

    @property
    def has_tag_templates(self) -> bool:
        return any(t.fields for t in self._tags)

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self._fast and not kwargs and len(args) == self._n_positional:
            # The hit path. The repr of a plain scalar is printable (str's repr
            # escapes control characters), so such keys need only a length check.
            if len(args) == 1 and type(args[0]) in _SCALARS:  # the commonest shape: one id
                key = self._open + repr(args[0]) + ")"
                return key if len(key) <= MAX_KEY_LENGTH else hash_long_key(key)
            for arg in args:
                if type(arg) not in _SCALARS:
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
            text = ",".join(encode_argument(v) for v in arguments.values())
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
