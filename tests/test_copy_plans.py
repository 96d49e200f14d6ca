"""Issue 20, item 7: L1's copy plans. A value is copied on each hit by the
cheapest means that still hands every caller a value of its own: shared when
immutable, a shallow copy for a plain dict, list or set of immutables and for
a list of such dicts, decoded from its bytes when a mutable sits deeper.
Whatever the plan, changing a value a caller got (or the object it stored)
never changes what the next caller gets."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
from typing import Any

import pytest

from twotier import TwoTierCache
from twotier._local import _copy_rows, copy_plan

ROW = {
    "id": 7,
    "name": "Widget",
    "price": decimal.Decimal("9.90"),
    "created": dt.datetime(2026, 1, 2, 3, 4, 5),
    "tags": ("a", "b"),
    "active": True,
    "ratio": 0.5,
    "note": None,
    "raw": b"\x00",
    "code": "W-7",
}

# value, the plan it must get
CASES: list[tuple[str, Any, Any]] = [
    ("immutable", ("a", 1, frozenset({2})), None),
    ("flat dict", dict(ROW), dict.copy),
    ("flat list", [1, "a", (2, 3), None], list.copy),
    ("flat set", {1, "a", (2, 3)}, set.copy),
    ("rows", [dict(ROW, id=i) for i in range(20)], _copy_rows),
    ("dict holding a list", {"a": [1, 2]}, True),
    ("list holding a list", [[1], 2], True),
    ("tuple holding a list", (1, [2, 3]), True),
    ("dict holding a tuple holding a list", {"a": (1, [2])}, True),
    ("list holding a tuple holding a dict", [(1, {"b": 2})], True),
    ("rows, one holding a list", [dict(ROW), {"a": [1]}], True),
    ("rows and a scalar", [dict(ROW), 1], True),
    ("set of tuples holding nothing mutable", {(1, (2, "x"))}, set.copy),
]


def _mutate(value: Any) -> None:
    """Change everything mutable in *value*, however deep (tuples are walked)."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _mutate(item)
        value["__changed__"] = True
        for key in list(value):
            if key != "__changed__":
                value[key] = "changed"
    elif isinstance(value, list):
        for item in value:
            _mutate(item)
        value.append("changed")
        if len(value) > 1:
            value[0] = "changed"
    elif isinstance(value, set):
        value.add("changed")
    elif isinstance(value, tuple):
        for item in value:
            _mutate(item)


@pytest.mark.parametrize(("name", "value", "plan"), CASES, ids=[c[0] for c in CASES])
def test_the_plan_is_chosen_by_what_the_value_holds(name: str, value: Any, plan: Any) -> None:
    assert copy_plan(value) is plan


@pytest.mark.parametrize(("name", "value", "plan"), CASES, ids=[c[0] for c in CASES])
async def test_a_changed_value_never_reaches_the_next_caller(
    name: str, value: Any, plan: Any
) -> None:
    original = copy.deepcopy(value)
    namespace = f"plans{[c[0] for c in CASES].index(name)}"
    async with TwoTierCache(redis_url=None, namespace=namespace) as cache:
        stored = copy.deepcopy(value)
        await cache.set("k", stored, tags=["t"])
        _mutate(stored)  # the object the caller stored
        first = await cache.get("k")
        assert first == original
        _mutate(first)  # the value a hit handed out
        second = await cache.get("k")
        assert second == original
        assert type(second) is type(original)

        calls = 0

        @cache.cached(ttl=60, tags=["t"])
        async def load(n: int) -> Any:
            nonlocal calls
            calls += 1
            return copy.deepcopy(value)

        got = await load(1)  # the loader's own object, handed to its caller
        _mutate(got)
        again = await load(1)
        assert (again, calls) == (original, 1)
        _mutate(again)
        assert await load(1) == original
