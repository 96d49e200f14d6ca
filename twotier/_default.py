"""The module-level default cache, configured from `TWOTIER_*` environment variables.

The drop-in for `from enhanced_cache_manager import cache`: memory-only unless
`TWOTIER_REDIS_URL` is set, started lazily on first use.

Every constructor parameter of `TwoTierCache` whose type is a plain value (str,
int, float or bool, optionally `| None`) is settable as `TWOTIER_<NAME>`, e.g.
`redis_timeout` as `TWOTIER_REDIS_TIMEOUT`. The list, the types and the defaults
are read from the constructor's signature when the cache is built, so a
parameter added to the constructor is settable without touching this module.
Parameters that take objects (`serializer`, `clock`, `observers`) are not settable. An unset
or empty variable leaves the parameter at the constructor's default. The table
is in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping

from ._cache import TwoTierCache
from ._exceptions import ConfigurationError, InvalidTTLError

PREFIX = "TWOTIER_"

#: `TWOTIER_*` names that are not constructor parameters but must not be
#: reported as misspellings. docs/serialization.md tells users to keep their
#: pickle secret in TWOTIER_PICKLE_SECRET and read it in their own code; the
#: package itself reads no other variable.
OTHER_KNOWN_VARIABLES = frozenset({"TWOTIER_PICKLE_SECRET"})

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

#: The annotations a variable can be parsed into, by their name in source, for
#: annotations `typing.get_type_hints` cannot resolve (see `_hints`).
_PLAIN_NAMES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


def _parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    # float() accepts "nan", and NaN passes every `<= 0` check downstream while
    # meaning nothing as a timeout or size. (inf is left to the constructor: it
    # is a meaningful "never" for some parameters and rejected by others.)
    if math.isnan(value):
        raise ValueError("expected a number")
    return value


_PARSERS: dict[type, Callable[[str], object]] = {
    bool: _parse_bool,
    int: _parse_int,
    float: _parse_float,
    str: str,
}


def _plain_type(hint: object) -> type | None:
    """`int` for `int` or `int | None` (likewise str, float, bool); None for anything else."""
    if isinstance(hint, str):  # an annotation left unresolved by `_hints`
        members: list[object] = [
            _PLAIN_NAMES.get(part.strip()) for part in hint.split("|") if part.strip() != "None"
        ]
    elif typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    else:
        members = [hint]
    if len(members) == 1 and isinstance(members[0], type) and members[0] in _PARSERS:
        return members[0]
    return None


def _hints(init: Callable[..., object]) -> dict[str, object]:
    # `from __future__ import annotations` makes the annotations strings;
    # get_type_hints resolves them in the constructor's module. If one of them
    # names something imported only for type checking, resolving fails as a
    # whole: fall back to the raw strings, which `_plain_type` reads, rather
    # than making `import twotier` fail.
    try:
        return typing.get_type_hints(init)
    except (NameError, TypeError, SyntaxError):
        return dict(getattr(init, "__annotations__", {}))


def variable_for(parameter: str) -> str:
    """`redis_timeout` → `TWOTIER_REDIS_TIMEOUT`."""
    return PREFIX + parameter.upper()


def settable_parameters(cls: type[TwoTierCache] = TwoTierCache) -> dict[str, type]:
    """Constructor parameters settable from the environment: parameter name → value type.

    Read from the signature on every call (the default instance is built once,
    at import), so the constructor is the one source of names, types and defaults.
    """
    hints = _hints(cls.__init__)
    settable: dict[str, type] = {}
    for name, param in inspect.signature(cls).parameters.items():
        # Only parameters that can be passed by keyword; *args/**kwargs are not settings.
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        kind = _plain_type(hints.get(name, param.annotation))
        if kind is not None:
            settable[name] = kind
    return settable


def _check_names(env: Mapping[str, str], known: set[str]) -> None:
    problems = []
    for variable in sorted(v for v in env if v.startswith(PREFIX) and v not in known):
        # Compare without the shared prefix: with it, nearly any TWOTIER_X would
        # be "close" to some known name.
        suffixes = [k.removeprefix(PREFIX) for k in sorted(known)]
        close = difflib.get_close_matches(variable.removeprefix(PREFIX), suffixes, n=1)
        if close:
            problems.append(
                f"unknown environment variable {variable}; did you mean {PREFIX}{close[0]}?"
            )
        else:
            problems.append(
                f"unknown environment variable {variable}; known: {', '.join(sorted(known))}"
            )
    if problems:
        raise ConfigurationError("; ".join(problems))


def cache_from_env(env: Mapping[str, str]) -> TwoTierCache:
    """A `TwoTierCache` from the `TWOTIER_*` variables in `env`, not started (it starts on use).

    Raises `ConfigurationError` naming the variable for an unknown `TWOTIER_*`
    name (with the closest known one), a value that does not parse, or a value
    the constructor rejects.
    """
    settable = settable_parameters(TwoTierCache)
    _check_names(env, {variable_for(p) for p in settable} | OTHER_KNOWN_VARIABLES)
    kwargs: dict[str, object] = {}
    for parameter, kind in settable.items():
        variable = variable_for(parameter)
        raw = env.get(variable)
        if raw is None or raw == "":
            continue  # left to the constructor's own default: one source of truth
        try:
            kwargs[parameter] = _PARSERS[kind](raw)
        except ValueError as exc:
            raise ConfigurationError(
                f"environment variable {variable}={raw!r} is invalid: {exc}"
            ) from exc
    try:
        return TwoTierCache(**kwargs)  # type: ignore[arg-type]
    except (ConfigurationError, InvalidTTLError) as exc:
        # The constructor names the parameter; say which variable set it.
        # InvalidTTLError (default_ttl) becomes a ConfigurationError like every
        # other bad variable.
        named = [variable_for(p) for p in kwargs if p in str(exc)] or [
            variable_for(p) for p in kwargs
        ]
        if not named:
            raise
        raise ConfigurationError(f"{exc} (set by {', '.join(named)})") from exc
