import asyncio
import collections
import dataclasses
import datetime as dt
import enum
import hashlib
import math
import os
import random
import subprocess
import sys
import uuid
import zoneinfo
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from twotier import InvalidKeyError, InvalidTTLError, TemplateError, TwoTierCache
from twotier._keys import (
    MAX_KEY_LENGTH,
    KeyPlan,
    encode_argument,
    hash_long_key,
    validate_key,
    validate_tags,
    validate_ttl,
)


async def articles(category: str, page: int = 1, *, lang: str = "de") -> list[str]:
    return []


def test_defaults_applied_and_keyword_order_irrelevant() -> None:
    plan = KeyPlan(articles, None, ())
    keys = {
        plan.key(("news",), {}),
        plan.key(("news", 1), {}),
        plan.key((), {"category": "news"}),
        plan.key((), {"page": 1, "category": "news", "lang": "de"}),
        plan.key((), {"lang": "de", "category": "news"}),
    }
    assert len(keys) == 1
    assert plan.key(("news", 2), {}) not in keys
    assert plan.key(("sport",), {}) not in keys


def test_fast_path_and_bound_path_agree() -> None:
    async def f(a: int, b: str) -> None: ...

    plan = KeyPlan(f, None, ())
    assert plan.key((1, "x"), {}) == plan.key((), {"b": "x", "a": 1})


@pytest.mark.parametrize(
    "arg",
    [
        *(7, -1, 10**40, 0.5, 0.0, -0.0, 1e16, float("inf"), float("-inf"), float("nan")),
        *(True, False, None, "news", 'it\'s "quoted"', "ü" * 10, "x" * (MAX_KEY_LENGTH + 1)),
    ],
)
def test_the_hit_path_builds_the_key_the_plan_builds(arg: object) -> None:
    """The decorator inlines the one-scalar-argument key on its hit path: the
    entry it stores must be the one `fn.key`, `fn.invalidate` and other
    instances' plans name (a long string's key is hashed the same way)."""

    async def main() -> None:
        cache = TwoTierCache()
        loads: list[object] = []

        @cache.cached(ttl=60)
        async def fn(x: object) -> str:
            loads.append(x)
            return f"v{len(loads)}"

        assert await fn(arg) == "v1"
        assert cache.local.get(fn.key(arg)) == "v1"  # stored under the plan's key
        assert cache.local.get(KeyPlan(fn.__wrapped__, None, ()).key((arg,), {})) == "v1"
        await fn.invalidate(arg)
        assert await fn(arg) == "v2"  # the invalidation named the same entry
        await cache.close()

    asyncio.run(main())


def test_unhashable_arguments_give_stable_keys() -> None:
    async def f(filters: dict[str, object], ids: list[int]) -> None: ...

    plan = KeyPlan(f, None, ())
    one = plan.key(({"b": [1, 2], "a": {3, 1}}, [1, 2]), {})
    two = plan.key(({"a": {1, 3}, "b": [1, 2]}, [1, 2]), {})
    assert one == two
    assert plan.key(({"a": 1}, [2, 1]), {}) != plan.key(({"a": 1}, [1, 2]), {})


def test_argument_without_stable_repr_is_refused() -> None:
    async def f(obj: object) -> None: ...

    with pytest.raises(InvalidKeyError, match="key="):
        KeyPlan(f, None, ()).key((object(),), {})


def test_long_keys_are_hashed_not_truncated() -> None:
    a, b = "x" * 500 + "a", "x" * 500 + "b"
    ka, kb = validate_key(a), validate_key(b)
    assert ka != kb
    assert ka.startswith("x" * 64)


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\tkey", "nul\x00", 42, None, b"bytes"])
def test_bad_keys_are_refused(bad: object) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(bad)


@pytest.mark.parametrize("bad", [[""], ["a\x1fb"], [1], ["x" * 201]])
def test_bad_tags_are_refused(bad: list[object]) -> None:
    with pytest.raises(InvalidKeyError):
        validate_tags(bad)


def test_a_bare_string_is_not_a_tag_list() -> None:
    with pytest.raises(InvalidKeyError, match="list"):
        validate_tags("articles")


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "300", 10**9])
def test_bad_ttls_are_refused(bad: object) -> None:
    with pytest.raises(InvalidTTLError):
        validate_ttl(bad)


def test_unknown_template_field_fails_at_decoration_time() -> None:
    cache = TwoTierCache()
    with pytest.raises(TemplateError, match="categroy"):

        @cache.cached(tags=["category:{categroy}"])
        async def by_category(category: str) -> list[str]:
            return []


def test_positional_template_fields_are_refused() -> None:
    cache = TwoTierCache()
    with pytest.raises(TemplateError, match="name parameters"):

        @cache.cached(key="item:{0}")
        async def item(id: int) -> int:
            return id


def test_tag_templates_render_with_bound_arguments() -> None:
    async def f(category: str, page: int = 3) -> None: ...

    plan = KeyPlan(f, "cat:{category}:{page}", ["articles", "category:{category}"])
    assert plan.tags(("news",), {}) == ("articles", "category:news")
    assert plan.key((), {"category": "news"}) == "cat:news:3"


def test_key_callable_overrides_the_default() -> None:
    async def f(a: int, b: int) -> None: ...

    plan = KeyPlan(f, lambda a, b: f"sum:{a + b}", ())
    assert plan.key((1, 2), {}) == plan.key((2,), {"b": 1}) == "sum:3"


# --- long keys cannot be poisoned by literal keys (issue 7, item 10) ----------


def _old_hashed_form(key: str) -> str:
    """What `hash_long_key` returned before issue 7: a valid 129-character literal key."""
    return key[:64] + "#" + hashlib.sha256(key.encode()).hexdigest()


def test_a_literal_key_cannot_stand_for_a_hashed_long_key() -> None:
    long_key = "user:" + "x" * 300
    crafted = _old_hashed_form(long_key)
    assert validate_key(crafted) == crafted  # an ordinary literal key…
    assert validate_key(long_key) != crafted  # …that no longer names the long key's entry


def test_hashed_keys_are_longer_than_any_literal_key() -> None:
    for length in (MAX_KEY_LENGTH + 1, 300, 10_000):
        key = "k" * length
        hashed = validate_key(key)
        assert len(hashed) > MAX_KEY_LENGTH
        assert hashed.startswith(key[:64])  # still readable in redis-cli
        assert hashlib.sha256(key.encode()).hexdigest() in hashed
    assert validate_key("k" * MAX_KEY_LENGTH) == "k" * MAX_KEY_LENGTH


def test_validation_is_idempotent_on_a_hashed_key() -> None:
    hashed = validate_key("x" * 500)
    assert validate_key(hashed) == hashed  # fn.key() output can be passed to get/delete
    with pytest.raises(ValueError, match="longer"):
        hash_long_key("short")  # its hashed form could equal a literal key


def test_a_templated_key_cannot_reach_a_long_default_key() -> None:
    async def f(name: str) -> None: ...

    default = KeyPlan(f, None, ())
    templated = KeyPlan(f, "{name}", ())
    long_key = default.key(("n" * 300,), {})
    assert templated.key((_old_hashed_form(f"{default.name}({'n' * 300!r})"),), {}) != long_key
    assert long_key == default.key((), {"name": "n" * 300})  # fast and bound paths agree


# --- self-referencing and very deep arguments (issue 7, item 11) -------------


def _self_list() -> object:
    a: list[object] = [1]
    a.append(a)
    return a


def _self_dict() -> object:
    d: dict[str, object] = {"a": 1}
    d["me"] = d
    return d


def _indirect_cycle() -> object:
    inner: list[object] = []
    outer = {"k": (1, inner)}
    inner.append(outer)
    return [outer]


@pytest.mark.parametrize("make", [_self_list, _self_dict, _indirect_cycle])
def test_a_self_referencing_argument_is_refused(make: Callable[[], object]) -> None:
    async def f(value: object, page: int = 1) -> None: ...

    plan = KeyPlan(f, None, ())
    with pytest.raises(InvalidKeyError, match="contains itself"):
        plan.key((make(), 1), {})  # the fast path
    with pytest.raises(InvalidKeyError, match="contains itself"):
        plan.key((make(),), {})  # the bound path


def test_a_decorated_function_refuses_a_self_referencing_argument() -> None:
    cache = TwoTierCache()

    @cache.cached()
    async def f(value: object) -> int:
        return 1

    with pytest.raises(InvalidKeyError, match="contains itself"):
        asyncio.run(f(_self_list()))


def test_very_deep_nesting_is_refused() -> None:
    async def f(value: object) -> None: ...

    deep: object = 1
    for _ in range(sys.getrecursionlimit() * 2):
        deep = [deep]
    with pytest.raises(InvalidKeyError, match="deeper"):
        KeyPlan(f, None, ()).key((deep,), {})


@dataclasses.dataclass
class Node:
    child: object


def test_a_deeply_nested_dataclass_is_refused() -> None:
    """Dataclasses count as levels like containers do (their repr used to
    recurse until RecursionError; now their fields are encoded)."""

    async def f(value: object) -> None: ...

    deep: object = None
    for _ in range(sys.getrecursionlimit() * 2):
        deep = Node(deep)
    with pytest.raises(InvalidKeyError, match="deeper"):
        KeyPlan(f, None, ()).key((deep,), {})
    cycle = Node(None)
    cycle.child = [cycle]
    with pytest.raises(InvalidKeyError, match="contains itself"):
        KeyPlan(f, None, ()).key((cycle,), {})


def test_shared_and_moderately_nested_arguments_are_fine() -> None:
    async def f(value: object) -> None: ...

    shared = [1, 2]
    plan = KeyPlan(f, None, ())
    # The same object twice is not a cycle.
    assert plan.key(([shared, shared, {"a": shared}],), {}).endswith("([[1,2],[1,2],{'a':[1,2]}])")
    nested: object = "leaf"
    for _ in range(50):
        nested = {"k": [nested]}
    plan.key((nested,), {})  # 100 levels: no error


# --- the mutation audit's missing cases ----------------------------------------

_HASHSEED_SCRIPT = """
from twotier._keys import KeyPlan

async def f(tags, frozen, mapping):
    ...

words = [f"word{i}" for i in range(40)]
print(",".join(set(words)))  # the iteration order, which PYTHONHASHSEED changes
print(KeyPlan(f, None, ()).key((set(words), frozenset(words), {"s": set(words)}), {}))
"""


def _run_with_hashseed(seed: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", _HASHSEED_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    order, key = done.stdout.splitlines()
    return order, key


def test_set_arguments_give_the_same_key_under_another_hash_seed() -> None:
    order1, key1 = _run_with_hashseed("1")
    order2, key2 = _run_with_hashseed("2")
    assert order1 != order2  # the seeds do reorder the sets, so the test means something
    assert key1 == key2


def test_same_named_methods_of_different_classes_get_different_keys() -> None:
    class Articles:
        async def get(self, id: int) -> None: ...

    class Users:
        async def get(self, id: int) -> None: ...

    a = KeyPlan(Articles.get, None, (), ignore=["self"]).key((Articles(), 7), {})
    u = KeyPlan(Users.get, None, (), ignore=["self"]).key((Users(), 7), {})
    assert a != u
    assert a.endswith("Articles.get(7)")
    assert u.endswith("Users.get(7)")


def test_self_of_a_plain_class_is_refused_with_advice() -> None:
    """A custom `__repr__` no longer makes an object a key: nothing checks that it
    shows every field (issue 17, case 8). The error names `self` and the ways out."""

    class Repo:
        def __repr__(self) -> str:
            return "repo"

        async def get(self, id: int) -> None: ...

    with pytest.raises(InvalidKeyError, match=r"argument 'self'.*ignore=\['self'\]"):
        KeyPlan(Repo.get, None, ()).key((Repo(), 7), {})


async def variadic(a: int, *args: int, b: int = 2, **kwargs: int) -> None: ...


def test_variadic_signatures() -> None:
    plan = KeyPlan(variadic, None, ())
    base = plan.key((1,), {})
    assert plan.key((1,), {"b": 2}) == base  # defaults applied: b=2, args=(), kwargs={}
    assert plan.key((1, 5), {}) != base
    assert plan.key((1, 5), {}) != plan.key((1, 6), {})
    assert plan.key((1, 5, 6), {}) != plan.key((1, 6, 5), {})
    assert plan.key((1,), {"x": 1}) != base
    assert plan.key((1,), {"x": 1}) != plan.key((1,), {"x": 2})
    assert plan.key((1,), {"x": 1}) != plan.key((1,), {"y": 1})
    assert plan.key((1,), {"x": 1, "y": 2}) == plan.key((1,), {"y": 2, "x": 1})
    assert plan.key((1,), {"b": 3}) != base
    assert plan.key((1,), {"b": 3}) != plan.key((1,), {"x": 3})  # a named param is no extra


# --- default keys never merge arguments that compare different (issue 17, case 8) ---
#
# Keys used to be built from `repr()`: a field declared `repr=False` vanished from
# the key, and `[1]`/`(1,)`, `{}`/`set()` shared one. The cases found, each a test;
# then a property test of the whole encoding, and its stability across processes.

try:
    import pydantic
except ImportError:  # an optional dependency (the fastapi extra brings it)
    pydantic = None

needs_pydantic = pytest.mark.skipif(pydantic is None, reason="pydantic is not installed")


@dataclasses.dataclass(frozen=True)
class Report:
    # The tenant is hidden from logs, so from repr(): it was hidden from the key too.
    tenant: object = dataclasses.field(repr=False)
    year: object = 2024


@dataclasses.dataclass(frozen=True)
class Query:
    """Report's fields under another type: a different argument."""

    tenant: object
    year: object = 2024


if pydantic is not None:

    class Tenant(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True)
        tenant: Any = pydantic.Field(repr=False)
        year: Any = 2024

    class OtherTenant(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(frozen=True)
        tenant: Any
        year: Any = 2024


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


class Perm(enum.Flag):
    R = 1
    W = 2


class Level(enum.IntEnum):
    ONE = 1


def _other_colour() -> type[enum.Enum]:
    class Colour(enum.Enum):  # the same name and members, another type
        RED = 1
        GREEN = 2

    return Colour


OtherColour = _other_colour()


async def _one(value: object) -> None: ...


async def _two(first: object, second: object = None) -> None: ...


ONE = KeyPlan(_one, None, ())


def key_of(value: object) -> str:
    """The default key of `_one(value)`, as every instance builds it."""
    return ONE.key((value,), {})


def _same_keys_as_today(pairs: list[tuple[object, object]]) -> None:
    for a, b in pairs:
        assert key_of(a) != key_of(b), (a, b)


def test_a_dataclass_field_hidden_from_repr_is_in_the_key() -> None:
    assert repr(Report(1)) == repr(Report(2))  # what the key used to be made of
    assert key_of(Report(1)) != key_of(Report(2))
    assert key_of(Report(1)) == key_of(Report(1))


def test_tenant_two_does_not_get_tenant_ones_revenue() -> None:
    """The report as it happened, through the decorator."""

    async def main() -> None:
        async with TwoTierCache() as cache:

            @cache.cached(ttl=60)
            async def revenue(report: Report) -> int:
                return {1: 100, 2: 200}[report.tenant]

            assert await revenue(Report(1)) == 100
            assert await revenue(Report(2)) == 200
            assert await revenue(Report(1)) == 100  # and its own entry still hits

    asyncio.run(main())


@needs_pydantic
def test_a_pydantic_field_hidden_from_repr_is_in_the_key() -> None:
    assert repr(Tenant(tenant=1)) == repr(Tenant(tenant=2))
    assert key_of(Tenant(tenant=1)) != key_of(Tenant(tenant=2))
    assert key_of(Tenant(tenant=1)) == key_of(Tenant(tenant=1))


@needs_pydantic
def test_a_pydantic_field_left_out_of_its_dump_is_in_the_key() -> None:
    """Why keys do not use `model_dump()`: it leaves out `exclude=True` fields, and
    turns nested models into dicts, so two models with the same fields read alike."""

    class Secretive(pydantic.BaseModel):
        tenant: int = pydantic.Field(exclude=True)

    assert Secretive(tenant=1).model_dump() == Secretive(tenant=2).model_dump()
    assert key_of(Secretive(tenant=1)) != key_of(Secretive(tenant=2))

    class A(pydantic.BaseModel):
        x: int

    class B(pydantic.BaseModel):
        x: int

    class Holder(pydantic.BaseModel):
        item: A | B

    one, two = Holder(item=A(x=1)), Holder(item=B(x=1))
    assert one != two
    assert one.model_dump() == two.model_dump()
    assert key_of(one) != key_of(two)


@needs_pydantic
def test_pydantic_extra_fields_and_private_attributes_are_in_the_key() -> None:
    """pydantic's `==` compares both, so the key must tell them apart too."""

    class Open(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        a: int = 0

    class Private(pydantic.BaseModel):
        _scope: str = pydantic.PrivateAttr(default="all")

    assert key_of(Open(b=1)) != key_of(Open(b=2)) != key_of(Open())
    assert key_of(Open(b=1, c=2)) == key_of(Open(c=2, b=1))
    narrow = Private()
    narrow._scope = "mine"
    assert narrow != Private()
    assert key_of(narrow) != key_of(Private())


def test_an_empty_dict_and_an_empty_set_have_different_keys() -> None:
    _same_keys_as_today([({}, set()), (set(), frozenset()), ({1}, frozenset({1}))])


def test_a_list_and_a_tuple_have_different_keys() -> None:
    _same_keys_as_today([([1], (1,)), ([], ()), ([1, 2], (1, 2)), ([(1,)], [[1]])])


def test_one_true_and_one_point_zero_have_different_keys() -> None:
    # Passed before too (repr tells them apart); kept so that no shortcut merges them.
    values = [1, True, 1.0, "1", b"1", Decimal(1), Level.ONE]
    assert len({key_of(v) for v in values}) == len(values)
    assert len({key_of([v]) for v in values}) == len(values)
    assert len({key_of({v: 0}) for v in values}) == len(values)
    assert key_of({1: "a"}) != key_of({True: "a"})  # equal dicts, but not the same call


def test_zero_and_negative_zero_have_different_keys() -> None:
    # Passed before too: float's repr keeps the sign. A function may well tell them
    # apart (`math.copysign`, `1 / x`), so they are two arguments.
    assert key_of(0.0) == "tests.test_keys._one(0.0)"
    assert key_of(-0.0) == "tests.test_keys._one(-0.0)"
    _same_keys_as_today([([0.0], [-0.0]), ({0.0}, {-0.0}), (Decimal("0"), Decimal("-0"))])
    assert key_of(float("nan")) == key_of(float("-nan"))  # a NaN equals nothing: one key


def test_nested_values_keep_their_types() -> None:
    _same_keys_as_today(
        [
            ([{"a": set()}], [{"a": {}}]),
            ({"k": (1,)}, {"k": [1]}),
            ((frozenset(),), (set(),)),
            ([Report(1)], [Report(2)]),
            ({"r": Report(1, [1])}, {"r": Report(1, (1,))}),
            ([Report(1)], [Query(1)]),
        ]
    )


def test_enum_members_carry_their_type() -> None:
    assert repr(Colour.RED) == repr(OtherColour.RED)  # both `<Colour.RED: 1>` before
    assert key_of(Colour.RED) != key_of(OtherColour.RED)
    assert key_of(Colour.RED) == "tests.test_keys._one@2(tests.test_keys.Colour.RED)"
    assert key_of(Perm.R | Perm.W) == "tests.test_keys._one@2(tests.test_keys.Perm(3))"
    assert key_of(Perm.R) != key_of(Perm.R | Perm.W) != key_of(Perm(0))


def test_datetimes_keep_their_zone_and_fold() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    wall = dt.datetime(2024, 10, 27, 2, 30)
    same_instant = [wall.replace(tzinfo=berlin), wall.replace(tzinfo=berlin, fold=1)]
    naive_and_aware = [wall, wall.replace(tzinfo=dt.UTC)]
    offsets = [wall.replace(tzinfo=dt.timezone(dt.timedelta(hours=1), name)) for name in "AB"]
    for a, b in (same_instant, naive_and_aware, offsets):
        assert key_of(a) != key_of(b)
    assert key_of(wall.replace(tzinfo=berlin)) == key_of(
        wall.replace(tzinfo=zoneinfo.ZoneInfo.no_cache("Europe/Berlin"))
    )


def test_a_zone_without_a_canonical_text_is_refused() -> None:
    class Fixed(dt.tzinfo):  # as pytz's and dateutil's zones: no text names the zone
        def utcoffset(self, _: object) -> dt.timedelta:
            return dt.timedelta(hours=1)

    with pytest.raises(InvalidKeyError, match="tzinfo"):
        key_of(dt.datetime(2024, 1, 1, tzinfo=Fixed()))


@pytest.mark.parametrize(
    "value",
    [
        collections.OrderedDict(a=1),  # == is order-sensitive between two of them
        collections.defaultdict(int),
        collections.Counter("ab"),
        bytearray(b"x"),
        range(3),
        object(),
        type("Str", (str,), {})("a"),
        type("WithRepr", (), {"__repr__": lambda self: "1"})(),  # used to share `1`'s key
    ],
    ids=lambda v: type(v).__name__,
)
def test_other_types_are_refused(value: object) -> None:
    with pytest.raises(InvalidKeyError, match=r"argument 'value'.*key=.*ignore=\['value'\]"):
        key_of(value)


def test_the_refusal_says_where_the_value_is() -> None:
    plan = KeyPlan(_two, None, ())
    with pytest.raises(InvalidKeyError, match=r"argument 'second' \(at second\['a'\]\[1\]\.year\)"):
        plan.key((1, {"a": [0, Report(1, object())]}), {})
    with pytest.raises(InvalidKeyError, match=r"argument 'first' \(at first\[<a key>\]\)"):
        plan.key((), {"first": {object(): 1}})


def test_scalar_keys_keep_their_format_and_others_are_marked() -> None:
    """Keys of plain scalars read as before, so an upgrade keeps those entries.
    A key with any other argument carries `@2`: before issue 17, `f([1])` was also
    the key of `f((1,))`, and a rolling deploy must not read such an entry."""
    plan = KeyPlan(_two, None, ())
    assert plan.key((7, "a"), {}) == "tests.test_keys._two(7,'a')"
    assert plan.key((7,), {}) == "tests.test_keys._two(7,None)"
    assert plan.key((7, [1]), {}) == "tests.test_keys._two@2(7,[1])"
    assert plan.key((7,), {"second": (1,)}) == "tests.test_keys._two@2(7,(1,))"
    assert plan.key(({}, set()), {}) == "tests.test_keys._two@2({},set())"
    assert key_of(Report(1)) == "tests.test_keys._one@2(tests.test_keys.Report(tenant=1,year=2024))"


def test_fast_and_bound_paths_agree_on_structured_arguments() -> None:
    plan = KeyPlan(_two, None, ())
    for first, second in [([1], (2,)), (Report(1), {"a": {1}}), (1, frozenset())]:
        assert plan.key((first, second), {}) == plan.key((), {"second": second, "first": first})


# The property: key(a) == key(b) exactly when a and b are the same argument, by an
# oracle written without the encoder: same types all the way down and equal contents.


def _same(a: Any, b: Any) -> bool:
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is float:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)  # a NaN is one argument, whatever its bits
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if kind in (list, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if kind in (set, frozenset):
        return _same_bags(list(a), list(b))
    if kind is dict:
        return _same_bags(list(a.items()), list(b.items()))
    if dataclasses.is_dataclass(a):
        names = [field.name for field in dataclasses.fields(a)]
        return all(_same(getattr(a, n), getattr(b, n)) for n in names)
    if pydantic is not None and isinstance(a, pydantic.BaseModel):
        names = list(type(a).model_fields)
        return all(_same(getattr(a, n), getattr(b, n)) for n in names)
    if kind is Decimal:
        return a.as_tuple() == b.as_tuple()  # so 1.0 and 1, -0 and 0 differ
    if kind in (dt.datetime, dt.time):
        return _same_wall(a, b)
    if isinstance(a, enum.Enum):
        return a is b
    return a == b


def _same_bags(xs: list[object], ys: list[object]) -> bool:
    """Multisets equal under `_same`. Greedy matching is exact because `_same` is
    an equivalence (a set may hold several NaNs, which `_same` does not tell apart)."""
    if len(xs) != len(ys):
        return False
    rest = list(ys)
    for x in xs:
        match = next((i for i, y in enumerate(rest) if _same(x, y)), None)
        if match is None:
            return False
        rest.pop(match)
    return True


def _same_wall(a: Any, b: Any) -> bool:
    """Datetimes and times: the same wall clock, fold and zone (not just the instant)."""
    if a.replace(tzinfo=None) != b.replace(tzinfo=None) or a.fold != b.fold:
        return False
    za, zb = a.tzinfo, b.tzinfo
    if za is None or zb is None:
        return za is zb
    if type(za) is not type(zb):
        return False
    if isinstance(za, zoneinfo.ZoneInfo):
        return za.key == zb.key
    return (za.utcoffset(None), za.tzname(None)) == (zb.utcoffset(None), zb.tzname(None))


_ZONES = [
    None,
    dt.UTC,
    dt.timezone(dt.timedelta(hours=1)),
    dt.timezone(dt.timedelta(hours=1), "CET"),
    zoneinfo.ZoneInfo("Europe/Berlin"),
    zoneinfo.ZoneInfo("Europe/Paris"),
]
# Small domains, so that independent draws often collide or nearly collide.
_scalars = st.one_of(
    st.sampled_from([0, 1, -1, 2, 10**20]),
    st.booleans(),
    st.sampled_from([0.0, -0.0, 1.0, 0.1, 1e16, math.inf, -math.inf, math.nan, -math.nan]),
    st.none(),
    st.text(alphabet="a1'\"\\,:()[]{}= \n\x00é", max_size=3),
    st.binary(max_size=2),
    st.sampled_from([Decimal(s) for s in ("0", "-0", "1", "1.0", "1E+1", "10", "NaN", "-Inf")]),
    st.sampled_from([uuid.UUID(int=0), uuid.UUID(int=1)]),
    st.sampled_from([dt.date(2024, 1, 1), dt.date(2024, 1, 2)]),
    st.sampled_from([dt.timedelta(0), dt.timedelta(seconds=1), dt.timedelta(days=1)]),
    st.builds(
        dt.datetime,
        st.just(2024),
        st.just(10),
        st.sampled_from([26, 27]),
        st.sampled_from([0, 2]),
        tzinfo=st.sampled_from(_ZONES),
        fold=st.sampled_from([0, 1]),
    ),
    st.builds(dt.time, st.sampled_from([0, 2]), tzinfo=st.sampled_from(_ZONES[:4])),
    st.sampled_from([Colour.RED, Colour.GREEN, OtherColour.RED, Level.ONE]),
    st.sampled_from([Perm.R, Perm.W, Perm.R | Perm.W, Perm(0)]),
)


def _records(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    kinds: list[Callable[..., object]] = [Report, Query]
    if pydantic is not None:
        kinds += [lambda tenant, year: Tenant(tenant=tenant, year=year)]
        kinds += [lambda tenant, year: OtherTenant(tenant=tenant, year=year)]
    return st.builds(lambda kind, t, y: kind(t, y), st.sampled_from(kinds), inner, inner)


_hashables = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.frozensets(inner, max_size=3),
        _records(inner),
    ),
    max_leaves=6,
)
_values = st.recursive(
    _hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_hashables, inner, max_size=3),
        st.sets(_hashables, max_size=3),
        st.frozensets(_hashables, max_size=3),
        _records(inner),
    ),
    max_leaves=10,
)


def _rebuilt(value: Any, flip: Callable[[], bool]) -> object:
    """A copy of *value* made of new objects, dicts and sets built in another order:
    the same argument, so the same key."""
    kind = type(value)
    if kind in (list, tuple):
        return kind([_rebuilt(v, flip) for v in value])
    if kind in (set, frozenset):
        items = [_rebuilt(v, flip) for v in value]
        return kind(reversed(items) if flip() else items)
    if kind is dict:
        pairs = [(_rebuilt(k, flip), _rebuilt(v, flip)) for k, v in value.items()]
        return dict(reversed(pairs) if flip() else pairs)
    if isinstance(value, Report | Query):
        return kind(_rebuilt(value.tenant, flip), _rebuilt(value.year, flip))
    if pydantic is not None and isinstance(value, Tenant | OtherTenant):
        return kind(tenant=_rebuilt(value.tenant, flip), year=_rebuilt(value.year, flip))
    if kind is float or kind is Decimal:
        return kind(str(value))  # a new object, NaN's sign aside
    return value


# One step from one type to its look-alike: the near misses a repr-based key merged.
_TWINS: dict[object, object] = {
    list: tuple,
    tuple: list,
    set: frozenset,
    frozenset: set,
    Report: Query,
    Query: Report,
}
_SCALAR_TWINS: list[tuple[object, object]] = [
    (0, False),
    (1, True),
    (1, 1.0),
    (0, 0.0),
    (0.0, -0.0),
    (1, Level.ONE),
    (Colour.RED, OtherColour.RED),
    (Decimal("1"), Decimal("1.0")),
    (Decimal("0"), Decimal("-0")),
    (b"a", "a"),
]


def _twisted(value: Any, rng: random.Random, hashable: bool = False) -> Any:
    """A copy of *value* with about one part turned into its look-alike (a tuple
    where a list was, `-0.0` for `0.0`, `Query` for `Report`, `set()` for `{}` …)."""
    kind = type(value)
    swap = rng.random() < 0.3
    for x, y in _SCALAR_TWINS:
        if swap and _same(value, x):
            return y
        if swap and _same(value, y):
            return x
    if kind in (list, tuple):
        items = [_twisted(v, rng, hashable) for v in value]
        return (_TWINS[kind] if swap and not hashable else kind)(items)
    if kind in (set, frozenset):
        items = [_twisted(v, rng, True) for v in value]
        if swap and not value and not hashable:
            return {}
        return (_TWINS[kind] if swap and not hashable else kind)(items)
    if kind is dict:
        if swap and not value:
            return set()
        return {_twisted(k, rng, True): _twisted(v, rng, hashable) for k, v in value.items()}
    if isinstance(value, Report | Query):
        kind = _TWINS[kind] if swap else kind
        return kind(_twisted(value.tenant, rng, hashable), _twisted(value.year, rng, hashable))
    if pydantic is not None and isinstance(value, Tenant | OtherTenant):
        kind = (OtherTenant if kind is Tenant else Tenant) if swap else kind
        return kind(
            tenant=_twisted(value.tenant, rng, hashable), year=_twisted(value.year, rng, hashable)
        )
    if kind is dt.datetime and swap:
        return value.replace(fold=1 - value.fold)
    return value


_pairs = st.one_of(
    st.tuples(_values, _values),
    st.tuples(_values, st.randoms(use_true_random=False)).map(
        lambda pair: (pair[0], _rebuilt(pair[0], lambda: pair[1].random() < 0.5))
    ),
    st.tuples(_values, st.randoms(use_true_random=False)).map(
        lambda pair: (pair[0], _twisted(pair[0], pair[1]))
    ),
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_pairs)
def test_keys_are_equal_exactly_for_the_same_argument(pair: tuple[object, object]) -> None:
    a, b = pair
    same = _same(a, b)
    event(f"same argument: {same}")
    assert (key_of(a) == key_of(b)) is same, (a, b)
    assert (encode_argument(a) == encode_argument(b)) is same
    assert key_of(a) == key_of(_rebuilt(a, lambda: True))


@given(_values)
def test_every_key_is_a_valid_key(value: object) -> None:
    key = key_of(value)
    assert validate_key(key) == key


# Stability: a set's iteration order and str hashes change with PYTHONHASHSEED; a key
# built in one process must name the entry in every other.

_STABLE_SCRIPT = """
from tests.test_keys import key_of, stable_samples

for value in stable_samples():
    print(key_of(value))
"""


def stable_samples() -> list[object]:
    words = [f"word{i}" for i in range(40)]
    samples: list[object] = [
        set(words),
        frozenset(words),
        {w: {w, w + "!"} for w in words},
        {frozenset(words[:5]): Report(set(words[:9]), (1.5, -0.0))},
        [Colour.RED, Perm.R | Perm.W, Level.ONE, Decimal("1.10"), uuid.UUID(int=7)],
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin"), fold=1),
        (dt.date(2024, 1, 1), dt.time(1, tzinfo=dt.UTC), dt.timedelta(days=1, seconds=3)),
        b"\x00\xff",
        "x" * 500,  # a hashed key
    ]
    if pydantic is not None:
        samples.append(Tenant(tenant={w: [w] for w in words}, year=frozenset(words)))
    return samples


def _keys_with_hashseed(seed: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _STABLE_SCRIPT],
        env={**os.environ, "PYTHONHASHSEED": seed},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def test_keys_are_the_same_in_every_process() -> None:
    here = [key_of(value) for value in stable_samples()]
    assert _keys_with_hashseed("1") == here
    assert _keys_with_hashseed("2") == here
