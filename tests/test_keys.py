import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from twotier import InvalidKeyError, InvalidTTLError, TemplateError, TwoTierCache
from twotier._keys import (
    MAX_KEY_LENGTH,
    KeyPlan,
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
    "arg", [7, -1, 0.5, True, None, "news", 'it\'s "quoted"', "ü" * 10, "x" * (MAX_KEY_LENGTH + 1)]
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


def test_a_deeply_nested_repr_is_refused() -> None:
    class Node:
        def __init__(self, child: object) -> None:
            self.child = child

        def __repr__(self) -> str:
            return f"Node({self.child!r})"

    async def f(value: object) -> None: ...

    deep: object = None
    for _ in range(sys.getrecursionlimit() * 2):
        deep = Node(deep)
    with pytest.raises(InvalidKeyError, match="too deep"):
        KeyPlan(f, None, ()).key((deep,), {})


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
        def __repr__(self) -> str:
            return "repo"

        async def get(self, id: int) -> None: ...

    class Users:
        def __repr__(self) -> str:
            return "repo"

        async def get(self, id: int) -> None: ...

    a = KeyPlan(Articles.get, None, ()).key((Articles(), 7), {})
    u = KeyPlan(Users.get, None, ()).key((Users(), 7), {})
    assert a != u
    assert "Articles.get" in a
    assert "Users.get" in u


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
