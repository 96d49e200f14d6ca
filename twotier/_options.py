"""The constructor's options, checked before anything is built: a bad one is a
`ConfigurationError` that names it, and nothing has changed."""

from __future__ import annotations

from ._exceptions import ConfigurationError


def check_namespace(namespace: object) -> str:
    """The prefix of every key and channel: it must not reach into another's slot or key."""
    if (
        not isinstance(namespace, str)
        or not namespace
        or not namespace.isprintable()
        or any(c in namespace for c in " {}:")
    ):
        raise ConfigurationError(
            f"namespace must be a non-empty printable str without spaces, ':' or braces, "
            f"got {namespace!r}"
        )
    return namespace


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ConfigurationError(f"{name} must be {what}, got {value!r}")
    return value


def check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    return float(value)
