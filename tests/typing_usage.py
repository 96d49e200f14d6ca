"""Checked by `mypy --strict` in CI (.ci/run), never run: `@cached` keeps the real
signature (STYLE.md 8). If the decorator's typing degraded to Any, the ignore on
the wrong call below would become unused, which strict mypy reports."""

from twotier import MISS, CachedFunction, TwoTierCache

cache = TwoTierCache()


@cache.cached(ttl=60, tags=["item:{id}"])
async def item(id: int, lang: str = "de") -> dict[str, int]:
    return {"id": id}


@cache.cached(ttl=60, ignore=["session"], unless=lambda r: r is None)
async def maybe(id: int, session: object) -> dict[str, int] | None:
    return None


async def use() -> None:
    typed: CachedFunction[[int, str], dict[str, int]] = item
    row: dict[str, int] = await typed(1, "en")
    key: str = item.key(1, lang="en")
    await item.invalidate(1)
    await item("one")  # type: ignore[arg-type]  # the real signature is enforced
    found, tier = await item.lookup(1)
    if found is not MISS:
        narrowed: dict[str, int] = found  # MISS narrowed away
        del narrowed
    where: str | None = tier
    absent: dict[str, int] | None = await maybe(1, object())
    del row, key, where, absent
