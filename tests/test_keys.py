import pytest

from twotier import InvalidKeyError, InvalidTTLError, TemplateError, TwoTierCache
from twotier._keys import MAX_KEY_LENGTH, KeyPlan, validate_key, validate_tags, validate_ttl


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
    assert len(ka) <= MAX_KEY_LENGTH
    assert len(kb) <= MAX_KEY_LENGTH


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
