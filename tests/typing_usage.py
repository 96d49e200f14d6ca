"""Checked by `mypy --strict` in CI (.ci/run), never run: `@cached` keeps the real
signature (STYLE.md 8). If the decorator's typing degraded to Any, the ignore on
the wrong call below would become unused, which strict mypy reports."""

from twotier import CachedFunction, TwoTierCache

cache = TwoTierCache()


@cache.cached(ttl=60, tags=["item:{id}"])
async def item(id: int, lang: str = "de") -> dict[str, int]:
    return {"id": id}


async def use() -> None:
    typed: CachedFunction[[int, str], dict[str, int]] = item
    row: dict[str, int] = await typed(1, "en")
    key: str = item.key(1, lang="en")
    await item.invalidate(1)
    await item("one")  # type: ignore[arg-type]  # the real signature is enforced
    del row, key
