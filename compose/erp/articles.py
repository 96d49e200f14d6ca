"""Articles (Artikelstamm): lists by category, one article, and the update.

Tags: module `articles`; entity `article:{id}`; lists carry `list` and either
`category:{category}` (one category's list) or `articles:all` (the unfiltered
one), so adding to or changing one category leaves the others cached.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .cache import cache, cached, http_cached, invalidate_tags, invalidates
from .db import Article, get_session
from .schemas import ArticleOut, ArticleUpdate

router = APIRouter(prefix="/articles", tags=["articles"])


# The data access the endpoints share: plain functions, cached by argument; the
# session comes from Depends and is left out of the key by twotier.fastapi.cached.
@cached(cache, ttl=600, tags=["articles", "list", "category:{category}"], ignore=["session"])
async def articles_in_category(
    category: str, session: AsyncSession = Depends(get_session)
) -> list[dict[str, object]]:
    rows = await session.scalars(
        select(Article).where(Article.category == category).order_by(Article.id)
    )
    return [ArticleOut.model_validate(r).model_dump(mode="json") for r in rows]


@cached(cache, ttl=600, tags=["articles", "list", "articles:all"], ignore=["session"])
async def all_articles(session: AsyncSession = Depends(get_session)) -> list[dict[str, object]]:
    rows = await session.scalars(select(Article).order_by(Article.id))
    return [ArticleOut.model_validate(r).model_dump(mode="json") for r in rows]


@router.get("")
async def list_articles(
    category: str | None = None, session: AsyncSession = Depends(get_session)
) -> list[ArticleOut]:
    rows = await (articles_in_category(category, session) if category else all_articles(session))
    return [ArticleOut.model_validate(row) for row in rows]


@router.get("/{article_id}")
@http_cached(cache, ttl=600, tags=["articles", "article:{article_id}"], ignore=["session"])
async def get_article(article_id: int, session: AsyncSession = Depends(get_session)) -> ArticleOut:
    article = await session.get(Article, article_id)
    if article is None:
        raise HTTPException(404, f"article {article_id} not found")
    return ArticleOut.model_validate(article)


@router.put("/{article_id}")
@invalidates(
    cache,
    "article:{article_id}",
    "articles:all",
    "inventory:stats",
    also=["category:{old}", "category:{new}"],
)
async def update_article(
    article_id: int, update: ArticleUpdate, session: AsyncSession = Depends(get_session)
) -> ArticleOut:
    article = await session.get(Article, article_id)
    if article is None:
        raise HTTPException(404, f"article {article_id} not found")
    categories = {article.category}
    for field, value in update.model_dump(exclude_none=True).items():
        setattr(article, field, value)
    categories.add(article.category)
    await session.commit()
    await invalidate_tags([f"category:{c}" for c in sorted(categories)])
    return ArticleOut.model_validate(article)
