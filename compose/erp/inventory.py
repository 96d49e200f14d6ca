"""Inventory (Lager): stock per article and warehouse, the valuation, stock movements.

Tags: module `inventory`; entity `stock:{article_id}`; the valuation carries
`stats` and `inventory:stats` (a price change of an article drops it too).
"""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Depends, HTTPException
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .cache import cache, http_cached, invalidates
from .db import Article, Stock, get_session
from .schemas import Movement, StockOut

router = APIRouter(prefix="/inventory", tags=["inventory"])


@router.get("/stats")
@http_cached(cache, ttl=300, tags=["inventory", "stats", "inventory:stats"], ignore=["session"])
async def inventory_value(session: AsyncSession = Depends(get_session)) -> dict[str, object]:
    value = await session.scalar(
        select(func.sum(Stock.quantity * Article.price)).join(
            Article, Article.id == Stock.article_id
        )
    )
    units = await session.scalar(select(func.sum(Stock.quantity)))
    return {"units": units or 0, "value": float(Decimal(value or 0))}


@router.get("/{article_id}")
@http_cached(
    cache,
    ttl=60,
    tags=["inventory", "stock:{article_id}"],
    unless=lambda r: not r,
    ignore=["session"],
)
async def stock_of(article_id: int, session: AsyncSession = Depends(get_session)) -> list[StockOut]:
    rows = await session.scalars(
        select(Stock).where(Stock.article_id == article_id).order_by(Stock.warehouse)
    )
    # An unknown article has no stock rows: [] is answered, and not cached (unless=).
    return [
        StockOut(article_id=r.article_id, warehouse=r.warehouse, quantity=r.quantity) for r in rows
    ]


@router.post("/{article_id}/movements")
@invalidates(cache, "stock:{article_id}", "inventory:stats")
async def move_stock(
    article_id: int, movement: Movement, session: AsyncSession = Depends(get_session)
) -> StockOut:
    stock = await session.get(Stock, (article_id, movement.warehouse))
    if stock is None:
        raise HTTPException(404, f"no stock of article {article_id} in {movement.warehouse}")
    if stock.quantity + movement.delta < 0:
        raise HTTPException(409, "not enough stock")
    stock.quantity += movement.delta
    await session.commit()
    return StockOut(article_id=article_id, warehouse=stock.warehouse, quantity=stock.quantity)
