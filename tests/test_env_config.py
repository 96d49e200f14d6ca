"""`cache_from_env`: every plain constructor parameter is a `TWOTIER_*` variable.

The constructor is observed through a wrapper around `TwoTierCache.__init__`
that records the keyword arguments it receives, then runs the real constructor
(so a value it rejects still fails). No server: nothing here starts a cache.
"""

from __future__ import annotations

import functools
import inspect
import subprocess
import sys
from typing import Any

import pytest

from twotier import ConfigurationError, TwoTierCache, _default, cache_from_env
from twotier._default import settable_parameters, variable_for
from twotier._types import Clock

#: Parameters that take objects, documented as not settable from the
#: environment. A new parameter that lands here instead of becoming settable
#: (an object type, or an annotation `_default` cannot read) fails
#: `test_only_object_parameters_are_not_settable`: decide, then update the docs.
NOT_SETTABLE = {"serializer", "clock", "observers"}


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keyword arguments the next `TwoTierCache(...)` receives."""
    seen: dict[str, Any] = {}
    real = TwoTierCache.__init__

    # functools.wraps keeps `__wrapped__` and the annotations, so the signature
    # and type hints `cache_from_env` reads are still the real constructor's.
    @functools.wraps(real)
    def capture(self: TwoTierCache, *args: Any, **kwargs: Any) -> None:
        assert not args, "cache_from_env passes keywords only"
        seen.clear()
        seen.update(kwargs)
        real(self, **kwargs)

    monkeypatch.setattr(TwoTierCache, "__init__", capture)
    return seen


def _other_value(name: str, kind: type, default: Any) -> tuple[str, Any]:
    """A valid non-default value for a parameter, as (environment text, parsed value)."""
    if kind is bool:
        return ("false", False) if default else ("true", True)
    if kind is int:
        value = (default or 1) * 2
        return str(value), value
    if kind is float:
        value = (default or 0.25) * 2 + 0.5
        return repr(value), value
    if name.endswith("url"):
        return "redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"  # never connected: lazy start
    return "erp", "erp"


def _defaults() -> dict[str, Any]:
    return {n: p.default for n, p in inspect.signature(TwoTierCache).parameters.items()}


def test_only_object_parameters_are_not_settable() -> None:
    parameters = set(inspect.signature(TwoTierCache).parameters)
    assert parameters - set(settable_parameters()) == NOT_SETTABLE


def test_settable_types_follow_the_annotations() -> None:
    settable = settable_parameters()
    # The parameters as of issue 7; the ones added since are covered by the loop below.
    assert settable["redis_url"] is str
    assert settable["namespace"] is str
    assert settable["default_ttl"] is float
    assert settable["l1_maxsize"] is int
    assert settable["copy_on_read"] is bool
    assert settable["redis_timeout"] is float
    defaults = _defaults()
    for name, kind in settable.items():
        default = defaults[name]
        assert default is None or type(default) in ({int, float} if kind is float else {kind})


def test_every_settable_parameter_round_trips(received: dict[str, Any]) -> None:
    defaults = _defaults()
    env, expected = {}, {}
    for name, kind in settable_parameters().items():
        text, value = _other_value(name, kind, defaults[name])
        assert value != defaults[name]
        env[variable_for(name)] = text
        expected[name] = value
    cache = cache_from_env(env)
    assert received == expected
    for name, value in received.items():
        assert type(value) is type(expected[name]), name  # 1 is not True, 2 is not 2.0
    assert (cache.redis_url, cache.namespace) == (expected["redis_url"], expected["namespace"])
    assert cache.default_ttl == expected["default_ttl"]
    assert cache.copy_on_read is expected["copy_on_read"]


@pytest.mark.parametrize("name", sorted(settable_parameters()))
def test_each_variable_sets_only_its_parameter(received: dict[str, Any], name: str) -> None:
    kind = settable_parameters()[name]
    text, value = _other_value(name, kind, _defaults()[name])
    cache_from_env({variable_for(name): text})
    assert received == {name: value}


def test_unset_and_empty_variables_leave_the_constructor_defaults(
    received: dict[str, Any],
) -> None:
    cache = cache_from_env({variable_for(name): "" for name in settable_parameters()})
    assert received == {}
    assert cache.redis_url is None
    assert cache.default_ttl == _defaults()["default_ttl"]
    cache_from_env({})
    assert received == {}


def test_the_cache_is_not_started() -> None:
    cache = cache_from_env({"TWOTIER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert cache._started is False  # starts on first use, so importing never connects


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_booleans_accept_the_usual_spellings(
    received: dict[str, Any], text: str, value: bool
) -> None:
    cache_from_env({"TWOTIER_COPY_ON_READ": text})
    assert received == {"copy_on_read": value}


@pytest.mark.parametrize("text", ["maybe", "2", "y", "enabled", "truee"])
def test_a_bad_boolean_names_the_variable_and_value(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        cache_from_env({"TWOTIER_COPY_ON_READ": text})
    assert f"TWOTIER_COPY_ON_READ={text!r}" in str(info.value)


def _numeric_variables() -> list[tuple[str, type]]:
    return [(n, k) for n, k in sorted(settable_parameters().items()) if k in (int, float)]


@pytest.mark.parametrize(("name", "kind"), _numeric_variables())
@pytest.mark.parametrize("text", ["five", "1.5.0", "nan", "true", "0x10"])
def test_a_bad_number_names_the_variable_and_value(name: str, kind: type, text: str) -> None:
    variable = variable_for(name)
    with pytest.raises(ConfigurationError) as info:
        cache_from_env({variable: text})
    assert f"{variable}={text!r}" in str(info.value)


@pytest.mark.parametrize(("name", "kind"), [nk for nk in _numeric_variables() if nk[1] is int])
def test_an_int_parameter_refuses_a_fraction(name: str, kind: type) -> None:
    variable = variable_for(name)
    with pytest.raises(ConfigurationError, match=variable):
        cache_from_env({variable: "1.5"})


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("TWOTIER_L1_MAXSIZE", "0"),
        ("TWOTIER_REDIS_TIMEOUT", "-1"),
        ("TWOTIER_DEFAULT_TTL", "-5"),  # InvalidTTLError in the constructor
        ("TWOTIER_DEFAULT_TTL", "inf"),
        ("TWOTIER_NAMESPACE", "a b"),
    ],
)
def test_a_value_the_constructor_rejects_names_the_variable(variable: str, text: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        cache_from_env({variable: text})


def test_a_misspelt_variable_names_the_closest_one() -> None:
    with pytest.raises(ConfigurationError) as info:
        cache_from_env({"TWOTIER_REDIS_TIMOUT": "0.2"})
    assert str(info.value) == (
        "unknown environment variable TWOTIER_REDIS_TIMOUT; did you mean TWOTIER_REDIS_TIMEOUT?"
    )


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("TWOTIER_NAMESPASE", "TWOTIER_NAMESPACE"),
        ("TWOTIER_L1_MAX_SIZE", "TWOTIER_L1_MAXSIZE"),
        ("TWOTIER_DEFAULTTTL", "TWOTIER_DEFAULT_TTL"),
        ("TWOTIER_REDISURL", "TWOTIER_REDIS_URL"),
        ("TWOTIER_PICKLE_SECRT", "TWOTIER_PICKLE_SECRET"),
    ],
)
def test_misspellings_point_at_the_intended_variable(typo: str, meant: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{typo}; did you mean {meant}\\?"):
        cache_from_env({typo: "1"})


def test_an_unknown_variable_with_nothing_close_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        cache_from_env({"TWOTIER_BANANA": "1"})
    message = str(info.value)
    assert message.startswith("unknown environment variable TWOTIER_BANANA; known: ")
    assert "TWOTIER_REDIS_URL" in message


def test_the_unknown_name_is_reported_before_any_bad_value() -> None:
    with pytest.raises(ConfigurationError, match="TWOTIER_MAX_STAEL"):
        cache_from_env({"TWOTIER_MAX_STAEL": "5", "TWOTIER_L1_MAXSIZE": "many"})


def test_other_known_variables_and_foreign_ones_are_accepted(received: dict[str, Any]) -> None:
    # TWOTIER_PICKLE_SECRET is read by user code (docs/serialization.md).
    cache_from_env(
        {
            "TWOTIER_PICKLE_SECRET": "s3cret",
            "TWOTIERX_FOO": "1",  # not the TWOTIER_ prefix
            "twotier_redis_timout": "1",  # nor lower case
            "PATH": "/usr/bin",
        }
    )
    assert received == {}


def test_a_parameter_added_to_the_constructor_becomes_settable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    class Grown(TwoTierCache):
        """The constructor after someone added parameters (and one not from the environment)."""

        def __init__(
            self,
            namespace: str = "twotier",
            *,
            compaction_budget: int = 8,
            drain_timeout: float | None = None,
            shadow_reads: bool = False,
            probe: Clock | None = None,
        ) -> None:
            seen.update(
                compaction_budget=compaction_budget,
                drain_timeout=drain_timeout,
                shadow_reads=shadow_reads,
            )
            super().__init__(namespace=namespace)

    monkeypatch.setattr(_default, "TwoTierCache", Grown)
    assert settable_parameters(Grown) == {
        "namespace": str,
        "compaction_budget": int,
        "drain_timeout": float,
        "shadow_reads": bool,
    }
    cache = cache_from_env(
        {
            "TWOTIER_COMPACTION_BUDGET": "16",
            "TWOTIER_DRAIN_TIMEOUT": "2.5",
            "TWOTIER_SHADOW_READS": "on",
        }
    )
    assert isinstance(cache, Grown)
    assert seen == {"compaction_budget": 16, "drain_timeout": 2.5, "shadow_reads": True}
    # Its defaults are the signature's, and a typo finds the new name.
    cache_from_env({})
    assert seen == {"compaction_budget": 8, "drain_timeout": None, "shadow_reads": False}
    with pytest.raises(ConfigurationError, match="did you mean TWOTIER_SHADOW_READS\\?"):
        cache_from_env({"TWOTIER_SHADOW_READ": "on"})
    with pytest.raises(ConfigurationError, match="unknown environment variable TWOTIER_PROBE"):
        cache_from_env({"TWOTIER_PROBE": "x"})  # the object parameter is not a variable


def test_an_annotation_that_does_not_resolve_is_read_from_its_text() -> None:
    # A name imported only under TYPE_CHECKING makes get_type_hints fail for the
    # whole signature; the plain parameters must stay settable, not break the import.
    class Hinted(TwoTierCache):
        def __init__(
            self,
            namespace: str = "twotier",
            *,
            budget: int | None = None,
            tracer: NotImportedAnywhere | None = None,  # type: ignore[name-defined]  # noqa: F821
        ) -> None:
            super().__init__(namespace=namespace)

    assert settable_parameters(Hinted) == {"namespace": str, "budget": int}


def test_a_misspelt_variable_fails_the_import() -> None:
    # The default instance is built at import: a typo in a deployment shows at start.
    result = subprocess.run(
        [sys.executable, "-c", "import twotier"],
        env={"TWOTIER_REDIS_TIMOUT": "0.2"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "did you mean TWOTIER_REDIS_TIMEOUT?" in result.stderr
