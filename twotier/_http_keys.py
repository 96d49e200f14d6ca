"""Keys of HTTP-cached endpoints and of `twotier.fastapi.cached` functions.

A key is a readable prefix (the function) and the parameters' canonical texts
(`_keys.encode_argument`: typed, injective, refusing what has no stable text).
Values that may identify a caller — dependency values, headers, cookies — are
never written out: their texts go into one SHA-256 digest, so a user object or a
token taken as a header never appears in a Redis key name (issue 19, item 4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ._exceptions import ConfigurationError, InvalidKeyError
from ._http_params import Analysis
from ._keys import Template, encode_argument

KeySource = str | Callable[..., str] | None


def render(name: str, value: object) -> str:
    """The canonical text of one parameter's value, or a ConfigurationError that
    names the parameter and the fix."""
    try:
        return encode_argument(value, name)
    except InvalidKeyError as exc:
        raise ConfigurationError(
            f"{exc}. A value without a stable text cannot key a shared cache entry: if "
            f"{name!r} does not change the answer, pass ignore=[{name!r}]; if it does, make "
            "it a value that renders (an id, a dataclass, a pydantic model), or pass key="
        ) from None


def digest(parts: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, text in parts:
        for item in (name, text):
            data = item.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()[:32]


class KeyBuilder:
    """Builds one decorated function's keys from its bound arguments."""

    def __init__(
        self, prefix: str, analysis: Analysis, user_key: KeySource, parameters: list[str]
    ) -> None:
        self.prefix = prefix
        self.analysis = analysis
        self._template: Template | None = None
        self._callable: Callable[..., str] | None = None
        if isinstance(user_key, str):
            self._template = Template.compile(user_key, parameters, "key template", prefix)
        elif user_key is not None:
            self._callable = user_key

    @property
    def spec(self) -> str:
        """How keys are built, for people (the strategy page)."""
        if self._template is not None:
            return self._template.text
        if self._callable is not None:
            return f"{getattr(self._callable, '__qualname__', 'callable')}(…)"
        return f"{self.prefix}({','.join(self.analysis.keyed)})"

    def key(
        self,
        arguments: Mapping[str, Any],
        extra: tuple[tuple[str, str], ...] = (),
        route: str = "",
        readable: frozenset[str] | None = None,
    ) -> str:
        """The key of one call. *extra* holds (name, text) pairs from the request
        (the URL path, declared headers and cookies), always hashed; *route* is
        written out after the prefix; *readable*, when given, names the only
        parameters whose texts may be written out (an HTTP endpoint's integer
        path parameters), the others being hashed too."""
        prefix = f"{self.prefix}[{route}]" if route else self.prefix
        if self._template is not None:
            own = self._template.render(arguments)
            return f"{prefix}#{digest([('key', own), *extra])}"
        if self._callable is not None:
            own = self._callable(**arguments)
            if not isinstance(own, str):
                raise InvalidKeyError(f"key= of {self.prefix} must return a str, not {own!r}")
            return f"{prefix}#{digest([('key', own), *extra])}"
        shown: list[str] = []
        secret = list(extra)
        hashed = self.analysis.hashed
        for name in self.analysis.keyed:
            text = render(name, arguments[name])
            visible = name in readable if readable is not None else name not in hashed
            if visible:
                shown.append(f"{name}={text}" if readable is not None else text)
            else:
                secret.append((name, text))
        key = f"{prefix}({','.join(shown)})"
        return f"{key}#{digest(secret)}" if secret else key
